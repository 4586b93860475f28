"""Gzip-aware text I/O and atomic writes (temp file + rename, so no half-written outputs)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from simlm.data.errors import DataFormatError


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield `(line_no, line)` (1-based, line ending kept) of a UTF-8 text file, gunzipping `.gz` files.

    Bytes that are not UTF-8 and a `.gz` file that is cut short or corrupt raise `DataFormatError` naming
    the file and the line (for a truncated file: the last complete line), never a bare
    `UnicodeDecodeError` or `EOFError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    gz = path.suffix == ".gz"
    line_no = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as raw:
            for line_no, data in enumerate(raw, start=1):
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(
                        path,
                        line_no,
                        None,
                        f"not UTF-8 text (byte 0x{data[e.start]:02x} at column {e.start + 1}); "
                        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                    ) from None
                yield line_no, line
    except EOFError:
        raise DataFormatError(
            path,
            None,
            None,
            f"truncated gzip file: it ends inside the compressed stream; the last complete line is "
            f"line {line_no}. Copy or download the file again",
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        if not gz:
            raise
        where = f"after line {line_no}" if line_no else "at its start"
        raise DataFormatError(
            path, None, None, f"corrupt gzip file ({e}) {where}; copy or download it again"
        ) from None


class TextLines:
    """A read-only text stream over `iter_lines`: iterate it, or `readline()`/`read()` from it."""

    def __init__(self, path: str | Path) -> None:
        self.name = str(path)
        self._lines = iter_lines(path)

    def __iter__(self) -> Iterator[str]:
        return (line for _, line in self._lines)

    def readline(self) -> str:
        return next(self._lines, (0, ""))[1]

    def read(self) -> str:
        return "".join(line for _, line in self._lines)

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> TextLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_text(path: str | Path) -> TextLines:
    """Open a UTF-8 text file for reading, transparently decompressing `.gz` files.

    Decoding and decompression errors raise `DataFormatError` naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    return TextLines(path)


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


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path next to `path` for a library that writes by file name (e.g. `faiss.write_index`);
    renamed to `path` when the block succeeds, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, 0o666 & ~_umask())
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
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                path, line_no, None, f"malformed JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, line_no, None, f"expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def iter_tsv(path: str | Path, *, whitespace: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_no, columns)` for each non-blank line, split on tabs (or any whitespace)."""
    for line_no, line in iter_lines(path):
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
