"""Typed errors for bad input files."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file is malformed. The message names the file, the line (1-based) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")

    def __reduce__(self):  # keep the error picklable across dataloader workers / processes
        return (type(self), (self.path, self.line, self.field, self.reason))


class EmptySplitError(DataFormatError):
    """A split that was asked for holds no queries or no judgements."""
