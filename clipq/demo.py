"""The end-to-end demo on the embedded default: data -> train -> eval -> export -> query -> index -> serve.

Each stage reads only what the previous one wrote (the artifact directory), prints what it
produced, and the demo ends with a table of stage timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ClipqError

#: the demo's training budget: data + all training in well under 10 minutes on 2 CPU cores
DEMO_TRAIN = dict(clip_steps=600, questions_per_epoch=4000, img2prompt_epochs=3, reading_steps=120)


@dataclass
class DemoContext:
    out: Path
    data: Path
    artifacts: Path
    seed: int
    size: str
    progress: bool
    timings: dict[str, float]
    report: dict[str, Any]


def _stage(ctx: DemoContext, name: str, fn: Callable[[DemoContext], Any]) -> Any:
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    result = fn(ctx)
    ctx.timings[name] = round(time.perf_counter() - t0, 1)
    print(f"--- {name}: {ctx.timings[name]} s", flush=True)
    return result


def stage_data(ctx: DemoContext) -> None:
    from clipq.world import generate_world

    info = json.loads((ctx.data / "world.json").read_text()) if (ctx.data / "world.json").is_file() else None
    if info and info.get("seed") == ctx.seed and info.get("size") == ctx.size:
        print(f"world already at {ctx.data} (seed {ctx.seed}, {ctx.size}); reusing it")
        return
    summary = generate_world(ctx.data, seed=ctx.seed, size=ctx.size, progress=ctx.progress)
    for split, c in summary["splits"].items():
        print(f"{split:5s}: {c['images']} scenes, {c['captions']} captions, {c['questions']} questions, {c['words']} word images")
    print(f"samples: {ctx.data / 'samples.png'}")


def stage_train(ctx: DemoContext) -> None:
    from clipq.train.pipeline import TrainSettings, train_tasks

    s = TrainSettings(preset="tiny", seed=ctx.seed, progress=ctx.progress, **DEMO_TRAIN)
    res = train_tasks(str(ctx.data), str(ctx.artifacts), ["clip", "vqa", "img2prompt", "reading"], s)
    ctx.report["train"] = res
    print(f"artifacts: {ctx.artifacts} (training took {res['seconds']} s)")


def stage_eval(ctx: DemoContext) -> None:
    from clipq.evaluate import evaluate, format_table

    res = evaluate(str(ctx.artifacts), str(ctx.data))
    ctx.report["eval"] = {k: v for k, v in res.items() if not k.startswith("_")}
    print(format_table(res))
    print(f"written: {res['_path']}")


STAGES: list[tuple[str, Callable[[DemoContext], Any]]] = [
    ("data", stage_data),
    ("train", stage_train),
    ("eval", stage_eval),
]


def run_demo(out: str | Path, *, seed: int = 0, size: str = "medium", progress: bool = True,
             stages: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``out/demo.json``)."""
    from clipq.runtime.manifest import atomic_write_json

    out = Path(out)
    ctx = DemoContext(out=out, data=out / "data", artifacts=out / "artifacts", seed=seed, size=size,
                      progress=progress, timings={}, report={})
    known = [n for n, _ in STAGES]
    for s in stages or []:
        if s not in known:
            raise ClipqError(f"unknown demo stage {s!r}; stages: {', '.join(known)}")
    for name, fn in STAGES:
        if stages and name not in stages:
            continue
        _stage(ctx, name, fn)
    ctx.report["timings_s"] = ctx.timings
    atomic_write_json(out / "demo.json", ctx.report)
    print("\n=== stage timings (s) ===")
    for k, v in ctx.timings.items():
        print(f"{k:>10s}: {v}")
    print(f"report: {out / 'demo.json'}")
    return ctx.report
