"""The end-to-end demo on the embedded default: data -> train -> eval -> export -> query -> index -> serve.

Each stage reads only what the previous one wrote (the artifact directory), prints what it
produced, and the demo ends with a table of stage timings.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ClipqError

#: the demo's training plan: the whole demo in under 10 minutes on 2 quiet CPU cores with bf16 units
#: (measured 2026-12-03 on a 2-core EPYC, seed 0, bf16, channels-last, before fused Adam and with
#: synthetic_ce at 800 steps: CLIP 700 steps 193 s, VQA's five variants 128 s, image -> prompt 57 s,
#: reading 138 s of which synthetic_ce 110 s, the whole demo 10 min 47 s: hence fused Adam and 500 steps;
#: docs/training.md#time). CLIP's hard batches are word groups: images whose captions differ only in the
#: shape word (the embedded world's captions; the library default stays image clusters, which need no
#: vocabulary): kind probe 41.6 -> 47.7 %, top-3 all right in kind 11.2 -> 21.2 %, R@1 72.8 -> 70.3 %.
#: They fill 3/4 of each batch from 30 % of the run (not half from half-way): kind probe 47.5 -> 51.5 %,
#: VQA V4 object 38.3 -> 43.3 %, R@1 69.4 -> 62.8 % (docs/training.md#kind-how-much-of-each-batch-from-when).
DEMO_TRAIN: dict[str, Any] = dict(clip_steps=700, questions_per_epoch=3500, vqa_batch_size=96, vqa_lr=1e-3,
                                  img2prompt_epochs=2, reading_steps=50,
                                  clip=dict(batch_mode="word_groups", group_vary="shape", cluster_size=8,
                                            hard_share=0.75, hard_start=0.3),
                                  reading=dict(ce_steps=500, ce_text_steps=200, ce_synthetic_factor=10.0))
#: the tasks the demo trains, in order (``baseline``: seed 003's dual encoder on CLIP's time budget)
DEMO_TASKS = ["clip", "vqa", "img2prompt", "reading"]


#: the least work a slower CPU's plan may give each trainer (``clipq.train.plan``): what keeps each
#: result's shape, measured (docs/training.md#the-training-plan). VQA's epochs and the reading row's
#: steps never shrink (at half of them V2 fell below V1 and reading stayed near chance); CLIP keeps at
#: least 450 of its 700 steps and image -> prompt one of its two epochs.
DEMO_FLOORS: dict[str, int] = dict(clip_steps=450, vqa_questions=3500, img2prompt_epochs=1, reading_ce_steps=500)

#: the demo's training budget (s): what the plan may spend so that the demo's stages stay within 10
#: minutes (the other stages took 88 s on the Zen 4 of the README's table, 47 s on a quiet Zen 5: 480 +
#: 88 s is 9.5 minutes; the Zen 4's calibrated CLIP step, about 0.22-0.25 s, gets 550-700 steps). CLIP times
#: its first 20 steps, the plan (steps per trainer, at least the floors) is decided from them once and
#: printed, and every trainer then runs exactly its planned steps; ``clipq demo --full`` trains the
#: whole plan whatever it takes. docs/training.md#the-training-plan
DEMO_TRAIN_SECONDS = 480.0


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
    full: bool = False  # train the whole plan, however long it takes (no CLIP budget)
    precision: str = "auto"  # every trainer: auto (bf16 where the CPU has bf16 units), fp32 or bf16


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _stage(ctx: DemoContext, name: str, fn: Callable[[DemoContext], Any]) -> Any:
    print(f"\n=== {name} ===", flush=True)
    load0 = _load()
    t0 = time.perf_counter()
    result = fn(ctx)
    ctx.timings[name] = round(time.perf_counter() - t0, 1)
    # the 1-minute load average before and after: timings on a shared machine mean little without it
    ctx.report.setdefault("load_avg_1min", {})[name] = [load0, _load()]
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
    from tqdm.auto import tqdm

    from clipq.train.pipeline import TrainSettings, train_tasks

    def show(plan) -> None:  # printed once, when CLIP's first steps have been timed
        for line in plan.lines(DEMO_TRAIN.get("vqa_batch_size", 96)):
            tqdm.write(line)

    budget = None if ctx.full else DEMO_TRAIN_SECONDS
    s = TrainSettings(preset="tiny", seed=ctx.seed, progress=ctx.progress, train_seconds=budget, floors=DEMO_FLOORS,
                      precision=ctx.precision, on_plan=show, **DEMO_TRAIN)
    res = train_tasks(str(ctx.data), str(ctx.artifacts), DEMO_TASKS, s)
    ctx.report["train"] = res
    ctx.report["plan"] = plan = res["plan"]
    ctx.report["precision"] = plan["precision"]
    took, pred = plan.get("seconds_by_trainer", {}), plan.get("predicted_by_trainer") or {}
    print("trainer seconds (plan's prediction): " + ", ".join(
        f"{k} {v:.0f}" + (f" ({pred[k]:.0f})" if k in pred else "") for k, v in took.items()))
    print(f"artifacts: {ctx.artifacts} (training took {res['seconds']} s)")


def stage_eval(ctx: DemoContext) -> None:
    from clipq.evaluate import evaluate, format_table

    res = evaluate(str(ctx.artifacts), str(ctx.data))
    ctx.report["eval"] = {k: v for k, v in res.items() if not k.startswith("_")}
    print(format_table(res))
    print(f"written: {res['_path']}")


def stage_export(ctx: DemoContext) -> None:
    from clipq.app.taskmetrics import export_options_for_data
    from clipq.export import ExportOptions, export_artifacts

    report = export_artifacts(ctx.artifacts, ExportOptions(int8=True, **export_options_for_data(ctx.data)))
    print(report.markdown())


def _test_items(ctx: DemoContext) -> tuple[list[str], list[Any]]:
    from clipq.readers import World

    split = World(ctx.data).split("test")
    return list(split.image_ids), list(split.image_paths)


def stage_query(ctx: DemoContext) -> None:
    """One query of each kind through the in-process runtime (onnxruntime, no torch)."""
    import clipq.runtime as rt

    ids, paths = _test_items(ctx)
    image = str(paths[0])
    backend = rt.connect(ctx.artifacts)
    try:
        clip = rt.ClipEncoder(backend)
        img = clip.encode_images([image])
        txt = clip.encode_texts(["two red circles on the left", "a blue star at the top"])
        print(f"clip_image {image}: {img.shape} (norm {float((img ** 2).sum()) ** 0.5:.3f}); "
              f"clip_text: {txt.shape}; image-text cosine {[round(float(x), 3) for x in (img @ txt.T)[0]]}")
        vqa = rt.VqaModel(backend)
        for q in ("what color are the shapes ?", "how many shapes are in the picture ?", "where are the shapes ?"):
            a = vqa.ask([image], [q], top_k=3)[0]
            print(f"ask {q!r}: {a.answer} ({a.prob:.2f}); top {[(t, round(p, 2)) for t, p in a.top]}")
        m = backend.manifest
        d = rt.ImageToPrompt(backend).describe([image])[0]
        print(f"describe: nearest known prompts {[(t, round(sc, 3)) for t, sc in d.closest]}")
        ctx.report["query"] = {"image": image, "vqa": a.to_dict(), "describe": d.closest}
        if "reading_image" in m.models:
            from clipq.readers import World

            words = World(ctx.data).split("test").words
            if words:
                w = words[0]
                r = rt.ReadingModel(backend).read([w.image_path], [w.question], top_k=3)[0]
                print(f"read {w.image_path} {w.question!r}: {r.answer} (truth {w.answers[0]!r}); "
                      f"top {[(t, round(sc, 3)) for t, sc in r.top]}")
                ctx.report["query"]["read"] = {**r.to_dict(), "truth": w.answers[0]}
    finally:
        backend.close()


def stage_index(ctx: DemoContext) -> None:
    """Index the test images, run three text searches and one image search, draw a contact sheet."""
    import clipq.runtime as rt
    from clipq.app.contact_sheet import contact_sheet
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch

    ids, paths = _test_items(ctx)
    backend = rt.connect(ctx.artifacts)
    try:
        clip = rt.ClipEncoder(backend)
        index = ImageIndex.from_images([str(p) for p in paths], clip, ids=ids,
                                       metadata=[{"path": str(p)} for p in paths], progress=ctx.progress)
        index_dir = index.save(ctx.out / "test.index")
        rep = index.recall_check(k=10)
        print(f"index: {len(index)} images -> {index_dir}; HNSW recall@10 vs exact {rep.recall:.3f}")
        search = ImageSearch(index, clip)
        queries = ["two red circles on the left", "a yellow star at the top", "four blue squares at the bottom"]
        results = search.search_many(queries, k=5)
        for q, r in zip(queries, results):
            print(f"search {q!r}: " + ", ".join(f"{x.id} ({x.score:.3f})" for x in r))
        sheet = contact_sheet(queries, results, ctx.out / "search_contact_sheet.png")
        print(f"contact sheet: {sheet}")
        check = _check_searches(ctx, queries, results, ids)
        for q, c in check.items():
            print(f"  {q!r}: top 3 right in kind, colour and count: {c['top3_right']} of 3 "
                  f"({c['possible']} possible: {c['in_index']} such images indexed)")
        ctx.report["index"] = {"path": str(index_dir), "recall@10": rep.recall,
                               "searches": {q: [x.id for x in r] for q, r in zip(queries, results)},
                               "searches_checked": check}
    finally:
        backend.close()


_QUERY_LABELS = {
    "two red circles on the left": ("circle", "red", 2, "left"),
    "a yellow star at the top": ("star", "yellow", 1, "top"),
    "four blue squares at the bottom": ("square", "blue", 4, "bottom"),
}


def _check_searches(ctx: DemoContext, queries: list[str], results: list, ids: list[str]) -> dict[str, dict]:
    """Whether each search's top results show what the query names (the world's own labels of the scene),
    and how many could: the indexed images whose main group has the query's kind, colour and count."""
    from clipq.world import render_scene

    def group(image_id: str) -> tuple:
        stream, _, num = str(image_id).rpartition("_")
        scene, _ = render_scene(ctx.seed, "test" if stream == "test" else "train", int(num))
        return scene.kind, scene.color, scene.count, scene.place

    indexed = {i: group(i) for i in ids}  # rendered once: the top 3 are looked up, not drawn again
    out = {}
    for q, r in zip(queries, results):
        want = _QUERY_LABELS.get(q)
        if want is None:
            continue
        got = []
        for x in r[:3]:
            g = indexed.get(x.id) or group(x.id)
            got.append({"id": x.id, "scene": list(g), "kind_color_count": g[:3] == want[:3], "place": g[3] == want[3]})
        n = sum(g[:3] == want[:3] for g in indexed.values())
        out[q] = {"top3_right": sum(g["kind_color_count"] for g in got), "in_index": n, "possible": min(3, n),
                  "top3_right_with_place": sum(g["kind_color_count"] and g["place"] for g in got), "top3": got}
    return out


