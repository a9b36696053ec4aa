#!/usr/bin/env python3
"""Rewrite the measured tables of README.md and docs/*.md from the JSON that produced them.

    python docs/tables.py --demo runs/demo --bench bench_results [--check] [FILE ...]

A generated table sits between two markers in the Markdown::

    <!-- table:NAME -->
    | ... |
    <!-- /table:NAME -->

and this script replaces what is between them with the table rendered from the JSON (see
``TABLES`` for the names and the file each one reads; the tables are defined beside this script in
``tables_demo.py`` and ``tables_bench.py``, on the registry of ``tables_base.py``). ``make demo``
writes ``runs/demo/demo.json``, ``runs/demo/artifacts/eval.json`` and ``manifest.json``; ``clipq
bench --target T`` writes ``bench_results/T.json``. A table whose JSON is missing (or lacks the keys it needs) is left as it
is and reported as skipped. With ``--check`` nothing is written and the exit status is 1 when a
table would change. Standard library only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# the table modules live beside this script: importable whether it runs as a script or is loaded by path
if str(ROOT / "docs") not in sys.path:
    sys.path.insert(0, str(ROOT / "docs"))

from tables_base import SOURCES, TABLES, md, pct, secs, table  # noqa: E402,F401

# each module registers its tables in TABLES when imported: the demo's first, then the benchmarks'
for _module in ("tables_demo", "tables_bench"):
    importlib.import_module(_module)

MARKER = re.compile(r"^(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)^(<!-- /table:(?P=name) -->)$", re.S | re.M)


# -- rewriting ---------------------------------------------------------------------------------------
def _load(source: str, dirs: dict[str, Path], cache: dict[str, Any]) -> Any:
    if source not in cache:
        opt, rel = SOURCES[source]
        path = dirs[opt] / rel
        cache[source] = json.loads(path.read_text()) if path.is_file() else path
    return cache[source]


def render(name: str, dirs: dict[str, Path], cache: dict[str, Any]) -> tuple[str | None, str]:
    """The table ``name`` as Markdown, or None and why it was skipped."""
    required, optional, fn = TABLES[name]
    kw: dict[str, Any] = {}
    for s in required:
        got = _load(s, dirs, cache)
        if isinstance(got, Path):
            return None, f"{got} not found"
        kw[s] = got
    for s in optional:
        got = _load(s, dirs, cache)
        if not isinstance(got, Path):
            kw[s] = got
    try:
        return fn(**kw), "rendered"
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as e:
        return None, f"{', '.join(SOURCES[s][1] for s in required)} lacks what it needs ({type(e).__name__}: {e})"


def rewrite(text: str, dirs: dict[str, Path], cache: dict[str, Any], log: Callable[[str], None]) -> str:
    """``text`` with every known table block re-rendered; unknown names raise KeyError."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}")
        body, why = render(name, dirs, cache)
        if body is None:
            log(f"skipped {name}: {why}")
            return m.group(0)
        new = body.strip("\n") + "\n"
        log(f"{'unchanged' if new == m.group('body') else 'updated'} {name}")
        return m.group(1) + new + m.group(4)

    return MARKER.sub(sub, text)


def default_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo", help="the demo's output directory (default %(default)s)")
    ap.add_argument("--bench", default="bench_results", help="the benchmarks' output directory (default %(default)s)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table would change")
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = ap.parse_args(argv)
    dirs = {"demo": Path(args.demo), "bench": Path(args.bench)}
    cache: dict[str, Any] = {}
    changed = []
    for path in args.files or default_files():
        text = path.read_text()
        try:
            new = rewrite(text, dirs, cache, lambda msg, p=path: print(f"{p}: {msg}"))
        except KeyError as e:
            print(f"{path}: error: {e.args[0]}", file=sys.stderr)
            return 2
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and changed:
        print("out of date: " + ", ".join(str(p) for p in changed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
