"""What every table module of ``docs/tables.py`` shares: the JSON sources, the table registry and
the Markdown formatting. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: source name -> (option, path under that option's directory)
SOURCES = {
    "demo": ("demo", "demo.json"),
    "eval": ("demo", "artifacts/eval.json"),
    "manifest": ("demo", "artifacts/manifest.json"),
    "models": ("bench", "models.json"),
    "triton": ("bench", "triton.json"),
    "index": ("bench", "index.json"),
}

#: name -> (required sources, optional sources, renderer)
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[..., str]]] = {}



def table(name: str, *sources: str, optional: tuple[str, ...] = ()) -> Callable[[Callable[..., str]], Callable[..., str]]:
    def deco(fn: Callable[..., str]) -> Callable[..., str]:
        TABLES[name] = (sources, optional, fn)
        return fn

    return deco


def md(header: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    sep = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(x: float) -> str:
    """A relative difference as a signed percentage: one decimal below 10 %, none above."""
    v = x * 100
    return f"{v:+.1f} %" if abs(v) < 10 else f"{v:+.0f} %"


def secs(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"
