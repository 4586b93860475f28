"""Progress bars for the long loops outside Lightning's trainer (corpus encoding, pair scoring)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress_bar(
    items: Iterable[T], desc: str, enabled: bool | None = None, unit: str = "batch"
) -> Iterable[T]:
    """`items` wrapped in a tqdm bar. `enabled=None` shows it only on a terminal (quiet in logs and
    tests); True always; False never."""
    if enabled is False:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, disable=None if enabled is None else False, leave=False)
