"""`clipq eval`: every seed task's metric on the test split, as a table and JSON.

VQA accuracy (overall and per question type, V1-V4) is measured on the test split when each variant
finishes training and stored in the manifest; retrieval, image-to-prompt and reading are measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipq.models.export_wrappers import ClipImageTower
from clipq.models.io import load_clip, load_tokenizer
from clipq.runtime.manifest import Manifest, atomic_write_json
from clipq.runtime.metrics import recall_at_k
from clipq.runtime.templates import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, embed_texts

from .train.common import batched, encode_texts
from .train.data import load_split


class _TorchTextEncoder:
    """CLIP's PyTorch text tower behind the runtime's ``encode_texts`` interface."""

    def __init__(self, clip, tok) -> None:
        self.clip, self.tok = clip, tok

    def encode_texts(self, texts, batch_size: int = 512) -> np.ndarray:
        return encode_texts(self.clip, self.tok, list(texts), batch_size)


def eval_retrieval(m: Manifest, data: str, split: str = "test") -> dict:
    """Text -> image Recall@1/5/10: each test image's first caption as the query."""
    clip = load_clip(m).eval()
    tok = load_tokenizer(m, "clip")
    s = load_split(data, split, m.preprocessing["size"])
    keep = [i for i, c in enumerate(s.captions) if c]
    queries = [s.captions[i][0] for i in keep]
    img = batched(ClipImageTower(clip).eval(), s.pixels).numpy()
    out = {}
    text = _TorchTextEncoder(clip, tok)
    for name, templates in (("single", (SINGLE_TEMPLATE,)), ("ensemble", DEFAULT_TEMPLATES)):
        q = embed_texts(text, queries, templates)
        r = recall_at_k(q @ img.T, np.array(keep))
        out[name] = {f"R@{k}": v for k, v in r.items()}
    out["queries"] = len(queries)
    out["templates"] = {"single": SINGLE_TEMPLATE, "ensemble": list(DEFAULT_TEMPLATES)}
    return out


def evaluate(artifacts: str, data: str, *, out_json: str | None = None) -> dict:
    """Run every evaluation that the artifacts support; write ``eval.json`` next to the manifest."""
    m = Manifest.load(artifacts)
    res: dict = {"retrieval": eval_retrieval(m, data)}
    for key in ("vqa", "img2prompt", "reading"):
        if key in m.metrics:
            res[key] = m.metrics[key]
    m.metrics["retrieval"] = res["retrieval"]
    m.save()
    path = Path(out_json) if out_json else m.root / "eval.json"
    atomic_write_json(path, res)
    res["_path"] = str(path)
    return res


def format_table(res: dict) -> str:
    lines = []
    if "vqa" in res:
        lines += ["VQA accuracy (%) on the test split",
                  "| variant | overall | object | number | color | location |", "|---|---|---|---|---|---|"]
        for v in sorted(res["vqa"]):
            r = res["vqa"][v]
            lines.append(f"| {v.upper()} | {r['overall']:.1f} | " + " | ".join(
                f"{r.get(t, float('nan')):.1f}" for t in ("object", "number", "color", "location")) + " |")
        lines.append("")
    if "retrieval" in res:
        r = res["retrieval"]
        lines += [f"Text -> image retrieval ({r['queries']} test queries)", "| prompts | R@1 | R@5 | R@10 |",
                  "|---|---|---|---|"]
        for name in ("single", "ensemble"):
            lines.append(f"| {name} | " + " | ".join(f"{r[name][f'R@{k}']:.1f}" for k in (1, 5, 10)) + " |")
        lines.append("")
    if "img2prompt" in res:
        r = res["img2prompt"]
        lines += ["Image -> prompt embedding: mean cosine on the test split",
                  "| model | mean cosine |", "|---|---|",
                  f"| A (CLIP vision + head) | {r['A']:.4f} |", f"| B (KNN, K={r['k']}) | {r['B']:.4f} |",
                  f"| ensemble (alpha={r['alpha']}) | {r['ensemble']:.4f} |", ""]
    if "reading" in res and "zero_shot" in res["reading"]:
        r = res["reading"]
        lines += ["Reading (what is written?), accuracy %", "| zero-shot | fine-tuned | chance |", "|---|---|---|",
                  f"| {r['zero_shot']:.1f} | {r['fine_tuned']:.1f} | {r['chance']:.1f} |", ""]
    return "\n".join(lines)


def dumps(res: dict) -> str:
    return json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2)
