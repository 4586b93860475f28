"""The offline stdlib-docstring demo data set (simlm.data.demo)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from simlm.data import demo

SPLITS = ("train", "dev", "test")
# Only the collector imports these; the caller's interpreter must never see them.
COLLECTOR_ONLY_MODULES = ("wave", "telnetlib", "xmlrpc.server", "mailbox")


@dataclass
class Built:
    path: Path
    corpus: dict[str, dict]
    queries: dict[str, str]
    qrels: dict[str, list[tuple[str, str, str]]]
    manifest: dict
    new_modules: set[str]


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _read_qrels(path: Path) -> list[tuple[str, str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    return [tuple(line.split("\t")) for line in lines[1:]]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_subprocess(*args, **kwargs):
    raise AssertionError("the demo data set was rebuilt although a valid build exists")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    before = set(sys.modules)
    path = demo.build_demo_dataset(tmp_path_factory.mktemp("demo") / "stdlib")
    new_modules = set(sys.modules) - before
    corpus_rows = _read_jsonl(path / "corpus.jsonl")
    query_rows = _read_jsonl(path / "queries.jsonl")
    corpus = {row["_id"]: row for row in corpus_rows}
    queries = {row["_id"]: row["text"] for row in query_rows}
    assert len(corpus) == len(corpus_rows), "duplicate corpus ids"
    assert len(queries) == len(query_rows), "duplicate query ids"
    return Built(
        path=path,
        corpus=corpus,
        queries=queries,
        qrels={s: _read_qrels(path / "qrels" / f"{s}.tsv") for s in SPLITS},
        manifest=json.loads((path / "manifest.json").read_text(encoding="utf-8")),
        new_modules=new_modules,
    )


def test_enough_judged_queries(built: Built) -> None:
    n_judged = sum(len(rows) for rows in built.qrels.values())
    assert n_judged >= 1000
    assert n_judged == len(built.queries)
    counts = built.manifest["counts"]
    assert counts["queries_total"] == n_judged
    assert counts["queries"] == {s: len(built.qrels[s]) for s in SPLITS}
    assert counts["passages"] == len(built.corpus)


def test_qrels_point_to_existing_ids(built: Built) -> None:
    seen_queries = []
    for rows in built.qrels.values():
        for qid, docid, score in rows:
            assert qid in built.queries
            assert docid in built.corpus
            assert score == "1"
            seen_queries.append(qid)
    # One judgement per query, and every query is judged.
    assert sorted(seen_queries) == sorted(built.queries)


def test_corpus_has_distractors(built: Built) -> None:
    judged_docs = {docid for rows in built.qrels.values() for _, docid, _ in rows}
    distractors = set(built.corpus) - judged_docs
    assert len(built.corpus) > len(built.queries)
    assert distractors
    assert len(distractors) == built.manifest["counts"]["distractors"]


def test_splits_disjoint_and_non_empty(built: Built) -> None:
    by_split = {s: {qid for qid, _, _ in built.qrels[s]} for s in SPLITS}
    for name in SPLITS:
        assert by_split[name], f"{name} split is empty"
    assert not by_split["train"] & by_split["dev"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["dev"] & by_split["test"]
    docs = {s: {docid for _, docid, _ in built.qrels[s]} for s in SPLITS}
    assert (
        not (docs["train"] & docs["dev"])
        and not (docs["train"] & docs["test"])
        and not (docs["dev"] & docs["test"])
    )
    assert len(by_split["train"]) > len(by_split["dev"]) + len(by_split["test"])


def test_query_differs_from_its_passage(built: Built) -> None:
    for rows in built.qrels.values():
        for qid, docid, _ in rows:
            query = built.queries[qid]
            text = built.corpus[docid]["text"]
            assert query.strip() and text.strip()
            assert query != text


def test_corpus_texts_and_queries_unique(built: Built) -> None:
    texts = [row["text"] for row in built.corpus.values()]
    assert len(set(texts)) == len(texts)
    assert len(set(built.queries.values())) == len(built.queries)
    titles = [row["title"] for row in built.corpus.values()]
    assert titles == sorted(titles)
    assert "json.dumps" in titles


def test_manifest_hashes_match_files(built: Built) -> None:
    assert built.manifest["format_version"] == demo.DEMO_FORMAT_VERSION
    assert built.manifest["python_version"] == ".".join(map(str, sys.version_info[:3]))
    hashes = built.manifest["sha256"]
    assert set(hashes) == {"corpus.jsonl", "queries.jsonl", *(f"qrels/{s}.tsv" for s in SPLITS)}
    for rel, digest in hashes.items():
        assert hashlib.sha256((built.path / rel).read_bytes()).hexdigest() == digest


def test_collection_does_not_import_into_caller(built: Built) -> None:
    assert not built.new_modules & set(COLLECTOR_ONLY_MODULES)


def test_build_is_deterministic(built: Built, tmp_path: Path) -> None:
    again = demo.build_demo_dataset(tmp_path / "again")
    first, second = _files(built.path), _files(again)
    assert set(first) == set(second)
    for rel in first:
        assert first[rel] == second[rel], f"{rel} differs between two builds"
    # No temp folders are left next to the result.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]


def test_ensure_reuses_existing_build(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / demo.demo_dataset_key()
    shutil.copytree(built.path, target)
    mtimes = {rel: (target / rel).stat().st_mtime_ns for rel in _files(target)}
    monkeypatch.setattr(demo.subprocess, "run", _no_subprocess)
    assert demo.ensure_demo_dataset(str(tmp_path)) == target
    assert {rel: (target / rel).stat().st_mtime_ns for rel in _files(target)} == mtimes


def test_ensure_survives_interrupted_builds(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = demo.demo_dataset_key()
    # A temp folder from a killed build, and a half-written final folder without a manifest.
    leftover = tmp_path / f".{key}.tmp-0123456789abcdef"
    (leftover / "qrels").mkdir(parents=True)
    (leftover / "corpus.jsonl").write_text('{"_id": "d00001", "ti', encoding="utf-8")
    half = tmp_path / key
    half.mkdir()
    (half / "corpus.jsonl").write_text('{"_id": "d00001"}\n', encoding="utf-8")

    path = demo.ensure_demo_dataset(tmp_path)
    assert path == half
    assert _files(path) == _files(built.path)

    # Second call: nothing is rebuilt.
    monkeypatch.setattr(demo.subprocess, "run", _no_subprocess)
    assert demo.ensure_demo_dataset(tmp_path) == path


def test_ensure_rebuilds_corrupted_build(built: Built, tmp_path: Path) -> None:
    target = tmp_path / demo.demo_dataset_key()
    shutil.copytree(built.path, target)
    with open(target / "queries.jsonl", "a", encoding="utf-8") as f:
        f.write('{"_id": "q99999", "text": "tampered"}\n')
    assert demo.ensure_demo_dataset(tmp_path) == target
    assert _files(target) == _files(built.path)


def test_concurrent_builders_agree(built: Built, tmp_path: Path) -> None:
    code = (
        "import sys; from simlm.data.demo import ensure_demo_dataset; print(ensure_demo_dataset(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    target = tmp_path / demo.demo_dataset_key()
    assert outputs == [str(target), str(target)]
    assert _files(target) == _files(built.path)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize(
    ("doc", "summary", "body"),
    [
        ("Return the square root of x.", "Return the square root of x.", ""),
        (
            "sqrt(x)\n\nReturn the square\nroot of x.\n\nMore  text\nhere.",
            "Return the square root of x.",
            "More text here.",
        ),
        ("dumps(obj, *, skipkeys=False) -> str\nSerialize obj.\n\nDetails.", "Serialize obj.", "Details."),
        ("f(a)\nf(a, b) -> int\n    continued\n\nDo it.\n\nA\n\nB", "Do it.", "A B"),
        ("sqrt(x)", "", ""),
    ],
)
def test_split_docstring(doc: str, summary: str, body: str) -> None:
    assert demo.split_docstring(doc) == (summary, body)


def test_make_passages_rules() -> None:
    long_body = "This body has more than eight words in it for sure."
    objects = [
        {"name": "m.judged", "kind": "function", "doc": f"Compute the thing quickly.\n\n{long_body}"},
        {"name": "m.a.__eq__like", "kind": "method", "doc": f"Return self==value for sure.\n\n{long_body} A"},
        {"name": "m.b.__eq__like", "kind": "method", "doc": f"Return self==value for sure.\n\n{long_body} B"},
        {
            "name": "m.single",
            "kind": "function",
            "doc": "One paragraph with at least eight words in it, really.",
        },
        {"name": "m.short", "kind": "function", "doc": "Too short."},
        {"name": "m.zdup", "kind": "function", "doc": f"A different unique summary here.\n\n{long_body}"},
    ]
    passages = {p["title"]: p for p in demo.make_passages(objects)}
    assert passages["m.judged"]["query"] == "Compute the thing quickly."
    assert passages["m.judged"]["text"] == long_body
    assert passages["m.judged"]["split"] in SPLITS
    # Ambiguous summary -> distractors with the whole docstring as text.
    assert passages["m.a.__eq__like"]["query"] is None
    assert passages["m.a.__eq__like"]["text"].startswith("Return self==value")
    assert passages["m.single"]["query"] is None
    assert "m.short" not in passages
    # Same body text as m.judged -> dropped.
    assert "m.zdup" not in passages
