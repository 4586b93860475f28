"""Output files the retrieval stages share: a run as `<split>.trec` and `<split>.msmarco.txt`."""

from __future__ import annotations

from pathlib import Path

from simlm.data.formats import Run, write_run


def write_run_files(out_dir: Path, split: str, run: Run, tag: str) -> dict[str, Path]:
    """Write `<split>.trec` and `<split>.msmarco.txt` (both atomically)."""
    paths = {"trec": out_dir / f"{split}.trec", "msmarco": out_dir / f"{split}.msmarco.txt"}
    write_run(paths["trec"], run, "trec", tag=tag)
    write_run(paths["msmarco"], run, "msmarco")
    return paths
