"""The README's cheap commands run exactly as written, on a fresh layout, with nothing activated.

A ```bash block preceded by a `<!-- cheap: ... -->` line is run as a bash script (`set -e`) in an empty
folder laid out like the project (run.py, conf/ and .venv/ linked in), so `.venv/bin/python run.py ...`
means what it means on a fresh clone after `make install`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

MARK = "<!-- cheap:"


def cheap_blocks(readme: str) -> list[str]:
    """The bash blocks marked cheap, in README order."""
    pattern = re.compile(re.escape(MARK) + r"[^\n]*-->\n```bash\n(.*?)\n```", re.DOTALL)
    return pattern.findall(readme)


BLOCKS = cheap_blocks((PROJECT_ROOT / "README.md").read_text())


def test_the_cheap_commands_cover_help_bm25_evaluate_and_export():
    text = "\n".join(BLOCKS)
    for command in ("run.py --help", "stage=bm25 data=demo", "stage=evaluate", "stage=export"):
        assert command in text, command
    # every command the README shows starts the documented way
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert not re.search(r"(?<![/\w])python run\.py", readme.replace("`python run.py ...` is the same", ""))


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings outside code blocks: lower case, punctuation dropped,
    spaces as hyphens, a repeat suffixed -1, -2, ..."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6} (.+)", line)
        if heading and not in_code:
            base = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchor, n = base, 0
            while anchor in anchors:
                n += 1
                anchor = f"{base}-{n}"
            anchors.add(anchor)
    return anchors


def test_heading_anchors_follow_githubs_rule():
    text = "# A (`b.c`)\n```\n# not a heading\n```\n## At a glance: x / y\n## Tests\n## Tests\n"
    assert heading_anchors(text) == {"a-bc", "at-a-glance-x--y", "tests", "tests-1"}


def test_every_link_within_the_readme_leads_to_a_heading():
    readme = (PROJECT_ROOT / "README.md").read_text()
    links = re.findall(r"\]\(#([^)]+)\)", readme)
    assert links, "the README's contents line links its sections"
    missing = sorted(set(links) - heading_anchors(readme))
    assert not missing, missing


@pytest.fixture
def fresh_layout(tmp_path) -> Path:
    """An empty folder with the project's entry points linked in, as on a fresh clone after `make install`."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in ("run.py", "conf"):
        (root / name).symlink_to(PROJECT_ROOT / name)
    (root / ".venv").symlink_to(Path(sys.prefix))  # the interpreter running the tests: the project's venv
    return root


@pytest.mark.timeout(600)
@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:60] for b in BLOCKS])
def test_readme_block_runs_as_written(block, fresh_layout, cache_dir, demo_root):
    env = {
        **os.environ,
        "SIMLM_ROOT": str(fresh_layout),  # outputs/ under the fresh folder, not the checkout
        "SIMLM_CACHE": str(cache_dir),  # the demo data set, built once per session
        "HF_HUB_OFFLINE": "1",
    }
    res = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=fresh_layout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, (block, res.stdout[-2000:], res.stderr[-3000:])
    if "--help" in block:
        assert "stage=<stage>" in res.stdout and "train_reranker" in res.stdout
    if "stage=evaluate" in block:
        assert (fresh_layout / "runs" / "demo_bm25" / "test.trec").is_file()
        assert "ndcg@10" in res.stdout
    if "stage=export" in block:
        exported = fresh_layout / "runs" / "export_minilm" / "exported"
        assert (exported / "modules.json").is_file()
