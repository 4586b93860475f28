"""What the benchmarks need to know about the CPU: which precision path simlm takes, the peak FLOP/s
assumed for it, and the FLOPs a transformer encoder spends on real (unpadded) tokens.

The peak is a paper figure, `cores x clock x FLOP/cycle/core`, with FLOP/cycle from the vector ISA:
`(vector bits / 32) fp32 lanes x 2 (a fused multiply-add is two FLOPs) x FMA units per core`. The number
of FMA units cannot be read from /proc/cpuinfo; 2 (AMD Zen 2-4, Intel server cores since Haswell) is
assumed and `SIMLM_BENCH_FMA_UNITS` overrides it. The bf16 peak: twice the fp32 one with AVX512_BF16 dot
products; with AMX tiles (`amx_bf16`), Intel's published 1,024 bf16 FLOP/cycle per core (oneDNN runs
bf16 matmuls on the tiles there, so the vector units' figure would be exceeded). The clock is the
kernel's `cpu MHz` (under a hypervisor usually the nominal clock, not the boost).
`measured_matmul_gflops` gives the achievable figure instead: a large fp32 matmul in torch.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CpuPeak",
    "cpu_flags",
    "cpu_mhz",
    "cpu_path",
    "cpu_path_label",
    "cpu_peak",
    "encoder_flops",
    "encoder_shape",
    "measured_matmul_gflops",
    "peak_from_flags",
]

DEFAULT_FMA_UNITS = 2
AMX_BF16_FLOP_PER_CYCLE = 1024  # per core (Intel: AMX TMUL, Sapphire Rapids and later)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (or of `cpuinfo`, its text); empty if unreadable."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    match = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, flags=re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def cpu_mhz(cpuinfo: str | None = None) -> float | None:
    """The highest `cpu MHz` line of /proc/cpuinfo (or of `cpuinfo`), or None."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    values = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, flags=re.MULTILINE)]
    return max(values) if values else None


def cpu_path_label(precision: str, capability: str, native_bf16: bool) -> str:
    """The CPU path in words, e.g. `fp32 (AVX2 only: no native bf16)` or `bf16-mixed (native bf16, AVX512)`.

    `precision`: the canonical precision simlm resolved (`32-true` or `bf16-mixed`); `capability`: torch's
    `torch.backends.cpu.get_cpu_capability()` (`AVX2`, `AVX512`, `DEFAULT`, ...); `native_bf16`: whether the
    CPU computes bf16 natively (`simlm.runtime.cpu_has_native_bf16`).
    """
    if precision == "bf16-mixed":
        how = "native bf16" if native_bf16 else "no native bf16: emulated, slow"
        return f"bf16-mixed ({how}, {capability})"
    if precision == "32-true":
        if native_bf16:
            return f"fp32 ({capability}; native bf16 available, not used)"
        return f"fp32 ({capability} only: no native bf16)"
    return f"{precision} ({capability})"


def cpu_path(precision: str = "auto") -> tuple[str, str]:
    """`(canonical precision, label)`: simlm's CPU path on this machine for `trainer.precision=precision`."""
    import torch

    from simlm.runtime import cpu_has_native_bf16, resolve_precision

    chosen = resolve_precision(precision, "cpu")
    capability = torch.backends.cpu.get_cpu_capability()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if amx is not None and amx():
        # torch names the vector ISA only; oneDNN runs bf16 matmuls on the tiles
        capability += " with AMX tiles"
    label = cpu_path_label(chosen, capability, cpu_has_native_bf16())
    forced = os.environ.get("SIMLM_CPU_BF16", "").strip()
    return chosen, f"{label} [SIMLM_CPU_BF16={forced} overrides the detection]" if forced else label


