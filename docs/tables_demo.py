"""The tables of the demo's results: evaluation (``artifacts/eval.json``), stages (``demo.json``) and
export (``artifacts/manifest.json``). Registered in ``TABLES`` on import; ``docs/tables.py`` runs them.
"""

from __future__ import annotations

from typing import Any

from tables_base import md, secs, table

# -- the demo: evaluation (artifacts/eval.json) ---------------------------------------------------
VQA_LABELS = {
    "v1": "V1 (no mapper, LM frozen, 1 epoch)",
    "v2": "V2 (mapper, LM frozen, 1 epoch)",
    "v3": "V3 (V2 + 1 epoch, LM unfrozen)",
    "v2t": "V2 + as long as V3's epoch took, LM frozen (equal-time control)",
    "v4": "V4 (V3 + 1 more epoch)",
}
VQA_ORDER = ("v1", "v2", "v3", "v2t", "v4")
#: CLIQQA's COCO-QA accuracy per variant: the seed paper's own figures
VQA_PAPER = {"v1": "28.8", "v2": "51.3", "v3": "55.0", "v4": "62.5"}
QTYPES = ("object", "number", "color", "location")
WEIGHTING = {"inverse_distance": "inverse distance", "softmax": "softmax", "uniform": "uniform"}
LM_NAMES = {"minilm": "the pretrained all-MiniLM-L6-v2 (BertModel), not DistilBERT",
            "distilbert-base": "DistilBertModel (distilbert-base-uncased shapes)", "distilbert-tiny": "a toy DistilBERT"}


def _vqa_order(vqa: dict[str, Any]) -> list[str]:
    return sorted(vqa, key=lambda v: (VQA_ORDER.index(v) if v in VQA_ORDER else 99, v))


def _retrieval_labels(r: dict[str, Any]) -> dict[str, str]:
    t = r.get("templates", {})
    single = t.get("single", "a photo of {}")
    n = len(t.get("ensemble", [])) or "several"
    return {"single": f'one template ("{single}")', "ensemble": f"ensemble of {n} templates"}


def _r_at(r: dict[str, Any]) -> str:
    return " / ".join(f"{r[f'R@{k}']:.1f}" for k in (1, 5, 10))


@table("headline", "eval")
def headline(eval: dict[str, Any]) -> str:
    rows = []
    for v in _vqa_order(eval["vqa"]):
        rows.append([f"VQA {VQA_LABELS.get(v, v.upper())}", "accuracy %", f"{eval['vqa'][v]['overall']:.1f}",
                     VQA_PAPER.get(v, "-")])
    r = eval["retrieval"]
    labels = _retrieval_labels(r)
    for name in ("single", "ensemble"):
        rows.append([f"text -> image, {labels[name]}", "R@1 / R@5 / R@10 %", _r_at(r[name]), "-"])
    if "baseline" in r:
        rows.append(["text -> image, seed 003's dual encoder (BERT + ResNet), same budget", "R@1 / R@5 / R@10 %",
                     _r_at(r["baseline"]["single"]), "-"])
    p = eval["img2prompt"]
    rows += [["image -> prompt, Model A", "mean cosine", f"{p['A']:.4f}", "-"],
             [f"image -> prompt, Model B (KNN, K = {p['k']})", "mean cosine", f"{p['B']:.4f}", "-"],
             [f"image -> prompt, ensemble (alpha = {p['alpha']:g})", "mean cosine", f"{p['ensemble']:.4f}", "-"]]
    rd = eval["reading"]
    ft = rd.get("fine_tuned")
    best = rd.get("fine_tuned_row", "naive")
    r_best = rd.get("rows", {}).get(best, {})
    steps = r_best.get("steps", rd["steps"])  # synthetic_ce has its own steps, in two stages
    steps = f"{steps} + {r_best['text_steps']}" if r_best.get("text_steps") else steps
    rows.append([f"reading: zero-shot / fine-tuned ({best}, {steps} steps) / "
                 f"chance, {rd['candidates']} candidates", "accuracy %",
                 f"{rd['zero_shot']:.1f} / {'-' if ft is None else f'{ft:.1f}'} / {rd['chance']:.1f}", "-"])
    return md(["task", "metric", "clipq", "paper"], rows)


@table("vqa", "eval")
def vqa(eval: dict[str, Any]) -> str:
    rows = []
    for v in _vqa_order(eval["vqa"]):
        r = eval["vqa"][v]
        val = r.get("val", {}).get("overall") if isinstance(r.get("val"), dict) else None
        rows.append([VQA_LABELS.get(v, v.upper()), f"{r['overall']:.1f}",
                     *(f"{r[t]:.1f}" if t in r else "-" for t in QTYPES),
                     "-" if val is None else f"{val:.1f}", f"{r['train_seconds']:.0f}" if "train_seconds" in r else "-"])
    return md(["variant", "overall", *QTYPES, "val overall", "training s"], rows)


