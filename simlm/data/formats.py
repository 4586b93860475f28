"""Readers and writers for every file format the stages exchange.

Corpora, queries and qrels in the BEIR and SimLM/MS MARCO layouts, SimLM training-example jsonl
(also the teacher-score `kd_*.jsonl` files), and run files in TREC 6-column and MS MARCO formats.
Every reader validates as it parses and raises `DataFormatError` naming file, line and field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simlm.data.answers import parse_answers
from simlm.data.corpus import Corpus, CorpusBuilder
from simlm.data.errors import DataFormatError
from simlm.data.io import atomic_write, iter_jsonl, iter_tsv, open_text, require

Qrels = dict[str, dict[str, int]]
Run = dict[str, list[tuple[str, float]]]


# --------------------------------------------------------------------------- corpora
def read_beir_corpus(path: str | Path) -> Corpus:
    """BEIR `corpus.jsonl[.gz]`: one `{"_id", "title", "text"}` object per line (title optional)."""
    builder = CorpusBuilder(str(path))
    for line_no, obj in iter_jsonl(path):
        doc_id = require(obj, "_id", path, line_no)
        text = require(obj, "text", path, line_no)
        title = obj.get("title") or ""
        builder.add(doc_id, str(title), text, line_no)
    return builder.build()


def read_simlm_passages(path: str | Path) -> Corpus:
    """SimLM `passages.jsonl.gz`: `{"id", "title", "contents"}` per line; the row index is the pid.

    A file without `id` keys is accepted (the row index becomes the id), as SimLM itself only reads rows.
    """
    builder = CorpusBuilder(str(path))
    for row, (line_no, obj) in enumerate(iter_jsonl(path)):
        doc_id = require(obj, "id", path, line_no) if "id" in obj else str(row)
        text = require(obj, "contents", path, line_no)
        builder.add(doc_id, str(obj.get("title") or ""), text, line_no)
    return builder.build()


def write_beir_corpus(path: str | Path, passages: Iterable[tuple[str, str, str]]) -> None:
    """Write `(doc_id, title, text)` triples as a BEIR corpus file."""
    with atomic_write(path) as f:
        for doc_id, title, text in passages:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- queries
def read_beir_queries(path: str | Path) -> dict[str, str]:
    """BEIR `queries.jsonl`: `{"_id", "text"}` per line."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, obj in iter_jsonl(path):
        qid = require(obj, "_id", path, line_no)
        if qid in queries:
            raise DataFormatError(
                path, line_no, "_id", f"duplicate query id {qid!r} (first on line {first_line[qid]})"
            )
        queries[qid] = require(obj, "text", path, line_no)
        first_line[qid] = line_no
    return queries


def read_queries_tsv(path: str | Path) -> dict[str, str]:
    """SimLM `<split>_queries.tsv`: `qid TAB text` per line."""
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line_no, cols in iter_tsv(path):
        if len(cols) < 2:
            raise DataFormatError(path, line_no, "text", "expected 'qid<TAB>text'")
        qid, text = cols[0].strip(), "\t".join(cols[1:]).strip()
        if not qid:
            raise DataFormatError(path, line_no, "qid", "empty query id")
        if qid in queries:
            raise DataFormatError(
                path, line_no, "qid", f"duplicate query id {qid!r} (first on line {first_line[qid]})"
            )
        queries[qid] = text
        first_line[qid] = line_no
    return queries


