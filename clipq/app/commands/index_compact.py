"""``clipq index project``: shorter embeddings, a PCA fitted on the index's collection (issue 30).

Registered under ``clipq index`` by :mod:`clipq.app.commands.index`. Only stdlib at import time.
"""

from __future__ import annotations

import argparse
from typing import Any

from clipq.app.cliutil import print_json


def add_parsers(sub: Any) -> None:
    """Add ``project`` to the ``clipq index`` subcommands."""
    p = sub.add_parser(
        "project", help="write a copy of an index with shorter vectors (a PCA fitted on its collection)",
        description="Fits a projection on the index's vectors, writes the projected index and its "
                    "projection.npz to OUT. Search, `clipq index add` and the app's /v1/embeddings "
                    "(`dimensions`) apply the same projection to every query and new image.",
    )
    p.add_argument("index", help="the index to project (left as it was)")
    p.add_argument("--dimensions", type=int, required=True, help="dimension of the projected vectors")
    p.add_argument("-o", "--out", required=True, help="directory of the projected index")
    p.add_argument("--center", action="store_true",
                   help="subtract the collection's mean first (default: no, which keeps inner products best)")
    p.add_argument("--force", action="store_true", help="replace an index at OUT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_project)


def run_project(args: argparse.Namespace) -> int:
    from clipq.runtime.compact import project_index

    index, proj = project_index(args.index, args.out, args.dimensions, center=args.center, force=args.force)
    out = {"action": "projected", "index": args.out, "source": args.index, "from_dim": proj.in_dim,
           "dim": proj.dim, "kept": round(proj.kept, 4), "fingerprint": proj.fingerprint, **index.info()}
    if args.json:
        print_json(out)
    else:
        print(f"projected: {args.index} -> {args.out}: {len(index)} vectors, {proj.in_dim} -> {proj.dim} dimensions, "
              f"{100 * proj.kept:.1f} % of the collection's second moment kept")
    return 0
