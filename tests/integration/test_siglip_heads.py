"""Heads on a SigLIP backbone: a short training run of CLIP fine-tuning, the VQA mapper and Model A
from a SigLIP checkpoint (``--pretrained``), exported with parity, served by the runtime.

SigLIP has no projections (its pooled outputs are the embeddings); the heads read the same
``image_features`` / embedding width as on a CLIP. After fine-tuning, the manifest's sigmoid scale
and bias are the saved model's own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _require import require_module

torch = require_module("torch")
require_module("transformers")
require_module("sentencepiece")

import _siglip  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_heads_train_and_export_on_a_siglip_backbone(small_world, tmp_path):
    import clipq.runtime as rt
    from clipq.export import ExportOptions, export_artifacts
    from clipq.export.quantize import DYNAMIC
    from clipq.models.io import load_clip
    from clipq.runtime.manifest import Manifest
    from clipq.train.pipeline import TrainSettings, train_tasks

    src = _siglip.save_siglip(tmp_path / "ckpt", seed=3)
    out = tmp_path / "art"
    s = TrainSettings(
        preset="test",
        pretrained=str(src),
        clip_steps=2,
        batch_size=16,
        questions_per_epoch=32,
        img2prompt_epochs=1,
        vqa_variants=("v2",),
        threads=2,
        progress=False,
    )
    train_tasks(str(small_world), str(out), ["clip", "vqa", "img2prompt"], s)
    m = Manifest.load(out)
    assert m.extra["family"] == "siglip" and m.dims["clip_embed"] == 32
    clip = load_clip(m)
    assert type(clip).__name__ == "SiglipModel"
    assert m.extra["scores"]["logit_scale"] == pytest.approx(
        math.exp(float(clip.logit_scale.detach())), rel=1e-6
    )
    assert {"vqa_v2", "img2prompt_a"} <= set(m.checkpoints)

    rep = export_artifacts(
        out,
        ExportOptions(
            int8=False,
            int8_recipes=(DYNAMIC,),
            parity_batches=(1, 4),
            networks=["clip_image", "clip_text", "vqa", "img2prompt_a"],
        ),
    )
    for n in ("clip_image", "clip_text", "vqa", "img2prompt_a"):
        assert rep.networks[n].parity["fp32"]["passed"], n

    img = _siglip.photos(2, seed=9)
    b = rt.connect(out, threads=2)
    try:
        answers = rt.VqaModel(b).ask(img, ["what color is the circle?"] * 2, top_k=3)
        assert len(answers) == 2 and all(a.answer in m.answer_vocab for a in answers)
        pred = rt.PromptRegressor(b).predict(img)
        assert pred.shape == (2, 384) and np.allclose(np.linalg.norm(pred, axis=1), 1, atol=1e-5)
        enc = rt.ClipEncoder(b)
        assert enc.pair_score.kind == "sigmoid"
        sc = enc.scores(enc.encode_images(img), enc.encode_texts(["a red circle", "two blue squares"]))
        assert sc.shape == (2, 2) and ((sc > 0) & (sc < 1)).all()
    finally:
        b.close()
