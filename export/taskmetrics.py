"""Embedded-task metrics of exported graphs, measured through the runtime itself.

Cosine parity says a reduced-precision graph is close; these say it is close where it matters:
VQA accuracy, text -> image Recall@5 and image -> prompt mean cosine on the test split of the data
the models were trained on, computed with the graphs of a given variant and compared with fp32.
They go through ``clipq.runtime`` (preprocessing, tokenisation, OrtBackend), so they also check
that the variant works end to end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from clipq.runtime.backends.ort import OrtBackend
from clipq.runtime.errors import ParityError
from clipq.runtime.manifest import Manifest
from clipq.runtime.tasks import ClipEncoder, PromptEncoder, PromptRegressor, VqaModel

log = logging.getLogger(__name__)

#: metric -> largest allowed drop against fp32, in points (percent, or cosine x 100)
MAX_DROP = {"vqa_accuracy": 1.0, "recall@5": 1.0, "img2prompt_cos": 1.0}


def task_metrics(manifest: Manifest, data: str | os.PathLike[str], variants: Mapping[str, str], *,
                 limit: int = 200, threads: int | None = None, split: str = "test") -> dict[str, float]:
    """Measure the embedded-task metrics with the given graph variants.

    Args:
        manifest: The artifact manifest (in memory; the variants must be listed in it).
        data: A data directory (``clipq data synth`` layout, or real data in the same layout).
        variants: network -> variant to run ("fp32", "int8", "fp16").
        limit: Items per metric (the first ``limit`` of the split).
        threads: onnxruntime intra-op threads.
        split: Which split.

    Returns:
        Any of ``vqa_accuracy`` (%), ``recall@5`` (%), ``img2prompt_cos`` (mean cosine x 100) that
        the artifacts and data support.
    """
    from clipq.readers import World

    world = World(data, check_images=False)
    if split not in world.splits:
        return {}
    s = world.split(split)
    backend = OrtBackend(manifest, variant=dict(variants), threads=threads, providers=["CPUExecutionProvider"])
    out: dict[str, float] = {}
    try:
        models = manifest.models
        enc = ClipEncoder(backend) if "clip_image" in models else None
        if enc is not None and "clip_text" in models and s.captions:
            first: dict[str, str] = {}
            for c in s.captions:
                first.setdefault(c.image, c.text)
            ids = [i for i in s.image_ids if i in first][:limit]
            if ids:
                img = enc.encode_images([s.path_of(i) for i in ids])
                txt = enc.encode_texts([first[i] for i in ids])
                sim = txt @ img.T
                target = sim[np.arange(len(ids)), np.arange(len(ids))][:, None]
                rank = (sim > target).sum(1)
                out["recall@5"] = float((rank < 5).mean() * 100.0)
        if enc is not None and "vqa" in models and s.questions:
            qs = s.questions[:limit]
            uniq = sorted({q.image_id for q in qs})
            emb = dict(zip(uniq, enc.encode_images([s.path_of(i) for i in uniq])))
            vqa = VqaModel(backend, encoder=enc)
            answers = vqa.ask_embeds(np.stack([emb[q.image_id] for q in qs]), [q.question for q in qs], top_k=1)
            out["vqa_accuracy"] = float(np.mean([a.answer == q.answer for a, q in zip(answers, qs)]) * 100.0)
        if "img2prompt_a" in models and "prompt_text" in models and s.prompts:
            ids = [i for i in s.image_ids if i in s.prompts][:limit]
            if ids:
                pred = PromptRegressor(backend).predict([s.path_of(i) for i in ids])
                # the target is always fp32: only the graph under test changes
                ref_backend = OrtBackend(manifest, variant="fp32", threads=threads, providers=["CPUExecutionProvider"])
                truth = PromptEncoder(ref_backend).encode([s.prompts[i] for i in ids])
                ref_backend.close()
                out["img2prompt_cos"] = float((pred * truth).sum(1).mean() * 100.0)
    finally:
        backend.close()
    return out


def compare_task_metrics(fp32: Mapping[str, float], other: Mapping[str, float], variant: str,
                         *, raise_on_fail: bool = True) -> dict[str, Any]:
    """Differences of ``other`` against ``fp32``; raise when a metric drops more than allowed.

    Raises:
        ParityError: a metric is more than :data:`MAX_DROP` points below fp32.
    """
    deltas = {k: float(other[k] - fp32[k]) for k in fp32 if k in other}
    failed = {k: d for k, d in deltas.items() if -d > MAX_DROP.get(k, 1.0)}
    report = {"fp32": dict(fp32), variant: dict(other), "delta": deltas, "passed": not failed}
    if failed and raise_on_fail:
        detail = ", ".join(f"{k} {fp32[k]:.2f} -> {other[k]:.2f}" for k in failed)
        raise ParityError(f"{variant} graphs lose more than 1 point on the embedded tasks: {detail}")
    return report
