"""The `answers` column of QA files (DPR / SimLM `<split>_queries.tsv`), parsed without executing code."""

from __future__ import annotations

import ast
import json
import os

from simlm.data.errors import DataFormatError

__all__ = ["parse_answers"]


def parse_answers(field: str, path: str | os.PathLike[str], line_no: int) -> list[str]:
    """Parse the ``answers`` column of a QA file into a list of strings, without ever executing code.

    The field is read as JSON first (``["a", "b"]``) and, failing that, as a Python literal via
    ``ast.literal_eval`` (``['a', "b's"]``, as in the DPR CSV files).

    Raises:
        DataFormatError: (a ValueError) the field is not a list of strings; names path, line and field.
    """
    try:
        value = json.loads(field)
    except (json.JSONDecodeError, TypeError, RecursionError):
        try:
            value = ast.literal_eval(field)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise DataFormatError(
                path, line_no, "answers", f"neither a JSON list nor a Python list literal: {field[:200]!r}"
            ) from exc
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise DataFormatError(path, line_no, "answers", f"must be a list of strings, got {field[:200]!r}")
    return value
