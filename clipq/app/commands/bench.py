"""`clipq bench --target models|triton|index|app|embed|ingest|all`: benchmarks that print and save tables."""

from __future__ import annotations

import argparse
import importlib

TARGETS = ("models", "triton", "index", "app", "embed", "ingest")


def _module(target: str):
    return importlib.import_module(f"clipq.app.bench.{target}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: exported models, Triton serving, HNSW index")
    p.add_argument("--target", default="models", choices=[*TARGETS, "all"])
    p.add_argument("--out", default="bench_results", help="directory for <target>.json/.md/.png")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (checks the outputs)")
    p.add_argument("--perf-analyzer", action="store_true", help="also run Triton's perf_analyzer (triton target)")
    seen: set[str] = {"--out", "--quick", "--target", "--perf-analyzer"}
    for t in TARGETS:  # each target adds its own options; shared names are registered once
        try:
            mod = _module(t)
        except ModuleNotFoundError:
            continue
        group = p.add_argument_group(f"{t} options")
        _Dedup(group, seen).apply(mod.add_arguments)
    p.set_defaults(func=run)


class _Dedup:
    """Lets every bench module declare its options without clashing with another's."""

    def __init__(self, group, seen: set[str]):
        self.group, self.seen = group, seen

    def add_argument(self, *names, **kw):
        if any(n in self.seen for n in names if n.startswith("-")):
            return None
        self.seen.update(n for n in names if n.startswith("-"))
        return self.group.add_argument(*names, **kw)

    def apply(self, fn) -> None:
        fn(self)


def run(args: argparse.Namespace) -> int:
    targets = TARGETS if args.target == "all" else (args.target,)
    rc = 0
    for t in targets:
        try:
            mod = _module(t)
        except ModuleNotFoundError as e:
            print(f"bench target {t!r} is not available: {e}")
            rc = rc or 2
            continue
        rc = mod.run(args) or rc
    return rc
