"""Offline demo retrieval data set built from the standard library's own docstrings.

Every Python installation ships thousands of documented functions, classes and methods. Each docstring
is split into a one-paragraph summary (the query) and the rest of the text (the relevant passage); short
or ambiguous docstrings become unjudged distractor passages. The result is written in BEIR layout::

    corpus.jsonl            {"_id": "d00001", "title": "json.dumps", "text": "..."}
    queries.jsonl           {"_id": "q00001", "text": "..."}
    qrels/{train,dev,test}.tsv
    manifest.json           versions, counts and the sha256 of every file above

Collection imports a few hundred stdlib modules, so it runs in a child interpreter
(``python -I -S demo.py --collect``) that only sees the standard library. The output is byte-identical
on every run of the same Python, which is why the cache key is the Python version (plus
``DEMO_FORMAT_VERSION``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

# Bump whenever the extraction rules or the on-disk layout change: it is part of the cache key.
DEMO_FORMAT_VERSION = 1

MIN_BODY_WORDS = 8
MIN_QUERY_WORDS = 3
MAX_QUERY_WORDS = 40
SPLITS = ("train", "dev", "test")

# Module-name components that are skipped wherever they appear (test suites, GUI/demo packages,
# modules with side effects on import).
_SKIPPED_COMPONENTS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "tkinter",
        "turtle",
        "ensurepip",
        "this",
        "antigravity",
        "xxlimited",
        "xxlimited_35",
        "xxsubtype",
    }
)

_SIGNATURE_LINE = re.compile(r"^[A-Za-z_][\w.]*\(.*\)\s*((-+|=)>.*)?$")
_STALE_TMP_SECONDS = 3600
_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/dev.tsv", "qrels/test.tsv")


# --------------------------------------------------------------------------------------------------
# Collection (runs in the child interpreter)
# --------------------------------------------------------------------------------------------------


def _is_skipped(modname: str) -> bool:
    return any(part.startswith("_") or part in _SKIPPED_COMPONENTS for part in modname.split("."))


def _stdlib_dirs() -> tuple[str, ...]:
    import sysconfig

    dirs = {os.path.dirname(os.__file__), sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs if d))


def _is_stdlib_file(module: ModuleType, stdlib_dirs: tuple[str, ...]) -> bool:
    """True for built-in modules and files under the stdlib folders (never site-packages shadows)."""
    path = getattr(module, "__file__", None)
    if not path:
        return True
    real = os.path.realpath(path)
    parts = set(Path(real).parts)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return real.startswith(stdlib_dirs)


def _import(modname: str) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            __import__(modname)
        return sys.modules[modname]
    except KeyboardInterrupt:
        raise
    except BaseException:  # ImportError, platform errors, even SystemExit from odd modules
        return None


def _iter_stdlib_modules() -> Iterator[tuple[str, ModuleType]]:
    """Public stdlib modules and their public submodules, importing only names that pass the filters.

    ``pkgutil.walk_packages`` would import every subpackage (including test packages) before we could
    filter it, so the walk is done here with ``pkgutil.iter_modules``, one level at a time.
    """
    stdlib_dirs = _stdlib_dirs()
    todo = sorted((n for n in sys.stdlib_module_names if not _is_skipped(n)), reverse=True)
    seen: set[str] = set()
    while todo:
        modname = todo.pop()
        if modname in seen:
            continue
        seen.add(modname)
        module = _import(modname)
        if module is None or not _is_stdlib_file(module, stdlib_dirs):
            continue
        yield modname, module
        path = getattr(module, "__path__", None)
        if path:
            children = [info.name for info in pkgutil.iter_modules(list(path), prefix=modname + ".")]
            todo.extend(sorted((c for c in children if not _is_skipped(c)), reverse=True))


def _own_doc(obj: Any) -> str | None:
    """The object's own docstring, cleaned; None when it has none (no inheritance from base classes)."""
    try:
        raw = obj.__doc__
    except Exception:
        return None
    if not isinstance(raw, str) or not raw.strip():
        return None
    return inspect.getdoc(obj)


def _is_home(home: object, modname: str) -> bool:
    """Whether objects whose ``__module__`` is ``home`` belong to the public module ``modname``.

    Besides ``home == modname``, C accelerators count for the public module of the same name
    (``_heapq`` -> ``heapq``, ``_io`` -> ``io``): private modules are never walked, so this is their only
    home and cannot create a duplicate.
    """
    if not isinstance(home, str):
        return False
    return home == modname or (home.startswith("_") and home.lstrip("_") == modname)


def _unwrap_method(attr: Any) -> Any:
    if isinstance(attr, (staticmethod, classmethod)):
        return attr.__func__
    return attr


