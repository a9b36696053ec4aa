"""`clipq train clip|baseline|vqa|img2prompt|reading|all`."""

from __future__ import annotations

import argparse
import json


def _threshold(text: str) -> float | str:
    t = text.strip().lower()
    if t in ("auto", "none"):
        return t
    if t == "off":
        return "none"
    try:
        return float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine, 'auto' or 'none', got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the embedded world or real data")
    p.add_argument("task", choices=["clip", "baseline", "vqa", "img2prompt", "reading", "all"],
                   help="all = clip, vqa, img2prompt, reading (baseline: seed 003's dual encoder, on its own)")
    p.add_argument("--data", required=True, help="dataset root (e.g. from `clipq data synth`)")
    p.add_argument("--out", "--artifacts", dest="out", required=True, help="artifact directory")
    p.add_argument("--preset", default="tiny", help="model preset: tiny (default), base, test")
    p.add_argument("--pretrained", default=None, help="local CLIP checkpoint (save_pretrained directory)")
    p.add_argument("--lm-pretrained", default=None, help="local language-model checkpoint for VQA")
    p.add_argument("--variant", default="all",
                   help="VQA variant(s): v1..v4, v2t (the equal-time control), comma-separated, or all")
    p.add_argument("--steps", type=int, default=None, help="CLIP training steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--no-hard-negatives", action="store_true",
                   help="CLIP: random batches and no word-swapped captions")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast where the CPU has AVX512-BF16 or AMX, else fp32")
    p.add_argument("--questions-per-epoch", type=int, default=None, help="VQA: cap per epoch (time budget)")
    p.add_argument("--vqa-lr", type=float, default=None,
                   help="VQA mapper/head learning rate (paper: 1e-4; the demo uses 1e-3 for its 20x smaller data)")
    p.add_argument("--filter-threshold", type=_threshold, default=None,
                   help="img2prompt: CLIP cosine filter: a cosine, 'auto' (best of the sweep on val, the "
                        "default) or 'none'")
    p.add_argument("--reading-steps", type=int, default=None, help="reading: fine-tune steps per row")
    p.add_argument("--baseline-seconds", type=float, default=None,
                   help="baseline: wall-clock budget (default: CLIP's training time, from this run or recorded in the artifacts)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.train.pipeline import TrainSettings, train_tasks

    s = TrainSettings(
        preset=args.preset, pretrained=args.pretrained, lm_pretrained=args.lm_pretrained,
        clip_steps=args.steps, batch_size=args.batch_size, hard_negatives=not args.no_hard_negatives,
        precision=args.precision, vqa_variants=None if args.variant == "all" else args.variant.split(","),
        questions_per_epoch=args.questions_per_epoch, vqa_lr=args.vqa_lr,
        filter_threshold={None: "unset", "none": None}.get(args.filter_threshold, args.filter_threshold),
        reading_steps=args.reading_steps, baseline_seconds=args.baseline_seconds,
        threads=args.threads, seed=args.seed, progress=not args.quiet,
    )
    tasks = ["clip", "vqa", "img2prompt", "reading"] if args.task == "all" else [args.task]
    out = train_tasks(args.data, args.out, tasks, s)
    print(json.dumps(out, indent=2, default=str))
    return 0
