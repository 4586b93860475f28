"""`python -m benchmarks [name ...] [--option ...]`: run every benchmark (or the named ones) and print their
tables; options after the names go to the one named benchmark (`python -m benchmarks scale --n 200000`)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    return sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:first_option] or available(), argv[first_option:]
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {available()}", file=sys.stderr)
        return 2
    if options and len(names) != 1:
        print(f"options {options} need exactly one benchmark name", file=sys.stderr)
        return 2
    for name in names:
        start = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        module.main(options) if options else module.main()
        print(f"[{name}: {time.perf_counter() - start:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
