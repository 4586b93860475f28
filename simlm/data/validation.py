"""The validation protocol: which queries validate, and which training queries are held out for it.

`data.val_split` names a split with its own judgements (`dev`), or `holdout:<n>` / `holdout:<fraction>`:
a deterministic slice of the training split's judged queries (the first n in sha256 order of their ids,
so the slice depends only on the data set, never on which stage, file or seed asks). A held-out slice is
the split named `holdout` (`HOLDOUT`) for every stage, and is removed from the training split everywhere
(`simlm.data.dataset.RetrievalData`): no stage trains on it or mines examples for it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from simlm.data.formats import Qrels

HOLDOUT = "holdout"  # the split name of a held-out slice of the training queries
KEY = "data.val_split"
_HOLDOUT_RE = re.compile(r"^holdout:(.*)$")
SYNTAX = (
    "a split name (e.g. dev), holdout:<n> (n >= 1), holdout:<fraction in (0, 1)>, alternatives "
    "a|b (the first the data set has), or null"
)


@dataclass(frozen=True)
class ValSplitSpec:
    """A parsed `data.val_split`: a split with its own qrels (`split`) or a held-out slice (`size`).

    `size` is a query count (int >= 1) or a fraction of the training queries (float in (0, 1)).
    """

    text: str
    split: str | None = None
    size: int | float | None = None

    @property
    def name(self) -> str:
        """The split name stages use for it (files `<name>.trec`, metrics blocks `<name>`)."""
        return self.split if self.split is not None else HOLDOUT

    @property
    def is_holdout(self) -> bool:
        return self.size is not None


def parse_val_split(value: object) -> ValSplitSpec | None:
    """`data.val_split` -> its spec (None for null); ValueError naming the key for anything else.

    `holdout:100` holds out 100 training queries, `holdout:0.1` a tenth of them (rounded, at least one).
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"{KEY} must be {SYNTAX}, got {value!r}")
    match = _HOLDOUT_RE.match(value)
    if match is None:
        if ":" in value or " " in value:
            raise ValueError(f"{KEY} must be {SYNTAX}, got {value!r}")
        return ValSplitSpec(value, split=value)
    size = _parse_size(match.group(1))
    if size is None:
        raise ValueError(
            f"{KEY} must be {SYNTAX}, got {value!r}: the size after 'holdout:' must be a query count "
            "(an integer >= 1) or a fraction strictly between 0 and 1"
        )
    return ValSplitSpec(value, size=size)


def _parse_size(text: str) -> int | float | None:
    if re.fullmatch(r"[0-9]+", text):
        n = int(text)
        return n if n >= 1 else None
    try:
        fraction = float(text)
    except ValueError:
        return None
    return fraction if 0.0 < fraction < 1.0 else None


def choose_val_split(
    value: object,
    has_judgements: Callable[[str], bool],
    training_queries: Callable[[], int] = lambda: 0,
) -> object:
    """Alternatives `a|b|...` -> the first a data set can validate with; any other value unchanged.

    `dev|holdout:0.1` (`data=beir`'s default): the collection's dev split when it has judgements for it,
    else a held-out tenth of the training queries, if that leaves some to train on
    (`training_queries()`: how many judged training queries there are). Every alternative is checked
    by `parse_val_split`. When none is usable the first is kept, and the stages treat it as any named
    split without judgements (search and BM25 skip it with a warning, training stages say what to set).
    """
    if not isinstance(value, str) or "|" not in value:
        return value
    specs = [parse_val_split(option) for option in value.split("|")]  # every alternative is checked
    for spec in specs:  # a string alternative always parses to a spec (None comes only from null)
        assert spec is not None
        if spec.is_holdout:
            n = training_queries()
            if n and holdout_count(spec, n) < n:
                return spec.text
        elif has_judgements(spec.name):
            return spec.text
    return specs[0].text


def holdout_order(qid: str) -> str:
    """The sort key of the held-out slice (and of other hash-chosen query subsets): sha256 of the id."""
    return hashlib.sha256(qid.encode("utf-8")).hexdigest()


def holdout_count(spec: ValSplitSpec, num_train: int) -> int:
    """How many of `num_train` judged training queries a `holdout:` spec holds out (a fraction: rounded,
    at least one)."""
    assert spec.size is not None, "not a holdout spec"
    return spec.size if isinstance(spec.size, int) else max(1, round(spec.size * num_train))


def holdout_ids(train_qids: Iterable[str], spec: ValSplitSpec) -> frozenset[str]:
    """The held-out training query ids of a `holdout:` spec: the first n of the ids in `holdout_order`.

    A fraction f holds out round(f * N) queries (at least one); at least one query must stay for training.
    """
    assert spec.size is not None, "not a holdout spec"
    ordered = sorted(set(train_qids), key=holdout_order)
    n = holdout_count(spec, len(ordered))
    if n >= len(ordered):
        raise ValueError(
            f"{KEY}={spec.text!r} holds out {n} of the {len(ordered)} judged training queries: "
            "none would be left to train on; hold out fewer"
        )
    return frozenset(ordered[:n])


@dataclass(frozen=True)
class ValidationSplit:
    """The resolved validation split of a data set.

    `name`: its split name (`dev`, or `holdout`); `queries` and `qrels` (empty for QA data, which
    validates by `answers`); `held_out`: the training query ids it took (empty for a dev split), which no
    stage may train on.
    """

    name: str
    queries: dict[str, str]
    qrels: Qrels
    answers: dict[str, list[str]] | None = None
    held_out: frozenset[str] = field(default_factory=frozenset)

    @property
    def query_ids(self) -> frozenset[str]:
        return frozenset(self.queries)
