"""``clipq tune-engines ARTIFACTS [--threads N] [--batches 1,8,32]``: re-measure each network's CPU default here.

Times every passing (engine, variant) of each network — onnxruntime fp32 / int8, OpenVINO IR / NNCF
int8 — each engine in its own process, in alternating rounds, and records the fastest with this
machine's CPU model and ISA flags in the manifest (``spec.meta["cpu_default"]``), which
``clipq.runtime.connect(artifacts)`` then opens. Run it on a deployment host whose CPU differs from
the export machine's (``connect`` says so in a warning). Torch-free.
"""

from __future__ import annotations

import argparse
from typing import Any


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_parser(subparsers: Any) -> None:
    from clipq.app.cliutil import default_artifacts_arg

    p = subparsers.add_parser(
        "tune-engines", help="time every engine/variant per network here and record the fastest as the CPU default",
        description=__doc__.splitlines()[0].split(": ", 1)[-1],
    )
    p.add_argument("artifacts", nargs="?", default=default_artifacts_arg(),
                   help="artifact directory (default: $CLIPQ_ARTIFACTS or %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads of every engine (default: every core)")
    p.add_argument("--batches", type=_ints, default=None, help="comma-separated batch sizes (default 1,8,largest served)")
    p.add_argument("--networks", default=None, help="comma-separated subset (default: every network with a graph)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.export.selection import markdown, select_engines
    from clipq.runtime.backends.common import cpu_facts, flags_text
    from clipq.runtime.manifest import Manifest

    m = Manifest.load(args.artifacts)
    records = select_engines(m, args.networks.split(",") if args.networks else None, threads=args.threads,
                             batches=args.batches, rounds=args.rounds)
    if args.json:
        from clipq.app.cliutil import print_json

        print_json(records)
        return 0
    facts = cpu_facts(args.threads)
    print(f"measured on {facts['cpu']} [{flags_text(facts['flags'])}], {facts['threads']} threads\n")
    print(markdown(records))
    print(f"CPU defaults written to {m.root / 'manifest.json'}")
    return 0
