"""The docs: docs/tables.py rewrites its marked tables, README.md stays a front page, links resolve."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TABLES = DOCS / "tables.py"
#: paths of the layout before clipq/app and the one Triton backend
OLD_PATHS = ("clipq/commands/", "clipq/cli.py", "clipq/bench/", "serving/tiny.py", "clipq/demo.py")
LINK = re.compile(r"\]\(((?:docs/)?[\w.-]+\.md)(?:#([\w-]+))?\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _tables_module():
    spec = importlib.util.spec_from_file_location("clipq_docs_tables", TABLES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_tables_script_rewrites_a_block_from_json(tmp_path):
    page = tmp_path / "training.md"
    shutil.copy(DOCS / "training.md", page)
    before = page.read_text()
    assert "<!-- table:vqa -->" in before and "<!-- table:retrieval -->" in before
    demo = tmp_path / "demo"
    (demo / "artifacts").mkdir(parents=True)
    vqa = {v: {"overall": 11.1 * (i + 1), "object": 1.5, "number": 2.5, "color": 3.5, "location": 4.5}
           for i, v in enumerate(("v1", "v2", "v3", "v4"))}
    (demo / "artifacts" / "eval.json").write_text(json.dumps({"vqa": vqa}))

    r = subprocess.run([sys.executable, str(TABLES), "--demo", str(demo), "--bench", str(tmp_path / "none"), str(page)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = page.read_text()
    block = after.split("<!-- table:vqa -->\n", 1)[1].split("<!-- /table:vqa -->", 1)[0]
    assert "| V1 (no mapper, LM frozen, 1 epoch) | 11.1 | 1.5 | 2.5 | 3.5 | 4.5 |" in block
    assert "| V4 (V3 + 1 more epoch) | 44.4 |" in block
    assert "30.1" not in block  # the old figure is gone from the block ...
    assert "updated vqa" in r.stdout
    # ... and a table whose JSON lacks its keys, or is absent, is left alone and reported
    assert "skipped retrieval" in r.stdout and "skipped demo_timings" in r.stdout
    keep = before.split("<!-- table:retrieval -->", 1)[1].split("<!-- /table:retrieval -->", 1)[0]
    assert keep in after
    assert after.replace(block, "") == before.replace(
        before.split("<!-- table:vqa -->\n", 1)[1].split("<!-- /table:vqa -->", 1)[0], "")

    # --check reports the page as current now, and as stale once a figure changes
    r = subprocess.run([sys.executable, str(TABLES), "--check", "--demo", str(demo), str(page)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vqa["v1"]["overall"] = 12.3
    (demo / "artifacts" / "eval.json").write_text(json.dumps({"vqa": vqa}))
    r = subprocess.run([sys.executable, str(TABLES), "--check", "--demo", str(demo), str(page)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1 and page.read_text() == after


def test_every_marker_names_a_known_table():
    known = set(_tables_module().TABLES)
    for page in _pages():
        text = page.read_text()
        opened = re.findall(r"^<!-- table:([\w-]+) -->$", text, flags=re.M)
        closed = re.findall(r"^<!-- /table:([\w-]+) -->$", text, flags=re.M)
        assert opened == closed, f"{page.name}: unbalanced table markers"
        assert set(opened) <= known, f"{page.name}: unknown tables {set(opened) - known}"


def test_readme_is_a_front_page_and_its_links_resolve():
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (limit 300): move reference text to docs/"
    # what clipq is comes first, then the two commands, before line 30
    assert lines[0] == "# clipq" and lines[2].startswith("CLIP-family models as fast, served, production software")
    start = lines.index("## Set-up on a fresh machine: two commands")
    assert start < 30 and lines[start:start + 6] == [
        "## Set-up on a fresh machine: two commands", "", "```bash",
        "make demo    # creates .venv, installs everything, runs the end-to-end demo on the embedded default",
        "make test    # creates .venv, installs everything, runs the whole test suite", "```"]
    # one results table, with the machine it was measured on; history stays in git and docs/
    assert "before (main" not in readme.read_text() and readme.read_text().count("<!-- table:") == 1
    results = "\n".join(lines[lines.index("## Results on the embedded default"):])
    assert re.search(r"\d-core (AMD EPYC|Intel Xeon)[^\n]*\n?[^\n]*20\d\d-\d\d-\d\d", results), "no machine named"
    linked = {m.group(1) for m in LINK.finditer(readme.read_text())}
    assert {p for p in linked if p.startswith("docs/")}, "README.md links no docs page"
    for page in _pages():
        for m in LINK.finditer(page.read_text()):
            target = (page.parent / m.group(1)).resolve()
            assert target.is_file(), f"{page.name} links {m.group(1)}, which does not exist"
            if m.group(2):
                assert m.group(2) in _anchors(target), f"{page.name} links {m.group(0)}: no such heading"


def test_no_page_names_an_old_path():
    for page in _pages():
        text = page.read_text()
        for old in OLD_PATHS:
            assert old not in text, f"{page.name} mentions {old}, a path of the old layout"
