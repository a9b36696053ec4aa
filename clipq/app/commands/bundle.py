"""`clipq bundle ARTIFACTS OUT`: the minimal deployable directory (no PyTorch checkpoints)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle", help="write the deploy bundle: graphs, tokenizers, preprocessing, KNN database (no torch weights)",
        description="Copy what the runtime and `clipq serve` read (every file the manifest lists except "
                    "checkpoints/), hash-checked, with a manifest that no longer lists the checkpoints.",
    )
    p.add_argument("artifacts", help="artifact directory (from `clipq train`+`export` or `clipq import`)")
    p.add_argument("out", help="bundle directory to create (must not exist or be empty)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.app.cliutil import print_json
    from clipq.runtime.manifest import Manifest

    src = Manifest.load(args.artifacts, need="all")
    b = src.bundle(args.out)
    info = {"bundle": str(b.root), "files": b.extra["bundle"]["files"], "bytes": b.extra["bundle"]["bytes"],
            "source_bytes": int(sum(int(i.get("size", 0)) for i in src.files.values())),
            "networks": sorted(n for n, s in b.models.items() if s.file)}
    if args.json:
        print_json(info)
    else:
        print(f"bundle {info['bundle']}: {info['files']} files, {info['bytes'] / 1e6:.1f} MB "
              f"(artifacts {info['source_bytes'] / 1e6:.1f} MB); networks: {', '.join(info['networks'])}")
    return 0
