"""Bad input and faults a user can act on: each error names the file (and line) or the folder or URL at fault.

Issue 14, items 7, 8, 11, 12, 13: non-UTF-8 text, truncated `.gz` files, an unwritable run folder, a failed
download, and the one-line failure summary that `run.py` prints and logs to `run.log`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
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
from simlm.failures import failure_line, unwritable_reason

PROJECT_ROOT = Path(__file__).resolve().parents[1]

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


# ----------------------------------------------------------------------------- 11, 13: run.py
def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *args],
        cwd=cwd,
        env={**environ, "SIMLM_CACHE": str(cwd / "cache"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    root = tmp_path / "tiny"
    write_bytes(
        root / "corpus.jsonl", b"".join(lines(lambda i: json.dumps({"_id": f"d{i}", "text": "t"}), 3))
    )
    write_bytes(root / "queries.jsonl", b'{"_id": "q1", "text": "t"}\n')
    write_bytes(root / "qrels" / "test.tsv", b"query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


@pytest.mark.parametrize("fault", ["missing", "not_utf8"])
def test_stage_failure_ends_in_one_line_on_stderr_and_in_run_log(tmp_path, tiny_beir, fault):
    run_file = tmp_path / "dev.trec"
    if fault == "not_utf8":
        write_bytes(run_file, b"q1 Q0 d1 1 2.0 t\nq1 Q0 d\xe92 2 1.0 t\n")
        expected = f"DataFormatError: {run_file}:2: not UTF-8 text (byte 0xe9 at column 8)"
    else:
        expected = f"FileNotFoundError: {run_file}: file not found"
    run_dir = tmp_path / "run"
    res = run_cli(
        "stage=evaluate", "data=beir", f"data.root={tiny_beir}", f"stage.run_file={run_file}",
        f"hydra.run.dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 1
    assert last_line(res.stderr).startswith(expected), res.stderr
    assert "Traceback" not in res.stderr + res.stdout  # no 80-line traceback on the console
    assert f"log: {run_dir / 'run.log'}" in res.stderr and "HYDRA_FULL_ERROR=1" in res.stderr
    log = (run_dir / "run.log").read_text()
    assert last_line(log).endswith(f"[ERROR] - {last_line(res.stderr)}")
    assert "Traceback (most recent call last)" in log  # the traceback is kept in the log for a bug report
    assert not (run_dir / "metrics.json").exists()


def test_full_error_keeps_hydras_traceback_and_still_logs_the_line(tmp_path, tiny_beir):
    run_dir = tmp_path / "run"
    res = run_cli(
        "stage=evaluate", "data=beir", f"data.root={tiny_beir}", f"stage.run_file={tmp_path / 'x.trec'}",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, HYDRA_FULL_ERROR="1",
    )  # fmt: skip
    assert res.returncode == 1
    line = f"FileNotFoundError: {tmp_path / 'x.trec'}: file not found"
    assert "Traceback (most recent call last)" in res.stderr and last_line(res.stderr) == line
    assert last_line((run_dir / "run.log").read_text()).endswith(f"[ERROR] - {line}")


def test_failure_line_is_one_line():
    assert failure_line(ValueError("a\n  b\n")) == "ValueError: a b"
    assert failure_line(KeyError("k")) == "KeyError: 'k'"
    assert failure_line(RuntimeError()) == "RuntimeError"


@contextlib.contextmanager
def unwritable_folder():
    """An existing folder in which nobody can create a file.

    chmod 555 stops an ordinary user but not root (which bypasses permission bits): as root, the folder
    is made immutable (chattr +i, which stops root too), or, where chattr does not work, /sys is used.
    """
    base = Path(tempfile.mkdtemp(prefix="simlm-ro-"))
    folder = base / "ro"
    folder.mkdir()
    try:
        if os.geteuid() != 0:
            folder.chmod(0o555)
        elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0:
            pass
        else:
            folder = Path("/sys")
        yield folder
    finally:
        if folder != Path("/sys"):
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(folder)], check=False)
            folder.chmod(0o755)
        shutil.rmtree(base)


def test_unwritable_run_dir_is_named(tmp_path):
    with unwritable_folder() as folder:
        with pytest.raises(OSError):  # the fault is real: no file can be created there
            (folder / "probe").write_text("x")
        assert unwritable_reason(folder).startswith(f"{folder} exists but is not writable")
        res = run_cli("stage=evaluate", "stage.run_file=x.trec", f"hydra.run.dir={folder}", cwd=tmp_path)
        assert res.returncode == 1
        assert last_line(res.stderr).startswith(
            f"simlm: cannot write the run folder {folder}: {folder} exists"
        )
        assert "pick a writable one with hydra.run.dir=<folder>" in res.stderr
        assert "Unable to configure handler" not in res.stderr and "Traceback" not in res.stderr
        # a new run folder below it is named with the ancestor at fault
        assert unwritable_reason(folder / "a" / "b").startswith(f"{folder} is not writable")


def test_run_dir_below_a_file_is_named(tmp_path):
    """Works for root too: no permission bits involved."""
    (tmp_path / "outputs").write_text("a file where a folder should be")
    run_dir = tmp_path / "outputs" / "evaluate"
    res = run_cli("--multirun", "stage=evaluate", f"hydra.sweep.dir={run_dir}", cwd=tmp_path)
    assert res.returncode == 1
    assert last_line(res.stderr) == (
        f"simlm: cannot write the run folder {run_dir}: {tmp_path / 'outputs'} is a file, not a folder; "
        "pick a writable one with hydra.sweep.dir=<folder>"
    )
    res = run_cli("stage=evaluate", "stage.run_file=x.trec", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert res.returncode == 1 and "is a file, not a folder" in last_line(res.stderr)
    assert "hydra.run.dir=<folder>" in last_line(res.stderr) and "Traceback" not in res.stderr