def read_qa_queries_tsv(path: str | Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """QA-style `<split>_queries.tsv`: `question TAB answers` (a JSON or Python-literal list).

    As in SimLM/DPR the question text is the query id; repeated questions keep their first line.
    """

    queries: dict[str, str] = {}
    answers: dict[str, list[str]] = {}
    for line_no, cols in iter_tsv(path):
        if len(cols) != 2:
            raise DataFormatError(path, line_no, "answers", "expected 'question<TAB>answers'")
        question = cols[0].strip()
        if not question:
            raise DataFormatError(path, line_no, "question", "empty question")
        if question in queries:
            continue
        queries[question] = question
        answers[question] = parse_answers(cols[1], path, line_no)
    return queries, answers


# --------------------------------------------------------------------------- qrels
def _check_ids(
    path: str | Path,
    line_no: int,
    qid: str,
    doc_id: str,
    query_ids: Collection[str] | None,
    doc_ids: Collection[str] | None,
) -> None:
    if query_ids is not None and qid not in query_ids:
        raise DataFormatError(path, line_no, "query-id", f"unknown query id {qid!r}")
    if doc_ids is not None and doc_id not in doc_ids:
        raise DataFormatError(path, line_no, "corpus-id", f"unknown passage id {doc_id!r}")


def _parse_grade(value: str, path: str | Path, line_no: int, name: str) -> int:
    """An integer relevance grade ("2", also "2.0"); <= 0 (e.g. -1) means judged not relevant."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise DataFormatError(path, line_no, name, f"relevance must be a number, got {value!r}") from None
    if not number.is_integer():
        raise DataFormatError(
            path, line_no, name, f"relevance must be an integer grade, got {value!r} (not truncated)"
        )
    return int(number)


def read_beir_qrels(
    path: str | Path, query_ids: Collection[str] | None = None, doc_ids: Collection[str] | None = None
) -> Qrels:
    """BEIR `qrels/<split>.tsv`: header `query-id corpus-id score`, then one judgement per line."""
    qrels: Qrels = {}
    for line_no, cols in iter_tsv(path):
        if line_no == 1 and cols[0].strip() == "query-id":
            continue
        if len(cols) != 3:
            raise DataFormatError(path, line_no, None, f"expected 3 tab-separated columns, got {len(cols)}")
        qid, doc_id = cols[0].strip(), cols[1].strip()
        _check_ids(path, line_no, qid, doc_id, query_ids, doc_ids)
        qrels.setdefault(qid, {})[doc_id] = _parse_grade(cols[2].strip(), path, line_no, "score")
    return qrels


def read_trec_qrels(
    path: str | Path, query_ids: Collection[str] | None = None, doc_ids: Collection[str] | None = None
) -> Qrels:
    """SimLM/TREC `<split>_qrels.txt`: `qid iter pid rel`, tab- or space-separated."""
    qrels: Qrels = {}
    for line_no, cols in iter_tsv(path, whitespace=True):
        if len(cols) != 4:
            raise DataFormatError(
                path, line_no, None, f"expected 4 columns 'qid iter pid rel', got {len(cols)}"
            )
        qid, doc_id = cols[0], cols[2]
        _check_ids(path, line_no, qid, doc_id, query_ids, doc_ids)
        qrels.setdefault(qid, {})[doc_id] = _parse_grade(cols[3], path, line_no, "rel")
    return qrels


def write_beir_qrels(path: str | Path, qrels: Qrels) -> None:
    with atomic_write(path) as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for doc_id, grade in docs.items():
                f.write(f"{qid}\t{doc_id}\t{grade}\n")


# --------------------------------------------------------------------------- training examples
@dataclass
class ScoredDocs:
    """Parallel lists of passage ids and scores (retriever scores, teacher logits, or -1)."""

    doc_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, list]:
        return {"doc_id": list(self.doc_ids), "score": list(self.scores)}


@dataclass
class TrainingExample:
    """One SimLM training example: a query with its positives and (hard) negatives."""

    query_id: str
    query: str
    positives: ScoredDocs
    negatives: ScoredDocs
    answers: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "query_id": self.query_id,
            "query": self.query,
            "positives": self.positives.to_json(),
            "negatives": self.negatives.to_json(),
        }
        if self.answers is not None:
            obj["answers"] = list(self.answers)
        return obj


def _scored_docs(
    obj: dict[str, Any], key: str, path: str | Path, line_no: int, doc_ids: Collection[str] | None
) -> ScoredDocs:
    block = obj.get(key)
    if block is None:
        if key == "negatives":
            return ScoredDocs()
        raise DataFormatError(path, line_no, key, "missing key")
    if not isinstance(block, dict):
        raise DataFormatError(
            path, line_no, key, f"expected an object with 'doc_id' and 'score', got {type(block).__name__}"
        )
    ids = block.get("doc_id")
    if not isinstance(ids, list):
        raise DataFormatError(path, line_no, f"{key}.doc_id", "missing or not a list")
    ids = [str(d) for d in ids]
    scores = block.get("score")
    if scores is None:
        scores = [-1.0] * len(ids)
    if not isinstance(scores, list) or len(scores) != len(ids):
        raise DataFormatError(
            path, line_no, f"{key}.score", f"expected a list of {len(ids)} numbers matching doc_id"
        )
    try:
        scores = [float(s) for s in scores]
    except (TypeError, ValueError):
        raise DataFormatError(path, line_no, f"{key}.score", "scores must be numbers") from None
    if doc_ids is not None:
        for d in ids:
            if d not in doc_ids:
                raise DataFormatError(path, line_no, f"{key}.doc_id", f"unknown passage id {d!r}")
    return ScoredDocs(ids, scores)


def iter_examples(path: str | Path, doc_ids: Collection[str] | None = None) -> Iterator[TrainingExample]:
    """Stream SimLM training examples; with `doc_ids`, every referenced passage must exist."""
    for line_no, obj in iter_jsonl(path):
        qid = require(obj, "query_id", path, line_no)
        query = require(obj, "query", path, line_no)
        positives = _scored_docs(obj, "positives", path, line_no, doc_ids)
        if not positives.doc_ids:
            raise DataFormatError(path, line_no, "positives.doc_id", "an example needs at least one positive")
        negatives = _scored_docs(obj, "negatives", path, line_no, doc_ids)
        answers = obj.get("answers")
        if answers is not None and not (
            isinstance(answers, list) and all(isinstance(a, str) for a in answers)
        ):
            raise DataFormatError(path, line_no, "answers", "expected a list of strings")
        yield TrainingExample(qid, query, positives, negatives, answers)


def read_examples(path: str | Path, doc_ids: Collection[str] | None = None) -> list[TrainingExample]:
    """Read a whole training-examples file; an empty file is an error."""
    examples = list(iter_examples(path, doc_ids))
    if not examples:
        raise DataFormatError(path, None, None, "no training examples in the file")
    return examples


def write_examples(path: str | Path, examples: Iterable[TrainingExample]) -> int:
    """Atomically write training examples as jsonl; returns how many were written."""
    n = 0
    with atomic_write(path) as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


# --------------------------------------------------------------------------- runs
def doc_id_order(doc_id: str) -> tuple[int, int, str]:
    """Tie-break key: numeric ids in numeric order (lower pid first, as SimLM), then other ids as strings."""
    return (0, int(doc_id), "") if doc_id.isdigit() else (1, 0, doc_id)


def rank_scores(scores: Iterable[tuple[str, float]], top_k: int | None = None) -> list[tuple[str, float]]:
    """Sort `(doc_id, score)` pairs best first, breaking score ties by doc id; keep the top `top_k`."""
    ranked = sorted(scores, key=lambda ds: (-ds[1], doc_id_order(ds[0])))
    return ranked if top_k is None else ranked[:top_k]


def rerank_candidates(run: Run, depth: int) -> list[tuple[str, str]]:
    """The `(qid, doc id)` pairs a re-ranker scores: each query's top `depth`, queries in string order (as SimLM)."""
    return [(qid, doc_id) for qid in sorted(run) for doc_id, _ in run[qid][:depth]]


RUN_FORMATS = ("trec", "msmarco")
RUN_SCORE_DECIMALS = 6  # run files store scores with 6 decimals


def run_score(score: float) -> float:
    """A score as a run file stores it, so in-memory and re-read runs give identical downstream files."""
    return round(float(score), RUN_SCORE_DECIMALS)


def write_run(path: str | Path, run: Run, fmt: str = "trec", tag: str = "simlm") -> None:
    """Write a run (already ranked) as TREC `qid Q0 doc rank score tag` or MS MARCO `qid\\tpid\\trank\\tscore`."""
    if fmt not in RUN_FORMATS:
        raise ValueError(f"unknown run format {fmt!r}; expected one of {RUN_FORMATS}")
    with atomic_write(path) as f:
        for qid, ranking in run.items():
            for rank, (doc_id, score) in enumerate(ranking, start=1):
                if fmt == "trec":
                    f.write(f"{qid} Q0 {doc_id} {rank} {score:.{RUN_SCORE_DECIMALS}f} {tag}\n")
                else:
                    f.write(f"{qid}\t{doc_id}\t{rank}\t{score:.{RUN_SCORE_DECIMALS}f}\n")


def read_run(path: str | Path) -> Run:
    """Read a TREC (6 columns) or MS MARCO (`qid pid rank [score]`) run; the format is detected per file.

    Rankings are returned in rank order. A 3-column MS MARCO file gets score 1/rank, as SimLM does.
    Well-formed files take a fast Arrow path; anything it cannot vouch for is re-read line by line,
    which names the offending line.
    """
    fast = _read_run_arrow(path)
    return fast if fast is not None else _read_run_lines(path)


def _read_run_arrow(path: str | Path) -> Run | None:
    """Arrow CSV parse of a clean run file; None when the file needs the validating reader."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    with open_text(path) as f:
        first = f.readline()
    if not first.strip():
        return None
    delimiter = "\t" if "\t" in first else " "
    n_cols = len(first.rstrip("\r\n").split(delimiter))
    names = {
        6: ["qid", "q0", "doc", "rank", "score", "tag"],
        4: ["qid", "doc", "rank", "score"],
        3: ["qid", "doc", "rank"],
    }
    if n_cols not in names:
        return None
    types = {
        "qid": pa.string(),
        "doc": pa.string(),
        "rank": pa.int64(),
        "score": pa.float64(),
        "q0": pa.string(),
        "tag": pa.string(),
    }
    try:
        table = csv.read_csv(
            pa.input_stream(str(path), compression="gzip" if str(path).endswith(".gz") else None),
            read_options=csv.ReadOptions(column_names=names[n_cols]),
            parse_options=csv.ParseOptions(delimiter=delimiter, quote_char=False),
            convert_options=csv.ConvertOptions(column_types={n: types[n] for n in names[n_cols]}),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, OSError):
        return None  # also bad UTF-8 or a cut-short .gz: the line reader says where
    if table.num_rows == 0 or any(table.column(c).null_count for c in table.column_names):
        return None
    scores = (
        table.column("score").to_numpy()
        if n_cols != 3
        else 1.0 / table.column("rank").to_numpy().astype(np.float64)
    )
    if np.isnan(scores).any():
        return None
    qids = table.column("qid").combine_chunks()
    order_of_qid = pc.index_in(qids, value_set=pc.unique(qids)).to_numpy()
    ranks = table.column("rank").to_numpy()
    docs = table.column("doc").to_pylist()
    # rank order inside each query (in order of first appearance); ties in rank fall back to score
    idx = np.lexsort((-scores, ranks, order_of_qid))
    group = order_of_qid[idx]
    bounds = np.flatnonzero(np.diff(group)) + 1
    starts, ends = np.concatenate(([0], bounds)), np.concatenate((bounds, [len(idx)]))
    unique_qids = pc.unique(qids).to_pylist()
    run: Run = {}
    score_list = scores.tolist()
    for start, end in zip(starts.tolist(), ends.tolist()):
        rows = idx[start:end].tolist()
        ranking = [(docs[i], score_list[i]) for i in rows]
        if len({d for d, _ in ranking}) != len(ranking):
            return None  # a passage ranked twice: let the line reader report where
        run[unique_qids[group[start]]] = ranking
    return run


def _read_run_lines(path: str | Path) -> Run:
    entries: dict[str, list[tuple[int, str, float]]] = {}
    n_cols: int | None = None
    seen: dict[tuple[str, str], int] = {}
    for line_no, cols in iter_tsv(path, whitespace=True):
        if n_cols is None:
            n_cols = len(cols)
            if n_cols not in (3, 4, 6):
                raise DataFormatError(
                    path, line_no, None, f"{n_cols} columns: expected TREC (6) or MS MARCO (3 or 4) run lines"
                )
        if len(cols) != n_cols:
            raise DataFormatError(
                path, line_no, None, f"expected {n_cols} columns like the first line, got {len(cols)}"
            )
        if n_cols == 6:
            qid, doc_id, rank_s, score_s = cols[0], cols[2], cols[3], cols[4]
        else:
            qid, doc_id, rank_s = cols[0], cols[1], cols[2]
            score_s = cols[3] if n_cols == 4 else None
        rank = _parse_number(rank_s, int, path, line_no, "rank")
        score = 1.0 / rank if score_s is None else _parse_number(score_s, float, path, line_no, "score")
        if (qid, doc_id) in seen:
            raise DataFormatError(
                path,
                line_no,
                "doc_id",
                f"{doc_id!r} ranked twice for query {qid!r} (line {seen[qid, doc_id]})",
            )
        seen[qid, doc_id] = line_no
        entries.setdefault(qid, []).append((rank, doc_id, score))
    if n_cols is None:
        raise DataFormatError(path, None, None, "the run file is empty")
    run: Run = {}
    for qid, rows in entries.items():
        rows.sort(key=lambda r: (r[0], -r[2], doc_id_order(r[1])))
        run[qid] = [(doc_id, score) for _, doc_id, score in rows]
    return run


def _parse_number(value: str, kind: Callable[[str], Any], path: str | Path, line_no: int, name: str) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise DataFormatError(path, line_no, name, f"not a number: {value!r}") from None
    if isinstance(number, float) and math.isnan(number):
        raise DataFormatError(path, line_no, name, "score is NaN")
    return number
