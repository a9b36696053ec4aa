"""`clipq eval`: every seed task's metric on the test split, as a table and JSON.

VQA accuracy (overall and per question type, V1-V4) is measured on the test split when each variant
finishes training and stored in the manifest; retrieval, image-to-prompt and reading are measured here
or copied from the trainers' records. Retrieval uses the runtime's template code (one home:
``clipq.runtime.templates``), the same that search serves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipq.models.export_wrappers import ClipImageTower
from clipq.models.io import load_clip, load_tokenizer
from clipq.runtime.manifest import Manifest, atomic_write_json

from .train.common import batched, encode_texts
from .train.data import load_split
from .train.recall import retrieval_rows


class _TorchTextEncoder:
    """CLIP's PyTorch text tower behind the runtime's ``encode_texts`` interface."""

    def __init__(self, clip, tok) -> None:
        self.clip, self.tok = clip, tok

    def encode_texts(self, texts, batch_size: int = 512) -> np.ndarray:
        return encode_texts(self.clip, self.tok, list(texts), batch_size)


def eval_retrieval(m: Manifest, data: str, split: str = "test") -> dict:
    """Text -> image Recall@K of CLIP (every row of :func:`retrieval_rows`), plus the dual-encoder baseline."""
    clip = load_clip(m).eval()
    tok = load_tokenizer(m, "clip")
    s = load_split(data, split, m.preprocessing["size"])
    img = batched(ClipImageTower(clip).eval(), s.pixels).numpy()
    out = retrieval_rows(_TorchTextEncoder(clip, tok), img, s.captions)
    if "dual_encoder" in m.checkpoints:
        from .train.baseline import eval_baseline

        out["baseline"] = eval_baseline(m, s)
    return out


def evaluate(artifacts: str, data: str, *, out_json: str | None = None) -> dict:
    """Run every evaluation that the artifacts support; write ``eval.json`` next to the manifest."""
    m = Manifest.load(artifacts)
    res: dict = {"retrieval": eval_retrieval(m, data)}
    for key in ("vqa", "img2prompt", "reading"):
        if key in m.metrics:
            res[key] = m.metrics[key]
    if "clip" in m.extra.get("training", {}):
        res["clip_training"] = m.extra["training"]["clip"]
    m.metrics["retrieval"] = res["retrieval"]
    m.save()
    path = Path(out_json) if out_json else m.root / "eval.json"
    atomic_write_json(path, res)
    res["_path"] = str(path)
    return res


def format_table(res: dict) -> str:
    lines = []
    if "vqa" in res:
        lines += ["VQA accuracy (%) on the test split (val in brackets)",
                  "| variant | overall | object | number | color | location |", "|---|---|---|---|---|---|"]
        for v in sorted(res["vqa"], key=lambda k: ("v1", "v2", "v3", "v2t", "v4").index(k) if k in
                        ("v1", "v2", "v3", "v2t", "v4") else 9):
            r = res["vqa"][v]
            val = f" ({r['val']['overall']:.1f})" if isinstance(r.get("val"), dict) else ""
            lines.append(f"| {v.upper()} | {r['overall']:.1f}{val} | " + " | ".join(
                f"{r.get(t, float('nan')):.1f}" for t in ("object", "number", "color", "location")) + " |")
        lines.append("")
    if "retrieval" in res:
        r = res["retrieval"]
        lines += [f"Text -> image retrieval ({r['queries']} test queries)", "| prompts | R@1 | R@5 | R@10 |",
                  "|---|---|---|---|"]
        rows = [("single", r["single"]), ("ensemble", r["ensemble"])]
        rows += [(f"template set {n!r}", v) for n, v in r.get("template_rows", {}).items()]
        rows += [(f"{n}, punctuation removed", v) for n, v in r.get("no_punctuation", {}).items()]
        rows += [(f"descriptions: {n}", v) for n, v in r.get("descriptions", {}).items() if isinstance(v, dict)]
        if "baseline" in r:
            rows.append(("dual-encoder baseline (seed 003)", r["baseline"]["single"]))
        for name, v in rows:
            lines.append(f"| {name} | " + " | ".join(f"{v[f'R@{k}']:.1f}" for k in (1, 5, 10)) + " |")
        lines.append("")
    if "img2prompt" in res:
        r = res["img2prompt"]
        lines += ["Image -> prompt embedding: mean cosine on the test split",
                  "| model | mean cosine |", "|---|---|",
                  f"| A (CLIP vision + head) | {r['A']:.4f} |", f"| B (KNN, K={r['k']}) | {r['B']:.4f} |",
                  f"| ensemble (alpha={r['alpha']}) | {r['ensemble']:.4f} |", ""]
    if "reading" in res and "zero_shot" in res["reading"]:
        r = res["reading"]
        lines += ["Reading (what is written?), accuracy % on the test words", "| row | accuracy % |", "|---|---|"]
        for name, row in r.get("rows", {}).items():
            lines.append(f"| {name} | {row['test']:.1f} |")
        lines += [f"| chance ({r['candidates']} candidates) | {r['chance']:.1f} |", ""]
    return "\n".join(lines)


def dumps(res: dict) -> str:
    return json.dumps({k: v for k, v in res.items() if not k.startswith("_")}, indent=2)
