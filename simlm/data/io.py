"""Gzip-aware text I/O and atomic writes (temp file + rename, so no half-written outputs)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from simlm.data.errors import DataFormatError


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, transparently decompressing `.gz` files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write `path` through a temp file in the same folder, renamed into place only on success.

    `.gz` paths are gzip-compressed. On an exception (or a kill) the destination is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        raw = os.fdopen(fd, "wb")
        if path.suffix == ".gz":
            # mtime=0 keeps gzip output byte-identical across runs
            raw = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        handle: IO[Any] = raw if binary else io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        with handle:
            yield handle
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_no, object)` for each non-blank line; malformed lines raise `DataFormatError`."""
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(
                    path, line_no, None, f"malformed JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise DataFormatError(
                    path, line_no, None, f"expected a JSON object, got {type(obj).__name__}"
                )
            yield line_no, obj


def iter_tsv(path: str | Path, *, whitespace: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_no, columns)` for each non-blank line, split on tabs (or any whitespace)."""
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            yield line_no, (line.split() if whitespace else line.split("\t"))


def require(obj: dict[str, Any], key: str, path: str | Path, line_no: int, kind: type | tuple = str) -> Any:
    """Return `obj[key]`, raising a `DataFormatError` naming file, line and field if absent or mistyped."""
    if key not in obj:
        raise DataFormatError(path, line_no, key, "missing key")
    value = obj[key]
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # numeric ids are common (SimLM's pids, BEIR's scifact ids)
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataFormatError(path, line_no, key, f"expected {names}, got {type(value).__name__}")
    return value
