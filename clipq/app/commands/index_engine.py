"""The engine options of ``clipq index build`` and the build-time recall self-check.

``--engine {auto,hnswlib,sq8,sq4,ivfpq}`` picks the index engine
(:mod:`clipq.runtime.index.engines`); ``auto`` decides from the collection's size and
``--memory-budget``. Every build ends with a recall self-check against exact search on sampled
queries, recorded in the index's sidecar and shown by ``clipq index info``.

Only stdlib at import time; the runtime loads inside the functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_engine_args(b: Any) -> None:
    """``--engine``, ``--memory-budget``, ``--nprobe``, ``--rescore``, ``--recall-queries`` on ``index build``."""
    b.add_argument("--engine", default="auto", choices=("auto", "hnswlib", "sq8", "sq4", "ivfpq"),
                   help="index engine: hnswlib (float32 HNSW), sq8 / sq4 (faiss HNSW over 8- / 4-bit codes, "
                        "floats memory-mapped for rescoring), ivfpq (faiss IVF-PQ, larger than memory), or auto "
                        "(by size and --memory-budget; default)")
    b.add_argument("--memory-budget", default=None,
                   help="memory the index may use, for --engine auto (8G, 512M; default: half of this machine's)")
    b.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query, ivfpq (default %(default)s)")
    b.add_argument("--rescore", type=int, default=50,
                   help="candidates re-ranked by their float score, sq8/sq4/ivfpq (default %(default)s)")
    b.add_argument("--recall-queries", type=int, default=200,
                   help="queries of the build's recall self-check against exact search (0: skip)")


def count_images(paths: list[str]) -> int:
    """Image files among ``paths`` (folders searched recursively): the size hint for ``--engine auto``."""
    from clipq.runtime.index import list_images

    return sum(len(list_images(p)) if Path(p).is_dir() else 1 for p in paths)


def engine_kwargs(args: argparse.Namespace, n_hint: int) -> dict[str, Any]:
    """``ImageIndex`` keyword arguments from the options, for about ``n_hint`` items.

    Raises:
        InvalidInputError: an unreadable ``--memory-budget``.
    """
    from clipq.runtime.index.engines import parse_bytes

    engine = getattr(args, "engine", "hnswlib") or "hnswlib"
    budget = getattr(args, "memory_budget", None)
    return {
        "engine": engine,
        "memory_budget": None if budget is None else parse_bytes(budget),
        "nprobe": getattr(args, "nprobe", 32),
        "rescore": getattr(args, "rescore", 50),
        "capacity": max(int(n_hint), 16),
    }


def check_build(index: Any, args: argparse.Namespace) -> None:
    """Run the recall self-check (unless ``--recall-queries 0``); ``index.save`` records it."""
    n = int(getattr(args, "recall_queries", 200) or 0)
    if n > 0 and len(index) >= 2:
        index.check_build(k=min(10, len(index)), n_queries=min(n, len(index)))


def describe(info: dict[str, Any]) -> list[str]:
    """Lines of ``clipq index info`` about the engine and the build's recall self-check."""
    eng = info.get("engine") or {"name": "hnswlib"}
    extra = ", ".join(f"{k} {v}" for k, v in eng.items() if k != "name")
    lines = [f"  engine {eng['name']}" + (f" ({extra})" if extra else "")]
    r = info.get("build_recall")
    if r:
        lines.append(
            f"  build recall@{r['k']} {r['recall']:.4f} (min {r['min_recall']:.2f}) on {r['n_queries']} sampled "
            f"queries against exact search, at ef {r['ef']}"
            + (f", nprobe {r['nprobe']}, rescore {r['rescore']}" if r.get("rescore") is not None else "")
        )
    return lines
