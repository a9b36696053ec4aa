#!/usr/bin/env python3
"""Rewrite the measured tables of README.md and docs/*.md from the JSON that produced them.

    python docs/tables.py --demo runs/demo --bench bench_results [--check] [FILE ...]

A generated table sits between two markers in the Markdown::

    <!-- table:NAME -->
    | ... |
    <!-- /table:NAME -->

and this script replaces what is between them with the table rendered from the JSON (see
``TABLES`` for the names and the file each one reads). ``make demo`` writes ``runs/demo/demo.json``,
``runs/demo/artifacts/eval.json`` and ``manifest.json``; ``clipq bench --target T`` writes
``bench_results/T.json``. A table whose JSON is missing (or lacks the keys it needs) is left as it
is and reported as skipped. With ``--check`` nothing is written and the exit status is 1 when a
table would change. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

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

MARKER = re.compile(r"^(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)^(<!-- /table:(?P=name) -->)$", re.S | re.M)


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
#: the embedded default measured on main before issue 12 (seed 0, `make demo`), for the headline's
#: "before" column: retrieval R@1/5/10, VQA overall, image -> prompt mean cosine, reading accuracy
BEFORE = {"single": "5.6 / 26.8 / 43.9", "ensemble": "5.9 / 27.2 / 43.9", "v1": "29.6", "v2": "35.6",
          "v3": "36.8", "v4": "37.5", "A": "0.778", "B": "0.795", "ensemble_i2p": "0.795",
          "reading": "1.0 / 3.3 / 2.5"}
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
                     BEFORE.get(v, "-"), VQA_PAPER.get(v, "-")])
    r = eval["retrieval"]
    labels = _retrieval_labels(r)
    for name in ("single", "ensemble"):
        rows.append([f"text -> image, {labels[name]}", "R@1 / R@5 / R@10 %", _r_at(r[name]), BEFORE[name], "-"])
    if "baseline" in r:
        rows.append(["text -> image, seed 003's dual encoder (BERT + ResNet), same budget", "R@1 / R@5 / R@10 %",
                     _r_at(r["baseline"]["single"]), "-", "-"])
    p = eval["img2prompt"]
    rows += [["image -> prompt, Model A", "mean cosine", f"{p['A']:.4f}", BEFORE["A"], "-"],
             [f"image -> prompt, Model B (KNN, K = {p['k']})", "mean cosine", f"{p['B']:.4f}", BEFORE["B"], "-"],
             [f"image -> prompt, ensemble (alpha = {p['alpha']:g})", "mean cosine", f"{p['ensemble']:.4f}",
              BEFORE["ensemble_i2p"], "-"]]
    rd = eval["reading"]
    ft = rd.get("fine_tuned")
    best = rd.get("fine_tuned_row", "naive")
    r_best = rd.get("rows", {}).get(best, {})
    steps = r_best.get("steps", rd["steps"])  # synthetic_ce has its own steps, in two stages
    steps = f"{steps} + {r_best['text_steps']}" if r_best.get("text_steps") else steps
    rows.append([f"reading: zero-shot / fine-tuned ({best}, {steps} steps) / "
                 f"chance, {rd['candidates']} candidates", "accuracy %",
                 f"{rd['zero_shot']:.1f} / {'-' if ft is None else f'{ft:.1f}'} / {rd['chance']:.1f}",
                 BEFORE["reading"], "-"])
    return md(["task", "metric", "clipq", "before (main, issue 12)", "paper"], rows)


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


# -- benchmarks (bench_results/<target>.json) ------------------------------------------------------
MODEL_ENGINES = ("pytorch_eager", "optimum_ort", "ort_default", "clipq_fp32", "clipq_opt", "clipq_int8")


@table("bench_models", "models")
def bench_models(models: dict[str, Any]) -> str:
    idx = {(r["network"], r["engine"], r["batch"]): r for r in models["results"]}
    keys = list(dict.fromkeys((r["network"], r["batch"]) for r in models["results"]))
    rows = []
    for net, b in keys:
        got = {e: idx.get((net, e, b)) for e in MODEL_ENGINES}
        cells = [f"{got[e]['p50_ms']:.0f}" if got[e] else "n/a" for e in MODEL_ENGINES]
        i8, ort, pt = got["clipq_int8"], got["ort_default"], got["pytorch_eager"]
        cells.append(f"**{i8['items_per_s'] / ort['items_per_s']:.2f}**" if i8 and ort else "-")
        cells.append(f"{i8['items_per_s'] / pt['items_per_s']:.2f}" if i8 and pt else "-")
        cells.append(f"{i8['cos_vs_fp32']:.5f}" if i8 and "cos_vs_fp32" in i8 else "-")
        rows.append([net, b, *cells])
    header = ["network", "batch", "PyTorch eager", "optimum ORTModel", "plain ORT fp32", "clipq fp32",
              "clipq optimised", "clipq int8", "int8 x ORT fp32", "int8 x PyTorch", "int8 cos vs fp32"]
    return md(header, rows, ["---"] + ["---:"] * (len(header) - 1))


PEER_LABELS = {"pytorch_eager": "PyTorch eager", "torch_bf16": "torch bf16 autocast", "torch_compile": "torch.compile",
               "optimum_ort": "optimum ORTModel", "ort_default": "plain ORT fp32", "ort_optimum_int8": "ORT int8 (optimum)",
               "ov_plain": "OpenVINO (plain ONNX)", "ov_nncf_int8": "OpenVINO + NNCF int8", "clipq_fp32": "clipq fp32",
               "clipq_opt": "clipq optimised", "clipq_int8": "clipq int8 (ORT)", "clipq_default": "clipq default"}


def _machine_line(models: dict[str, Any]) -> str:
    m, c = models["machine"], models["config"]
    flags = ", ".join(f for f, on in (m.get("flags") or {}).items() if on) or "-"
    load = ", ".join(f"{x:.1f}" for x in m.get("load_average", ())) or "?"
    return (f"{m.get('cpu', '?')} [{flags}], {m.get('topology', '')}; {c['threads']} threads per engine, "
            f"{c.get('isolation', 'one process')}; load average at the end {load}.")


@table("bench_models_peers", "models")
def bench_models_peers(models: dict[str, Any]) -> str:
    idx = {(r["network"], r["engine"], r["batch"]): r for r in models["results"]}
    keys = list(dict.fromkeys((r["network"], r["batch"]) for r in models["results"]))
    best = models["best_peer"]
    rows = []
    for net, b in keys:
        ort, d = idx.get((net, "ort_default", b)), idx.get((net, "clipq_default", b))
        top_name = best.get(net, {}).get(str(b))
        top = idx.get((net, top_name, b))
        if not (ort and d and top):
            continue
        tops = f"{d['tops']:.3f} ({d['pct_of_peak']:.1f} % of {d['precision']})" if d.get("pct_of_peak") else "-"
        rows.append([net, b, f"{ort['items_per_s']:.1f}", f"{PEER_LABELS.get(top_name, top_name)} {top['items_per_s']:.1f}",
                     f"`{d.get('choice', '?')}` {d['items_per_s']:.1f}", f"{d['items_per_s'] / ort['items_per_s']:.2f}",
                     f"**{d['items_per_s'] / top['items_per_s']:.2f}**", f"{d['cos_vs_fp32']:.5f}" if "cos_vs_fp32" in d else "-",
                     tops])
    if not rows:
        raise KeyError("clipq_default rows")
    header = ["network", "batch", "plain ORT fp32 items/s", "best peer items/s", "clipq default items/s",
              "default x ORT fp32", "default x best peer", "default cos vs fp32", "default TOPS"]
    return _machine_line(models) + "\n\n" + md(header, rows, ["---", "---:"] + ["---:"] * (len(header) - 2))


@table("bench_models_engines", "models")
def bench_models_engines(models: dict[str, Any]) -> str:
    idx = {(r["network"], r["engine"], r["batch"]): r for r in models["results"]}
    keys = list(dict.fromkeys((r["network"], r["batch"]) for r in models["results"]))
    engines = [e for e in PEER_LABELS if any(r["engine"] == e for r in models["results"])]
    rows = [[net, b, *(f"{idx[(net, e, b)]['items_per_s']:.1f}" if (net, e, b) in idx else "n/a" for e in engines)]
            for net, b in keys]
    return md(["network", "batch", *(PEER_LABELS[e] for e in engines)], rows, ["---", "---:"] + ["---:"] * len(engines))


def _cell(cells: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((c for c in cells if all(c.get(k) == v for k, v in kw.items())), None)


TRITON_LABELS = {"clip_image": "`clip_image` (tensors in)", "embed_image": "`embed_image` (JPEG bytes in)",
                 "embed_text": "`embed_text` (text in)"}


@table("bench_triton_latency", "triton")
def bench_triton_latency(triton: dict[str, Any]) -> str:
    lat = [c for c in triton["cells"] if c.get("phase") == "latency"]
    if not lat:
        raise KeyError("latency cells")
    rows = []
    for t in triton["setup"]["targets"]:
        i, g, h = (_cell(lat, target=t, mode=m) for m in ("in-process", "grpc", "http"))
        ms = [f"{c['p50_ms']:.1f} ms" if c else "-" for c in (i, g, h)]
        note = "-"
        if t == "embed_image" and g and _cell(lat, target="clip_image", mode="grpc"):
            base = _cell(lat, target="clip_image", mode="grpc")
            over = g["p50_ms"] / base["p50_ms"] - 1
            note = f"{pct(over)} over `clip_image` on gRPC (target 20 %: {'met' if over <= 0.20 else 'not met'})"
        elif g and i:
            over = g["p50_ms"] / i["p50_ms"] - 1
            note = f"**{pct(over)}** (target 5 %: {'met' if over <= 0.05 else 'not met'})" if t == "clip_image" else pct(over)
        rows.append([TRITON_LABELS.get(t, f"`{t}`"), *ms, note])
    return md(["target", "in-process", "Triton gRPC", "Triton HTTP", "gRPC over in-process"], rows)


@table("bench_triton_ceiling", "triton")
def bench_triton_ceiling(triton: dict[str, Any]) -> str:
    ceiling = triton["batching_ceiling"]
    if not ceiling:
        raise KeyError("batching_ceiling")
    sizes = list(ceiling[0]["ms_per_item"])
    rows = [[f"`{r['network']}`", *(f"{r['ms_per_item'][b]:.1f}" for b in sizes),
             f"{max(r['speedup_vs_batch1'].values()):.2f}x"] for r in ceiling]
    return md(["network", *(f"batch {b}" for b in sizes), "best speed-up"], rows)


@table("bench_triton_batching", "triton")
def bench_triton_batching(triton: dict[str, Any]) -> str:
    runs = triton["perf_analyzer"]["runs"]
    conc = triton["setup"]["concurrency"]
    lo, hi = min(conc), max(conc)
    grid = [c for c in triton["cells"] if c.get("phase", "grid") == "grid"]
    rows = []
    for model in ("clip_image", "embed_text"):
        rps = {c: runs.get(f"{model}_c{c}", {}).get("throughput_rps") for c in conc}
        if not any(rps.values()):
            continue
        ratio = rps[hi] / rps[lo] if rps[hi] and rps[lo] else None
        ratio_s = "-" if ratio is None else (f"**{ratio:.2f}x**" if ratio >= 1.3 else f"{ratio:.2f}x")
        srv = _cell(grid, target=model, mode="grpc", concurrency=hi, batching="on")
        batch = f"{srv['server_avg_batch']:.1f}" if srv and srv.get("server_avg_batch") else "-"
        rows.append([f"`{model}`", *(f"{rps[c]:.1f} req/s" if rps[c] else "-" for c in conc), ratio_s, batch])
    if not rows:
        raise KeyError("perf_analyzer runs")
    return md(["model", *(f"c={c}" for c in conc), f"c={hi} / c={lo}", f"average server batch at c={hi}"], rows)


INDEX_LIBS = ("hnswlib", "clipq", "faiss", "usearch")


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


@table("bench_index", "index")
def bench_index(index: dict[str, Any]) -> str:
    c, m, ex = index["config"], index["machine"], index["exact"]
    rounds = ", ".join(f"{v:.0f}" for v in ex.get("qps_1t_rounds", []))
    lines = [
        f"{index['date']}; {m['cpu']}, {m['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in index["versions"].items()),
        f"{c['clusters']} clusters of unit vectors, {c['queries']} held-out queries, M={c['M']}, "
        f"ef_construction={c['ef_construction']}, best of {c['repeats']} runs. Exact numpy (batched matmul): "
        f"{ex['qps_1t']:.0f} QPS on 1 thread, {ex['qps_mt']:.0f} on {c['threads']} at the start; re-measured in each "
        f"ef's round ({rounds} QPS), and 'x exact' divides by the figure of the same round.",
        "",
    ]

    def exact_for(r: dict[str, Any]) -> float:
        return float(r.get("exact_qps_1t_same_window") or ex["qps_1t"])

    order = sorted(index["rows"], key=lambda r: (INDEX_LIBS.index(r["lib"]) if r["lib"] in INDEX_LIBS else 99, r["ef"]))
    lines.append(md(["library", "ef", f"recall@{c['k']}", "QPS 1 thread", "x exact", f"QPS {c['threads']} threads"],
                    [[r["lib"], r["ef"], f"{r['recall']:.4f}", f"{r['qps_1t']:,.0f}", f"{r['qps_1t'] / exact_for(r):,.0f}",
                      f"{r['qps_mt']:,.0f}"] for r in order]))
    lines += ["", md(["library", "build (s)", "resident memory per vector (B)"],
                     [[n, f"{b['build_s']:.1f}", f"{b['bytes_per_vector']:.0f}"] for n, b in index["builds"].items()])]
    pq = index.get("per_query_qps_ef64") or {}
    if pq:
        lines += ["", "One query per call, ef=64, 1 thread: " + ", ".join(f"{k} {v:,.0f} QPS" for k, v in pq.items()) + "."]
    p = index.get("persist") or {}
    if p:
        lines.append(f"clipq save {p['save_s']:.2f} s, load (sha256 verified) {p['load_s']:.2f} s, {p['file_mb']:.0f} MB "
                     f"on disk; ef after load {p['ef_after_load']}.")
    t = index.get("targets") or {}
    rows = []
    if "speedup_at_recall" in t:
        s = t["speedup_at_recall"]
        rows.append([s["target"], f"{s['speedup']:.0f}x at ef={s['ef']} (recall {s['recall']:.4f})", _yes(s["pass"])])
    if "wrapper_overhead_batch" in t:
        w = t["wrapper_overhead_batch"]
        per = ", ".join(f"{ef}: {v:+.0%}" for ef, v in w["per_ef"].items())
        rows.append([f"clipq over raw hnswlib, batched, {w['target']}", f"median {w['median']:+.1%} ({per})", _yes(w["pass"])])
    if "wrapper_overhead_one_query" in t:
        w = t["wrapper_overhead_one_query"]
        rows.append([f"clipq over raw hnswlib, one query per call, {w['target']}", f"{w['overhead']:+.1%}", _yes(w["pass"])])
    if "save_load" in t:
        s = t["save_load"]
        rows.append([f"save and load {s['target']}", f"{s['save_s']:.2f} s / {s['load_s']:.2f} s", _yes(s["pass"])])
    if rows:
        lines += ["", md(["target", "measured", "pass"], rows)]
    return "\n".join(lines)


# -- rewriting ---------------------------------------------------------------------------------------
def _load(source: str, dirs: dict[str, Path], cache: dict[str, Any]) -> Any:
    if source not in cache:
        opt, rel = SOURCES[source]
        path = dirs[opt] / rel
        cache[source] = json.loads(path.read_text()) if path.is_file() else path
    return cache[source]


def render(name: str, dirs: dict[str, Path], cache: dict[str, Any]) -> tuple[str | None, str]:
    """The table ``name`` as Markdown, or None and why it was skipped."""
    required, optional, fn = TABLES[name]
    kw: dict[str, Any] = {}
    for s in required:
        got = _load(s, dirs, cache)
        if isinstance(got, Path):
            return None, f"{got} not found"
        kw[s] = got
    for s in optional:
        got = _load(s, dirs, cache)
        if not isinstance(got, Path):
            kw[s] = got
    try:
        return fn(**kw), "rendered"
    except (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError) as e:
        return None, f"{', '.join(SOURCES[s][1] for s in required)} lacks what it needs ({type(e).__name__}: {e})"


def rewrite(text: str, dirs: dict[str, Path], cache: dict[str, Any], log: Callable[[str], None]) -> str:
    """``text`` with every known table block re-rendered; unknown names raise KeyError."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(TABLES))}")
        body, why = render(name, dirs, cache)
        if body is None:
            log(f"skipped {name}: {why}")
            return m.group(0)
        new = body.strip("\n") + "\n"
        log(f"{'unchanged' if new == m.group('body') else 'updated'} {name}")
        return m.group(1) + new + m.group(4)

    return MARKER.sub(sub, text)


def default_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo", help="the demo's output directory (default %(default)s)")
    ap.add_argument("--bench", default="bench_results", help="the benchmarks' output directory (default %(default)s)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table would change")
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = ap.parse_args(argv)
    dirs = {"demo": Path(args.demo), "bench": Path(args.bench)}
    cache: dict[str, Any] = {}
    changed = []
    for path in args.files or default_files():
        text = path.read_text()
        try:
            new = rewrite(text, dirs, cache, lambda msg, p=path: print(f"{p}: {msg}"))
        except KeyError as e:
            print(f"{path}: error: {e.args[0]}", file=sys.stderr)
            return 2
        if new != text:
            changed.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and changed:
        print("out of date: " + ", ".join(str(p) for p in changed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