@table("vqa_setup", "eval", optional=("manifest",))
def vqa_setup(eval: dict[str, Any], manifest: dict[str, Any] | None = None) -> str:
    extra = ((manifest or {}).get("extra", {}) or {}).get("vqa", {})
    lm = extra.get("lm") or eval["vqa_setup"]["lm"]
    best = extra.get("export_variant", "?")
    on = extra.get("export_variant_chosen_on", "val")
    rows = [["language model", LM_NAMES.get(lm, lm)],
            ["exported default", f"{VQA_LABELS.get(best, best)}: best overall on **{on}**"],
            ["precision", extra.get("precision", "fp32")]]
    return md(["VQA setting", "value"], rows)


@table("retrieval", "eval")
def retrieval(eval: dict[str, Any]) -> str:
    r = eval["retrieval"]
    labels = _retrieval_labels(r)
    labels["ensemble"] += " (mean of normalised embeddings)"
    rows = [[labels[n], *(f"{r[n][f'R@{k}']:.1f}" for k in (1, 5, 10))] for n in ("single", "ensemble")]
    return md(["prompts", "R@1", "R@5", "R@10"], rows)


TEMPLATE_LABELS = {"none": "no template (the caption as it is)", "a photo of": '"a photo of {}"',
                   "this is": '"this is {}"', "mixed": "mixed start phrases (the default ensemble)"}


@table("retrieval_rows", "eval")
def retrieval_rows(eval: dict[str, Any]) -> str:
    r = eval["retrieval"]
    rows = [[TEMPLATE_LABELS.get(n, n), "CLIP", _r_at(v)] for n, v in r["template_rows"].items()]
    for n, v in r["no_punctuation"].items():
        rows.append([f"{_retrieval_labels(r)[n]}, punctuation removed", "CLIP", _r_at(v)])
    d = r["descriptions"]
    per = d.get("captions_per_image", "?")
    rows += [["first caption only (one template)", "CLIP", _r_at(d["first"])],
             [f"description averaging: mean of the {per} captions' embeddings", "CLIP", _r_at(d["mean_of_captions"])],
             [f"full description: the {per} captions joined into one text (truncated at the tokenizer's length)", "CLIP",
              _r_at(d["joined"])]]
    b = r.get("baseline")
    if b:
        rows += [[TEMPLATE_LABELS.get(n, n), "dual encoder (seed 003)", _r_at(v)] for n, v in b["template_rows"].items()]
        rows.append(["description averaging", "dual encoder (seed 003)", _r_at(b["descriptions"]["mean_of_captions"])])
    return md(["query", "model", "R@1 / R@5 / R@10 %"], rows)


@table("baseline", "eval")
def baseline(eval: dict[str, Any]) -> str:
    b = eval["retrieval"]["baseline"]
    t, c = b.get("training") or {}, eval.get("clip_training") or {}
    rows = [["CLIP (ResNet image tower + CLIP text transformer, tiny preset)", _r_at(eval["retrieval"]["single"]), c.get("steps", "-"),
             secs(c["seconds"]) if "seconds" in c else "-"],
            ["dual encoder: BertModel (mean pooling) + ResNetModel, linear projections", _r_at(b["single"]),
             t.get("steps", "-"), secs(t["seconds"]) if "seconds" in t else "-"]]
    return md(["model", "R@1 / R@5 / R@10 % (one template)", "steps", "training s"], rows)


@table("clip_training", "eval")
def clip_training(eval: dict[str, Any]) -> str:
    c = eval["clip_training"]
    cfg = c.get("config", {})
    curve = c.get("loss_curve", [])
    marks = [curve[round(i * (len(curve) - 1) / 4)] for i in range(5)] if curve else []
    rows = [["steps x batch", f"{c['steps']} x {c['batch_size']}"], ["precision", c.get("precision", "fp32")],
            ["threads", c.get("threads", "-")], ["seconds (steps/s)", f"{secs(c['seconds'])} ({c.get('steps_per_s', '-')})"],
            ["learning rate, warm-up", f"{cfg.get('lr', '-')}, {cfg.get('warmup', '-')} steps"],
            ["hard negatives", (f"{cfg.get('batch_mode')} fill {cfg.get('hard_share', 0.5):.0%} of each batch from "
                                f"{cfg.get('hard_start')} of the run; swapped captions "
                                f"for {cfg.get('text_negatives', 0):.0%} of rows") if c.get("hard_negatives") else "none"],
            ["loss (step: value)", ", ".join(f"{x['step']}: {x['loss']:.2f}" for x in marks)]]
    return md(["CLIP training", "value"], rows)


