"""DPR/DrQA-style answer matching for open-domain QA retrieval evaluation.

A passage "has the answer" when one of the gold answer strings, tokenised the same way as the passage,
occurs as a contiguous token subsequence of the passage. Tokenisation follows the DrQA ``SimpleTokenizer``
convention (re-implemented here): after unicode NFD normalisation and lowercasing, a token is either a
maximal run of letters / digits / combining marks, or a single character that is neither whitespace nor a
control character. Matching is therefore case-insensitive and insensitive to the unicode normalisation
form (a precomposed "é" equals "e" + combining acute), but, as in DPR, it does not strip accents.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import regex as _regex

from simlm.data.answers import parse_answers

__all__ = ["SimpleTokenizer", "has_answer", "normalize_text", "parse_answers"]


def normalize_text(text: str) -> str:
    """Return ``text`` in unicode NFD normal form (the form both passages and answers are compared in)."""
    return unicodedata.normalize("NFD", text)


class SimpleTokenizer:
    """Regex tokeniser: alphanumeric runs (``[\\p{L}\\p{N}\\p{M}]+``) and single non-space, non-control chars.

    Text is NFD-normalised and lowercased before tokenising, so the produced tokens are directly comparable.
    """

    _ALNUM = r"[\p{L}\p{N}\p{M}]+"
    _NON_SPACE = r"[^\p{Z}\p{C}]"

    def __init__(self) -> None:
        self._pattern = _regex.compile(f"(?:{self._ALNUM})|(?:{self._NON_SPACE})", flags=_regex.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into lowercased tokens (after NFD normalisation)."""
        return self._pattern.findall(normalize_text(text).lower())

    __call__ = tokenize


_TOKENIZER = SimpleTokenizer()


@lru_cache(maxsize=65536)
def _answer_tokens(answer: str) -> tuple[str, ...]:
    return tuple(_TOKENIZER.tokenize(answer))


@lru_cache(maxsize=65536)
def _compile_answer_pattern(pattern: str) -> _regex.Pattern | None:
    try:
        return _regex.compile(pattern, flags=_regex.IGNORECASE | _regex.UNICODE | _regex.MULTILINE)
    except (_regex.error, TypeError, ValueError, OverflowError, RecursionError):
        return None


def _contains_sequence(tokens: list[str], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    first = needle[0]
    last_start = len(tokens) - n
    start = 0
    while start <= last_start:
        try:
            i = tokens.index(first, start, last_start + 1)
        except ValueError:
            return False
        if tuple(tokens[i : i + n]) == needle:
            return True
        start = i + 1
    return False


def has_answer(text: str, answers: Iterable[str], regex: bool = False) -> bool:
    """Return whether ``text`` contains any of ``answers``.

    Args:
        text: passage text (title and body as the caller wants them matched).
        answers: gold answers. In token mode, an answer matches when its token sequence occurs contiguously
            in the passage's token sequence (so "cat" does not match "concatenate"); an answer with no
            tokens never matches.
        regex: when true, each answer is a regular expression searched (case-insensitive, unicode) in the
            NFD-normalised text; an invalid pattern counts as no match.
    """
    answers = list(answers)
    if not answers:
        return False
    if regex:
        normalized = normalize_text(text)
        for pattern in answers:
            compiled = _compile_answer_pattern(normalize_text(pattern))
            if compiled is not None and compiled.search(normalized) is not None:
                return True
        return False
    tokens = _TOKENIZER.tokenize(text)
    return any(_contains_sequence(tokens, _answer_tokens(answer)) for answer in answers)