def collect_documented_objects() -> list[dict]:
    """Import the public stdlib modules and return their documented public objects.

    Each entry is ``{"name": qualified name, "kind": "module" | "class" | "function" | "method",
    "doc": cleaned docstring}``; only objects defined in the module they are found in (or in its C
    accelerator, see ``_is_home``) are kept, so re-exports do not create duplicates. Sorted by
    qualified name.

    This imports a few hundred modules into the current interpreter: call it in a child process
    (see ``build_demo_dataset``).
    """
    found: dict[str, dict] = {}

    def add(name: str, kind: str, obj: Any) -> None:
        doc = _own_doc(obj)
        if doc is not None:
            found[name] = {"name": name, "kind": kind, "doc": doc}

    for modname, module in _iter_stdlib_modules():
        add(modname, "module", module)
        try:
            members = sorted(vars(module).items())
        except TypeError:
            continue
        for name, obj in members:
            if name.startswith("_"):
                continue
            is_class = inspect.isclass(obj)
            if not (is_class or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            # Defined here and not an alias (``B = A``): each object is reported once, under its home.
            home = getattr(obj, "__module__", None)
            if not _is_home(home, modname) or getattr(obj, "__name__", None) != name:
                continue
            qualname = f"{modname}.{name}"
            add(qualname, "class" if is_class else "function", obj)
            if not is_class:
                continue
            for mname, attr in sorted(vars(obj).items()):
                func = _unwrap_method(attr)
                if mname.startswith("_") or not inspect.isroutine(func):
                    continue
                if getattr(func, "__name__", None) != mname:
                    continue
                if getattr(func, "__module__", home) != home:
                    continue
                add(f"{qualname}.{mname}", "method", func)
    return [found[name] for name in sorted(found)]


def _collect_to_stdout() -> None:
    # Imports may print (even from C code), so fd 1 points at stderr until the JSON is written.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        objects = collect_documented_objects()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    sys.stdout.write(json.dumps(objects, ensure_ascii=True))
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# Docstring -> (summary, body) and passages
# --------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _paragraphs(doc: str) -> list[str]:
    paragraphs: list[str] = []
    current: list[str] = []
    for line in doc.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def _is_signature_line(line: str) -> bool:
    return bool(_SIGNATURE_LINE.match(line.strip()))


def _drop_signature_lines(paragraph: str) -> str:
    """Remove leading call-signature lines (``sqrt(x)``, ``dumps(obj, *, skipkeys=False) -> str``).

    Builtin docstrings often start with one or more signatures, sometimes with indented
    continuation lines, directly followed by the summary in the same paragraph.
    """
    lines = paragraph.splitlines()
    i = 0
    while i < len(lines) and _is_signature_line(lines[i]):
        i += 1
        while i < len(lines) and lines[i][:1].isspace():
            i += 1
    return "\n".join(lines[i:])


def split_docstring(doc: str) -> tuple[str, str]:
    """Split a cleaned docstring into (summary, body), both whitespace-normalised.

    The summary is the first paragraph once leading call signatures are removed; the body is
    everything after it.
    """
    paragraphs = _paragraphs(doc)
    while paragraphs:
        first = _drop_signature_lines(paragraphs[0])
        if first.strip():
            return _normalise(first), _normalise("\n".join(paragraphs[1:]))
        paragraphs = paragraphs[1:]
    return "", ""


def _usable_query(summary: str, counts: Counter[str]) -> bool:
    if not MIN_QUERY_WORDS <= len(summary.split()) <= MAX_QUERY_WORDS:
        return False
    return ">>>" not in summary and counts[summary.lower()] == 1


def _stable_bucket(name: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def make_passages(objects: list[dict]) -> list[dict]:
    """Turn collected objects into passages, sorted by title.

    Each passage is ``{"title", "text", "query", "split"}``; ``query``/``split`` are None for
    distractors. Judged: body of >= MIN_BODY_WORDS words and a unique summary of
    MIN_QUERY_WORDS..MAX_QUERY_WORDS words. Distractors (whole docstring as text): single-paragraph
    docstrings of >= MIN_BODY_WORDS words and docstrings whose summary is ambiguous or out of range.
    A passage whose text repeats an earlier passage's text is dropped (with its query).
    """
    split = {o["name"]: split_docstring(o["doc"]) for o in objects}
    summary_counts = Counter(summary.lower() for summary, _ in split.values() if summary)

    passages: list[dict] = []
    seen_texts: set[str] = set()
    for obj in sorted(objects, key=lambda o: o["name"]):
        name = obj["name"]
        summary, body = split[name]
        if not summary:
            continue
        if _usable_query(summary, summary_counts) and len(body.split()) >= MIN_BODY_WORDS:
            passage = {"title": name, "text": body, "query": summary, "split": _stable_bucket(name)}
        else:
            whole = f"{summary} {body}".strip()
            if len(whole.split()) < MIN_BODY_WORDS:
                continue
            passage = {"title": name, "text": whole, "query": None, "split": None}
        if passage["text"] in seen_texts:
            continue
        seen_texts.add(passage["text"])
        passages.append(passage)
    return passages


# --------------------------------------------------------------------------------------------------
# Building, caching
# --------------------------------------------------------------------------------------------------


def _run_collector() -> list[dict]:
    """Run ``collect_documented_objects`` in an isolated stdlib-only child interpreter."""
    # -I: no PYTHON* env vars, no user site, no cwd on sys.path (a local json.py cannot shadow json);
    # -S: no site-packages, so only the real stdlib is seen and nothing of the project is imported.
    cmd = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "--collect"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=600, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"demo collector failed with exit code {proc.returncode}:\n{tail}")
    return json.loads(proc.stdout)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


def _write_dataset(passages: list[dict], root: Path) -> dict:
    width = max(5, len(str(len(passages))))
    judged = [p for p in passages if p["query"] is not None]
    qrels: dict[str, list[str]] = {s: [] for s in SPLITS}
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with (
        open(root / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as corpus,
        open(root / "queries.jsonl", "w", encoding="utf-8", newline="\n") as queries,
    ):
        qnum = 0
        for dnum, passage in enumerate(passages, start=1):
            doc_id = f"d{dnum:0{width}d}"
            record = {"_id": doc_id, "title": passage["title"], "text": passage["text"]}
            corpus.write(json.dumps(record, ensure_ascii=False) + "\n")
            if passage["query"] is None:
                continue
            qnum += 1
            query_id = f"q{qnum:0{width}d}"
            queries.write(json.dumps({"_id": query_id, "text": passage["query"]}, ensure_ascii=False) + "\n")
            qrels[passage["split"]].append(f"{query_id}\t{doc_id}\t1\n")
    for name, rows in qrels.items():
        with open(root / "qrels" / f"{name}.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(rows)
    manifest = {
        "name": "stdlib-docstrings",
        "format_version": DEMO_FORMAT_VERSION,
        "python_version": _python_version(),
        "python_implementation": sys.implementation.name,
        "counts": {
            "passages": len(passages),
            "judged_passages": len(judged),
            "distractors": len(passages) - len(judged),
            "queries": {s: len(qrels[s]) for s in SPLITS},
            "queries_total": len(judged),
        },
        "sha256": {rel: _sha256(root / rel) for rel in _FILES},
    }
    with open(root / "manifest.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _is_valid_dataset(root: Path) -> bool:
    """A finished build of the current format and Python whose files match the manifest hashes."""
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format_version") != DEMO_FORMAT_VERSION:
            return False
        if manifest.get("python_version") != _python_version():
            return False
        hashes = manifest["sha256"]
        return all(hashes.get(rel) == _sha256(root / rel) for rel in _FILES)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _remove_stale_temp_dirs(out_dir: Path) -> None:
    """Delete temp folders of builds that were interrupted long ago (young ones may still be running)."""
    cutoff = time.time() - _STALE_TMP_SECONDS
    for prefix in (f".{out_dir.name}.tmp-", f".{out_dir.name}.old-"):
        for path in out_dir.parent.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                if path.is_dir() and path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)


def build_demo_dataset(out_dir: Path) -> Path:
    """Build the stdlib-docstring data set in BEIR layout into ``out_dir`` and return it.

    Everything is written to a temp folder next to ``out_dir`` and renamed into place, so an
    interrupted build never leaves a half data set behind. If another process finished a valid build
    of ``out_dir`` first (same content, the output is deterministic), that one is kept.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_dir)
    # Not tempfile.mkdtemp: its 0700 mode would end up on the final folder; mkdir honours the umask.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        _write_dataset(make_passages(_run_collector()), tmp)
        for _ in range(3):
            try:
                os.replace(tmp, out_dir)  # fails if out_dir exists and is not empty
                return out_dir
            except OSError:
                if _is_valid_dataset(out_dir):
                    return out_dir
            # An invalid leftover (old format, corrupted): move it aside, then retry the rename.
            trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(out_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        raise RuntimeError(f"could not move the demo data set into place at {out_dir}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def demo_dataset_key() -> str:
    """Cache folder name: depends on the Python version (docstrings change) and the format version."""
    return f"stdlib-py{_python_version()}-v{DEMO_FORMAT_VERSION}"


def ensure_demo_dataset(cache_dir: str | Path) -> Path:
    """Return ``cache_dir/<demo_dataset_key()>``, building it first unless a valid build is there."""
    out_dir = Path(cache_dir) / demo_dataset_key()
    if _is_valid_dataset(out_dir):
        return out_dir
    return build_demo_dataset(out_dir)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--collect`` prints the collected objects as JSON; ``--out DIR`` builds the data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--collect", action="store_true", help="print the documented stdlib objects as JSON")
    group.add_argument("--out", type=Path, help="build the data set into this folder")
    group.add_argument("--cache", type=Path, help="build (or reuse) the data set under this cache folder")
    args = parser.parse_args(argv)
    if args.collect:
        _collect_to_stdout()
        return 0
    path = build_demo_dataset(args.out) if args.out else ensure_demo_dataset(args.cache)
    print(path)
    print((path / "manifest.json").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
