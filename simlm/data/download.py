"""Downloads for users with a network: SimLM's MS MARCO zips and BEIR data sets by name.

Resumable (HTTP Range on a `.part` file), checked (size, optional sha256) and atomic (the archive is
renamed into place only when complete; extraction goes to a temp folder renamed when done).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

BEIR_URL_DEFAULT = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"

SIMLM_MSMARCO_URL = "https://huggingface.co/datasets/intfloat/simlm-msmarco/resolve/main/{name}.zip"
SIMLM_MSMARCO_ZIPS = ("msmarco_bm25_official", "msmarco_distillation", "msmarco_reranker")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that cannot be completed or does not match its expected size or checksum."""


def _remote_size(url: str, timeout: float) -> int | None:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
    return int(length) if length is not None else None


def download(
    url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0, fix: str | None = None
) -> Path:
    """Download `url` to `dest`, resuming a previous partial download; verify size (and sha256).

    A failed request (no network, an unknown host, an HTTP error, a timeout, a dropped connection)
    raises `DownloadError` naming the URL, the reason and `fix` (what to do instead).
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        total = _remote_size(url, timeout)
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have > total:
            part.unlink()
            have = 0
        if total is None or have < total:
            request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:  # the server ignored the range: start again
                    have = 0
                with open(part, "ab" if have else "wb") as f:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        kept = part.stat().st_size if part.exists() else 0
        resume = f"; {kept} bytes kept in {part}, run again to resume" if kept else ""
        hint = f" {fix}" if fix else ""
        raise DownloadError(f"could not download {url}: {_reason(e)}{resume}.{hint}") from e
    size = part.stat().st_size
    if total is not None and size != total:
        hint = f" {fix}" if fix else ""
        raise DownloadError(
            f"could not download {url}: got {size} bytes, expected {total} (the connection dropped?); "
            f"{size} bytes kept in {part}, run again to resume.{hint}"
        )
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            part.unlink()
            raise DownloadError(f"{url}: sha256 {digest.hexdigest()} does not match {sha256}")
    os.replace(part, dest)
    return dest


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        text = getattr(reason, "strerror", None) or str(reason)
        return f"{text} (no network, or the host cannot be reached?)"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def extract(archive: str | Path, out_dir: str | Path) -> Path:
    """Unzip `archive` into `out_dir` atomically (temp folder + rename); returns `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        return out_dir
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        entries = list(tmp.iterdir())
        # archives usually hold one top folder named like the data set: lift its contents
        source = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        os.replace(source, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def fetch_beir(name: str, cache_dir: str | Path, url_template: str = BEIR_URL_DEFAULT) -> Path:
    """The BEIR data set `name` (e.g. `scifact`) under `<cache_dir>/beir/<name>`, downloaded on first use."""
    root = Path(cache_dir) / "beir"
    target = root / name
    if (target / "corpus.jsonl").exists():
        return target
    fix = (
        f"Without a network: get the BEIR '{name}' zip elsewhere, unzip it, and pass "
        "data.root=<a local folder> (the one holding corpus.jsonl, queries.jsonl and qrels/)"
    )
    archive = download(url_template.format(name=name), root / f"{name}.zip", fix=fix)
    return extract(archive, target)


def fetch_simlm_msmarco(
    out_dir: str | Path = "data",
    names: tuple[str, ...] = SIMLM_MSMARCO_ZIPS,
    url_template: str = SIMLM_MSMARCO_URL,
) -> list[Path]:
    """SimLM's preprocessed MS MARCO folders under `out_dir`."""
    out = []
    for name in names:
        fix = (
            f"Without a network: get {name}.zip elsewhere and unzip it into {Path(out_dir) / name}, "
            f"then pass data.root=<a local folder> (that {name} folder)"
        )
        archive = download(url_template.format(name=name), Path(out_dir) / f"{name}.zip", fix=fix)
        out.append(extract(archive, Path(out_dir) / name))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m simlm.data.download msmarco [out_dir]` or `python -m simlm.data.download beir <name> [cache]`."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["msmarco"]:
        for path in fetch_simlm_msmarco(args[1] if len(args) > 1 else "data"):
            print(path)
        return 0
    if args[:1] == ["beir"] and len(args) >= 2:
        print(fetch_beir(args[1], args[2] if len(args) > 2 else Path.home() / ".cache" / "simlm"))
        return 0
    print("usage: python -m simlm.data.download msmarco [out_dir] | beir <name> [cache_dir]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