def stage_serve(ctx: DemoContext) -> None:
    """Start tritonserver on the artifacts, one query of each kind through it, stop it."""
    from clipq.app.serve_roundtrip import serve_and_query

    _, paths = _test_items(ctx)
    ctx.report["serve"] = serve_and_query(ctx.artifacts, image=str(paths[0]),
                                          question="what color are the shapes ?", text="two red circles on the left")


STAGES: list[tuple[str, Callable[[DemoContext], Any]]] = [
    ("data", stage_data),
    ("train", stage_train),
    ("eval", stage_eval),
    ("export", stage_export),
    ("query", stage_query),
    ("index", stage_index),
    ("serve", stage_serve),
]


def run_demo(out: str | Path, *, seed: int = 0, size: str = "medium", progress: bool = True,
             stages: list[str] | None = None, full: bool = False, precision: str = "auto") -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``out/demo.json``).

    ``full``: train the whole plan (``DEMO_TRAIN``) however long it takes; by default training follows
    a plan that keeps to ``DEMO_TRAIN_SECONDS`` with every trainer at least at its floor (``DEMO_FLOORS``).
    ``precision``: ``fp32`` forces the fp32 path (no bf16 autocast) on any CPU, ``bf16`` the autocast;
    ``auto`` uses bf16 where the CPU has bf16 units. The plan and the precision go into ``demo.json``.

    Raises:
        ClipqError: an unknown stage or precision.
    """
    from clipq.runtime.manifest import atomic_write_json

    out = Path(out).resolve()
    ctx = DemoContext(out=out, data=out / "data", artifacts=out / "artifacts", seed=seed, size=size,
                      progress=progress, timings={}, report={"full_plan": full, "precision_asked": precision},
                      full=full, precision=precision)
    from clipq.train.common import resolve_precision

    resolve_precision(precision)  # an unknown name fails before any stage runs
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