@table("img2prompt", "eval", optional=("manifest",))
def img2prompt(eval: dict[str, Any], manifest: dict[str, Any] | None = None) -> str:
    p = eval["img2prompt"]
    w = ((manifest or {}).get("extra", {}).get("img2prompt", {}) or {}).get("weighting")
    b = f"B (KNN, K = {p['k']}" + (f", {WEIGHTING.get(w, w)})" if w else ")")
    rows = [["A (CLIP vision + FC1/LN/FC2/LN)", f"{p['A']:.4f}"], [b, f"{p['B']:.4f}"],
            [f"ensemble (alpha = {p['alpha']:g})", f"{p['ensemble']:.4f}"]]
    return md(["model", "mean cosine"], rows)


@table("img2prompt_filter", "eval")
def img2prompt_filter(eval: dict[str, Any]) -> str:
    f = eval["img2prompt"]["filter"]
    rows = []
    for r in f["sweep"]:
        th = "off" if r["threshold"] is None else f"{r['threshold']:.3f}"
        if r["threshold"] == f["threshold"]:
            th = f"**{th}**"
        wrong = f"{r['wrong_dropped']:.0%} / {r['right_dropped']:.0%}" if "wrong_dropped" in r else "-"
        v, t = r["val"], r["test"]
        rows.append([th, f"{r['kept_share']:.0%}", wrong, f"{v['ensemble']:.4f}",
                     f"{t['A_head']:.4f}", f"{t['B']:.4f}", f"{t['ensemble']:.4f}"])
    return md(["threshold", "pairs kept", "mismatched / true pairs dropped", "val: A(head) + B",
               "test: A (head only)", "test: B (K = 10)", "test: A(head) + B (alpha 0.5)"], rows)


@table("img2prompt_sweep", "eval")
def img2prompt_sweep(eval: dict[str, Any]) -> str:
    s = eval["img2prompt"]["sweep_val"]
    cell = {(r["k"], r["alpha"]): r["score"] for r in s["rows"]}
    alphas = sorted({a for _, a in cell})
    ks = sorted({k for k, _ in cell})
    best = (s["best"]["k"], s["best"]["alpha"])
    rows = []
    for k in ks:
        vals = []
        for a in alphas:
            v = cell.get((k, a))
            text = "-" if v is None else f"{v:.4f}"
            vals.append(f"**{text}**" if (k, a) == best else text)
        rows.append([k, *vals])
    return md(["K \\ alpha", *(f"{a:g}" for a in alphas)], rows)


READING_LABELS = {"zero_shot": "zero-shot", "zero_shot_crops": "zero-shot, best of crops",
                  "naive": "naive fine-tune", "hard_images": "hard negatives: similar images",
                  "hard_texts": "hard negatives: similar answer texts", "hard_both": "hard negatives: both",
                  "synthetic": "fine-tune on the synthetic-word set",
                  "synthetic_ce": "world + synthetic words, cross-entropy over every candidate (image tower to "
                                  "candidate anchors, then the text tower to the anchors)",
                  "crops": "best fine-tune, best of crops"}


@table("reading", "eval")
def reading(eval: dict[str, Any]) -> str:
    r = eval["reading"]
    if "rows" not in r:
        return md(["candidate words", "test images", "zero-shot %", "fine-tuned %", "fine-tune steps", "chance %"],
                  [[r["candidates"], f"{r['test_items']:,}", f"{r['zero_shot']:.1f}", f"{r['fine_tuned']:.1f}",
                    r["steps"], f"{r['chance']:.1f}"]])
    sizes = sorted({int(k) for row in r["rows"].values() for k in row.get("by_list_size", {})})
    rows = []
    for name, row in r["rows"].items():
        label = READING_LABELS.get(name, name) + (f" ({READING_LABELS.get(row['of'], row['of'])})" if "of" in row else "")
        if name == r.get("fine_tuned_row"):
            label = f"**{label}** (exported)"
        by = row.get("by_list_size", {})
        rows.append([label, row.get("images", "-"), f"{row['test']:.1f}",
                     "-" if row.get("val") is None else f"{row['val']:.1f}",
                     *(f"{by[str(k)]:.1f}" if str(k) in by else (f"{by[k]:.1f}" if k in by else "-") for k in sizes)])
    rows.append([f"chance ({r['candidates']} candidates)", "-", f"{r['chance']:.1f}", f"{r['chance']:.1f}",
                 *(f"{100 / k:.1f}" for k in sizes)])
    return md(["row", "training images", f"test % ({r['test_items']} images, {r['candidates']} candidates)", "val %",
               *(f"test %, {k} candidates" for k in sizes)], rows)