@dataclass(frozen=True)
class CpuPeak:
    """A paper peak: `cores x ghz x fp32_flop_per_cycle`; bf16 `bf16_factor` times that (`bf16_unit`)."""

    cores: int
    ghz: float
    vector_bits: int
    fma_units: int
    bf16_factor: float
    bf16_unit: str

    @property
    def fp32_flop_per_cycle(self) -> int:
        """fp32 FLOPs per cycle and core: lanes x 2 (FMA) x FMA units."""
        return (self.vector_bits // 32) * 2 * self.fma_units

    @property
    def fp32_gflops(self) -> float:
        return self.cores * self.ghz * self.fp32_flop_per_cycle

    @property
    def bf16_gflops(self) -> float:
        return self.fp32_gflops * self.bf16_factor

    def gflops(self, precision: str) -> float:
        """The peak of the dtype `precision` computes its matmuls in."""
        return self.bf16_gflops if precision == "bf16-mixed" else self.fp32_gflops

    def describe(self) -> str:
        """The assumption in words, for a benchmark's notes."""
        bf16 = (
            f"; bf16 peak {self.bf16_gflops:.0f} GFLOP/s ({self.bf16_factor:g}x: {self.bf16_unit})"
            if self.bf16_factor > 1
            else ""
        )
        return (
            f"assumed fp32 peak {self.fp32_gflops:.0f} GFLOP/s = {self.cores} cores x {self.ghz:.2f} GHz "
            f"(/proc/cpuinfo 'cpu MHz') x {self.fp32_flop_per_cycle} FLOP/cycle ({self.vector_bits}-bit FMA: "
            f"{self.vector_bits // 32} lanes x 2 x {self.fma_units} FMA units per core, assumed){bf16}"
        )


def peak_from_flags(flags: set[str], cores: int, ghz: float, fma_units: int = DEFAULT_FMA_UNITS) -> CpuPeak:
    """The paper peak of a CPU with these /proc/cpuinfo `flags` (widest FMA ISA it has)."""
    if "avx512f" in flags:
        bits = 512
    elif "fma" in flags and "avx2" in flags:
        bits = 256
    elif "avx" in flags:  # 256-bit vectors, separate multiply and add: half the FMA rate
        bits = 128
    else:
        bits = 64  # SSE2: 128-bit vectors without FMA
    fp32_per_cycle = (bits // 32) * 2 * fma_units
    if "amx_bf16" in flags:
        factor, unit = (
            AMX_BF16_FLOP_PER_CYCLE / fp32_per_cycle,
            f"AMX tiles, {AMX_BF16_FLOP_PER_CYCLE} bf16 FLOP/cycle/core",
        )
    elif "avx512_bf16" in flags:
        factor, unit = 2.0, "AVX512_BF16 dot products"
    else:
        factor, unit = 1.0, "no native bf16"
    return CpuPeak(
        cores=cores, ghz=ghz, vector_bits=bits, fma_units=fma_units, bf16_factor=factor, bf16_unit=unit
    )


def cpu_peak(cores: int | None = None) -> CpuPeak:
    """This machine's paper peak for `cores` cores (default: torch's thread count)."""
    import torch

    units = int(os.environ.get("SIMLM_BENCH_FMA_UNITS", DEFAULT_FMA_UNITS))
    ghz = (cpu_mhz() or 2000.0) / 1000
    return peak_from_flags(cpu_flags(), cores or torch.get_num_threads(), ghz, units)


def measured_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an `n x n` fp32 matmul in torch over `repeats` runs: the achievable peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def encoder_shape(config: Any) -> dict[str, int]:
    """`layers`, `hidden`, `intermediate` of a Hugging Face encoder config (BERT names)."""
    return {
        "layers": int(config.num_hidden_layers),
        "hidden": int(config.hidden_size),
        "intermediate": int(config.intermediate_size),
    }


def encoder_flops(
    lengths: list[int], layers: int, hidden: int, intermediate: int, backward: bool = False
) -> float:
    """FLOPs of a BERT-style encoder on sequences of these real token counts (no padding counted).

    Per token and layer the matmuls hold `4 h^2` (Q, K, V, output) + `2 h i` (feed-forward) weights, two
    FLOPs each; attention adds `4 n h` per token in a sequence of `n` (scores Q K^T and the weighted sum of
    V). Embedding lookups, layer norms, softmax and activations are left out (a few percent). `backward`:
    forward + backward, counted as 3x the forward (two matmuls per weight matmul in the backward).
    """
    weights = 4 * hidden * hidden + 2 * hidden * intermediate
    forward = sum(layers * (2 * n * weights + 4 * n * n * hidden) for n in lengths)
    return float(3 * forward if backward else forward)
