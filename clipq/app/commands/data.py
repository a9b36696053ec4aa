"""``clipq data``: draw the synthetic world (``synth``) or check a data directory (``check``)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``clipq data`` and its actions on the top-level subparsers."""
    p = sub.add_parser(
        "data",
        help="draw the synthetic world or check a data directory",
        description="Draw the embedded synthetic world, or read a (synthetic or real) data directory "
        "with the same readers training uses and report what it holds.",
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    actions.required = True

    s = actions.add_parser(
        "synth",
        help="draw the synthetic world (scenes, captions, COCO-QA questions, prompts, rendered words)",
        description="Write the synthetic world under --out. The same seed and size give byte-identical files.",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    s.add_argument("--seed", type=int, default=0, metavar="N", help="world seed (default 0)")
    s.add_argument("--size", choices=("small", "medium"), default="medium",
                   help="small: 250 scenes (tests); medium: 6000 scenes (the embedded default)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that draw the images (default: one per core for the medium world; "
                   "the files are the same for any N)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")

    c = actions.add_parser(
        "check",
        help="read a data directory and report its splits",
        description="Read every split of DIR with clipq's readers; malformed files are reported with "
        "file and line.",
    )
    c.add_argument("root", metavar="DIR", help="data directory (layout in docs/data.md)")
    c.add_argument("--no-image-check", action="store_true", help="do not require referenced images to exist")
    c.add_argument("--json", action="store_true", help="print the report as json")

    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``clipq data <action>``; returns the exit code."""
    if args.data_command == "synth":
        return _synth(args)
    return _check(args)


def _synth(args: argparse.Namespace) -> int:
    from clipq.world import generate_world

    summary = generate_world(args.out, seed=args.seed, size=args.size, progress=not args.no_progress,
                             workers=args.workers)
    print(f"world (seed {summary['seed']}, {summary['size']}) written to {args.out}")
    for split, n in summary["splits"].items():
        print(f"  {split:<5} {n['images']:>5} scenes  {n['captions']:>6} captions  "
              f"{n['questions']:>6} questions  {n['words']:>5} word images")
    return 0


def _check(args: argparse.Namespace) -> int:
    from clipq.readers import World

    world = World(args.root, check_images=not args.no_image_check)
    report = {}
    for name in world.splits:
        split = world.split(name)
        qtypes: dict[str, int] = {}
        for q in split.questions:
            qtypes[q.qtype] = qtypes.get(q.qtype, 0) + 1
        report[name] = {
            "images": len(split.image_ids),
            "captions": len(split.captions),
            "questions": len(split.questions),
            "question_types": qtypes,
            "prompts": len(split.prompts),
            "words": len(split.words),
        }
    if args.json:
        print(json.dumps({"root": str(world.root), "splits": report}, indent=2))
        return 0
    print(f"{world.root}: {len(report)} split(s)")
    for name, n in report.items():
        types = ", ".join(f"{k} {v}" for k, v in sorted(n["question_types"].items())) or "-"
        print(f"  {name:<5} {n['images']:>6} images  {n['captions']:>6} captions  {n['questions']:>6} questions "
              f"({types})  {n['prompts']:>6} prompts  {n['words']:>5} words")
    return 0