# -- the demo: stages (demo.json) and export (artifacts/manifest.json) ----------------------------
STAGE_LABELS = {"data": "data", "train": "train", "eval": "eval", "export": "export",
                "query": "in-process queries", "index": "index + searches", "serve": "Triton serve + queries"}


@table("demo_timings", "demo")
def demo_timings(demo: dict[str, Any]) -> str:
    t, tr = demo["timings_s"], demo.get("train", {})
    parts = []
    if "clip" in tr:
        parts.append(f"CLIP {tr['clip']['seconds']:.0f}")
    if "vqa" in tr:
        vs = sorted(tr["vqa"])
        parts.append(f"VQA {vs[0].upper()}-{vs[-1].upper()} " + " + ".join(f"{tr['vqa'][v]['seconds']:.0f}" for v in vs))
    for key, label in (("img2prompt", "image -> prompt"), ("reading", "reading")):
        if isinstance(tr.get(key), dict) and "seconds" in tr[key]:
            parts.append(f"{label} {tr[key]['seconds']:.0f}")
    rows = []
    for stage, s in t.items():
        cell = secs(s) + (f" ({', '.join(parts)})" if stage == "train" and parts else "")
        rows.append([STAGE_LABELS.get(stage, stage), cell])
    return md(["stage", "seconds"], rows)


@table("demo_serve", "demo")
def demo_serve(demo: dict[str, Any]) -> str:
    s = demo["serve"]
    q = s["queries"]
    rows = [["tritonserver ready", f"{s['startup_s']:.1f} s, {len(s['models'])} models"]]
    if "cosine_vs_in_process" in q.get("embed_image", {}):
        rows.append(["`embed_image` against in-process", f"cosine {q['embed_image']['cosine_vs_in_process']:.6f}"])
    if "answer" in q.get("ask", {}):
        rows.append(["`ask`", f"{q['ask']['answer']} (p = {q['ask']['prob']:.3f})"])
    rows.append(["batch-1 latency", ", ".join(f"{name} {v['ms']:.1f} ms" for name, v in q.items())])
    return md(["what", "measured"], rows)


RECIPES = {"dynamic": "dynamic", "dynamic_per_channel": "dynamic, per-channel",
           "dynamic_per_channel_ffn_fp32": "dynamic, per-channel, MLP out fp32", "static_qdq": "static QDQ"}


@table("export_parity", "manifest")
def export_parity(manifest: dict[str, Any]) -> str:
    rows = []
    for name, spec in manifest["models"].items():
        par = spec.get("parity", {})
        if "fp32" not in par:
            continue
        fp32 = f"{par['fp32']['max_abs']:.1e} / {par['fp32']['min_cos']:.6f}"
        i8 = par.get("int8")
        timing = spec.get("meta", {}).get("export", {}).get("timing_ms", {})
        if not i8 or "min_cos" not in i8:
            rows.append([name, fp32, "-", "-"])
            continue
        if spec.get("default_variant") == "int8":
            why = RECIPES.get(i8.get("recipe"), i8.get("recipe", "?"))
        elif i8.get("batch_invariant") is False:
            inv = (i8.get("batch_invariance") or {}).get("max_rel", float("nan"))
            why = f"{RECIPES.get(i8.get('recipe'), i8.get('recipe', '?'))}; opt-in only: moves {100 * inv:.1f} % with its batch"
        elif not i8.get("meets_target", True):
            why = f"not adopted: below {i8.get('target_min_cos', '?'):g}"
        else:
            why = f"{RECIPES.get(i8.get('recipe'), i8.get('recipe', '?'))}; not the default: not faster"
        ms = f"{timing['fp32']:.1f} -> {timing['int8']:.1f}" if "fp32" in timing and "int8" in timing else "-"
        rows.append([name, fp32, f"{i8['min_cos']:.6f} ({why})", ms])
    return md(["network", "fp32 max abs diff / min cos", "int8 min cos (recipe)", "p50 ms fp32 -> int8"], rows)


TASK_LABELS = {"recall@5": "Recall@5", "vqa_accuracy": "VQA accuracy", "img2prompt_cos": "img2prompt mean cosine (x100)"}


@table("export_tasks", "manifest")
def export_tasks(manifest: dict[str, Any]) -> str:
    tm = manifest["extra"]["export"]["task_metrics"]
    variants = [v for v in tm if v != "delta"]
    if not variants:
        raise KeyError("task_metrics")
    names = [k for k in TASK_LABELS if k in tm["fp32"]] + [k for k in tm["fp32"] if k not in TASK_LABELS]
    rows = [[TASK_LABELS.get(n, n), *(f"{tm[v][n]:.1f}" if n in tm[v] else "-" for v in variants)] for n in names]
    return md(["embedded task (export's own check)", *variants], rows)
