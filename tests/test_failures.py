"""Bad input and faults a user can act on: each error names the file (and line) or the folder or URL at fault.

Issue 14, items 7, 8, 11, 12, 13: non-UTF-8 text, truncated `.gz` files, an unwritable run folder, a failed
download, and the one-line failure summary that `run.py` prints and logs to `run.log`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from simlm.data.errors import DataFormatError
from simlm.data.formats import (
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
    read_examples,
    read_qa_queries_tsv,
    read_queries_tsv,
    read_run,
    read_simlm_passages,
    read_trec_qrels,
)
from simlm.data.io import open_text

EXAMPLE = {
    "query_id": "1",
    "query": "q",
    "positives": {"doc_id": ["0"], "score": [1.0]},
    "negatives": {"doc_id": ["1"], "score": [0.5]},
}

# reader, file name, a good line (repeated), and where the bad line goes
READERS = {
    "beir_corpus": (read_beir_corpus, "corpus.jsonl", lambda i: json.dumps({"_id": f"d{i}", "text": "t"})),
    "simlm_passages": (
        read_simlm_passages,
        "passages.jsonl.gz",
        lambda i: json.dumps({"id": str(i), "title": "", "contents": "t"}),
    ),
    "beir_queries": (read_beir_queries, "queries.jsonl", lambda i: json.dumps({"_id": f"q{i}", "text": "t"})),
    "queries_tsv": (read_queries_tsv, "dev_queries.tsv", lambda i: f"q{i}\tsome text"),
    "qa_queries": (read_qa_queries_tsv, "test_queries.tsv", lambda i: f'who is {i}?\t["a"]'),
    "beir_qrels": (read_beir_qrels, "qrels/test.tsv", lambda i: f"q{i}\td{i}\t1"),
    "trec_qrels": (read_trec_qrels, "dev_qrels.txt", lambda i: f"q{i} 0 d{i} 1"),
    "examples": (read_examples, "train.jsonl.gz", lambda i: json.dumps({**EXAMPLE, "query_id": str(i)})),
    "trec_run": (read_run, "dev.trec", lambda i: f"q{i // 10} Q0 d{i} {i % 10 + 1} {10 - i % 10}.0 t"),
    "msmarco_run": (read_run, "dev.msmarco.txt.gz", lambda i: f"q{i // 10}\td{i}\t{i % 10 + 1}\t{-i}.5"),
}


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def lines(make, n: int) -> list[bytes]:
    return [(make(i) + "\n").encode() for i in range(n)]


# ----------------------------------------------------------------------------- 7: not UTF-8
@pytest.mark.parametrize("kind", sorted(READERS))
def test_non_utf8_names_file_and_line(tmp_path, kind):
    reader, name, make = READERS[kind]
    rows = lines(make, 40)
    rows[36] = rows[36][:2] + b"\xe9" + rows[36][2:]  # latin-1, as a file from another tool may be
    path = write_bytes(tmp_path / name, b"".join(rows))
    with pytest.raises(DataFormatError) as err:
        reader(path)
    assert err.value.path == str(path) and err.value.line == 37
    assert str(err.value).startswith(f"{path}:37:") and "not UTF-8" in str(err.value)
    assert "byte 0xe9 at column 3" in str(err.value)


def test_non_utf8_in_the_first_line_of_a_run(tmp_path):
    """The run reader sniffs the first line for its format: that read names the line too."""
    path = write_bytes(tmp_path / "run.trec", b"q\xff1 Q0 d1 1 1.0 t\nq1 Q0 d2 2 0.5 t\n")
    with pytest.raises(DataFormatError, match=r"run\.trec:1: not UTF-8"):
        read_run(path)


def test_open_text_reads_like_a_text_file(tmp_path):
    path = write_bytes(tmp_path / "a.txt.gz", "é one\r\ntwo\n".encode())
    with open_text(path) as f:
        assert f.readline() == "é one\r\n"
        assert f.read() == "two\n"
    with open_text(path) as f:
        assert list(f) == ["é one\r\n", "two\n"]


# ----------------------------------------------------------------------------- 8: truncated .gz
@pytest.mark.parametrize("kind", ["simlm_passages", "examples", "msmarco_run"])
def test_truncated_gzip_names_file_and_last_good_line(tmp_path, kind):
    reader, name, make = READERS[kind]
    rows = lines(make, 20000)
    data = gzip.compress(b"".join(rows))
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])  # cut short, as an interrupted copy or download leaves it
    # the lines that a reader gets before the stream breaks are complete: the last of them is named
    good = 0
    with gzip.open(path, "rb") as f, pytest.raises(EOFError):
        for good, _ in enumerate(f, start=1):  # noqa: B007
            pass
    assert 0 < good < len(rows)
    with pytest.raises(DataFormatError) as err:
        reader(path)
    message = str(err.value)
    assert (
        message.startswith(f"{path}: truncated gzip file") and f"last complete line is line {good}" in message
    )
    assert not isinstance(err.value.__cause__, EOFError) and err.value.__suppress_context__


def test_corrupt_gzip_is_named(tmp_path):
    path = write_bytes(tmp_path / "corpus.jsonl.gz", b"")
    path.write_bytes(b"this is no gzip data")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl\.gz: corrupt gzip file .* at its start"):
        read_beir_corpus(path)
