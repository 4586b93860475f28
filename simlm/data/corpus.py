"""The passage collection: Arrow-backed columns plus an id <-> row mapping."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

from simlm.data.errors import DataFormatError

_CHUNK_ROWS = 100_000


@dataclass(frozen=True)
class Passage:
    """One passage of a corpus."""

    doc_id: str
    title: str
    text: str


class CorpusBuilder:
    """Accumulates passages in Arrow chunks (bounded memory) and checks ids are unique.

    SimLM's corpora use the row index as the passage id ("0", "1", ...); while ids follow that
    pattern no dictionary is kept, so an 8.8M-passage MS MARCO corpus needs no id map at all.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._chunks: list[pa.RecordBatch] = []
        self._ids: list[str] = []
        self._titles: list[str] = []
        self._texts: list[str] = []
        self._rows = 0
        self._id_to_row: dict[str, int] | None = None  # None while ids equal their row numbers

    def add(self, doc_id: str, title: str, text: str, line_no: int | None = None) -> None:
        row = self._rows
        if self._id_to_row is None and doc_id != str(row):
            self._id_to_row = {str(r): r for r in range(row)}
        if self._id_to_row is not None:
            if doc_id in self._id_to_row:
                raise DataFormatError(
                    self.source,
                    line_no,
                    "id",
                    f"duplicate passage id {doc_id!r} (first at row {self._id_to_row[doc_id]})",
                )
            self._id_to_row[doc_id] = row
        self._ids.append(doc_id)
        self._titles.append(title)
        self._texts.append(text)
        self._rows += 1
        if len(self._ids) >= _CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._ids:
            self._chunks.append(
                pa.record_batch(
                    [
                        pa.array(self._ids, pa.string()),
                        pa.array(self._titles, pa.string()),
                        pa.array(self._texts, pa.string()),
                    ],
                    names=["id", "title", "text"],
                )
            )
            self._ids, self._titles, self._texts = [], [], []

    def build(self) -> Corpus:
        self._flush()
        if not self._rows:
            raise DataFormatError(self.source, None, None, "the corpus is empty")
        table = pa.Table.from_batches(self._chunks).combine_chunks()
        return Corpus(table, self._id_to_row, self.source)


class Corpus:
    """Passages addressed by row (0..N-1) or by id. Columns `id`, `title`, `text` live in Arrow."""

    def __init__(self, table: pa.Table, id_to_row: dict[str, int] | None, source: str = "<memory>") -> None:
        self.table = table
        self._id_to_row = id_to_row
        self.source = source
        self._ids = table.column("id")
        self._titles = table.column("title")
        self._texts = table.column("text")

    @classmethod
    def from_passages(cls, passages: Iterable[Passage], source: str = "<memory>") -> Corpus:
        """Build a corpus from `Passage` objects (tests, small corpora)."""
        builder = CorpusBuilder(source)
        for p in passages:
            builder.add(p.doc_id, p.title, p.text)
        return builder.build()

    def __len__(self) -> int:
        return self.table.num_rows

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        if self._id_to_row is None:
            return doc_id.isdigit() and str(int(doc_id)) == doc_id and int(doc_id) < len(self)
        return doc_id in self._id_to_row

    def row(self, doc_id: str) -> int:
        """Row index of `doc_id`; `KeyError` if unknown."""
        if self._id_to_row is None:
            if doc_id in self:
                return int(doc_id)
            raise KeyError(doc_id)
        return self._id_to_row[doc_id]

    def doc_id(self, row: int) -> str:
        return self._ids[row].as_py()

    def __getitem__(self, row: int) -> Passage:
        return Passage(self._ids[row].as_py(), self._titles[row].as_py(), self._texts[row].as_py())

    def ids(self) -> list[str]:
        return self._ids.to_pylist()

    def titles(self, rows: Sequence[int] | None = None) -> list[str]:
        col = self._titles if rows is None else self._titles.take(pa.array(rows, pa.int64()))
        return col.to_pylist()

    def texts(self, rows: Sequence[int] | None = None) -> list[str]:
        col = self._texts if rows is None else self._texts.take(pa.array(rows, pa.int64()))
        return col.to_pylist()

    def passages(self, rows: Sequence[int]) -> list[Passage]:
        """The passages at `rows`, fetched in one Arrow `take` per column."""
        idx = pa.array(rows, pa.int64())
        ids, titles, texts = (c.take(idx).to_pylist() for c in (self._ids, self._titles, self._texts))
        return [Passage(i, t, x) for i, t, x in zip(ids, titles, texts)]
