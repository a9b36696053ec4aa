"""`clipq import` of SigLIP and fixed-resolution SigLIP 2 checkpoints, checked against transformers itself.

The torch-free runtime (SigLIP's squash resize, the tokenizer converted at import, padding to 64, the
exported graphs) must give the embeddings ``SiglipModel.get_*_features`` gives on the checkpoint's own
processor and tokenizer outputs, at the batch sizes the graphs serve; and the scores must be SigLIP's
``sigmoid(logit_scale * cos + logit_bias)``, the model's own ``logits_per_image`` through a sigmoid.
"""

from __future__ import annotations

import numpy as np
import pytest
from _require import require_module

torch = require_module("torch")
transformers = require_module("transformers")
require_module("sentencepiece")

import _siglip  # noqa: E402

from clipq.app.importer import import_checkpoint  # noqa: E402
from clipq.models.factory import UnsupportedModelError  # noqa: E402
from clipq.runtime.errors import InvalidTextError  # noqa: E402
from clipq.runtime.manifest import Manifest  # noqa: E402

KINDS = ("siglip", "siglip2")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """kind -> (checkpoint, artifacts): each imported once, with int8 (onnxruntime only: faster here)."""
    out = {}
    for kind in KINDS:
        root = tmp_path_factory.mktemp(kind)
        src = _siglip.save_siglip(root / "ckpt", kind=kind, seed=1 if kind == "siglip" else 2)
        rep = import_checkpoint(src, root / "art", int8=True, openvino=False, threads=2)
        assert rep.networks == ["clip_image", "clip_text"]
        out[kind] = (src, rep.artifacts)
    return out


def _encoder(art, variant="fp32"):
    import clipq.runtime as rt

    b = rt.connect(art, threads=2, variant=variant)
    return b, rt.ClipEncoder(b)


@pytest.mark.parametrize("kind", KINDS)
def test_manifest_records_what_siglip_needs(imported, kind):
    src, art = imported[kind]
    m = Manifest.load(art)
    assert m.extra["family"] == kind
    assert m.extra["scores"]["kind"] == "sigmoid"
    assert m.extra["scores"]["logit_scale"] == pytest.approx(10.0, rel=1e-5)
    assert m.extra["scores"]["logit_bias"] == pytest.approx(-2.0, rel=1e-5)
    tok = m.tokenizers["clip"]
    assert (tok["max_length"], tok["padding"], tok["attention_mask"]) == (64, "max_length", False)
    assert tok["kind"] == ("siglip" if kind == "siglip" else "gemma")
    pp = m.preprocessing
    assert (pp["resize"], pp["resample"], pp["mean"], pp["std"], pp["size"]) == (
        "squash",
        "bilinear",
        [0.5] * 3,
        [0.5] * 3,
        32,
    )
    assert m.dims["clip_embed"] == 32
    for n in ("clip_image", "clip_text"):
        spec = m.model(n)
        assert spec.parity["fp32"]["passed"] and spec.parity["fp32"]["min_cos"] >= 0.99999
        # the served batch sizes: 1, 8 and the largest
        assert set(spec.parity["fp32"]["batches"]) == {"1", "8", str(spec.max_batch_size)}
        assert spec.parity["int8"]["min_cos"] >= 0.99  # every kept int8 graph passed the reduced gate


@pytest.mark.parametrize("kind", KINDS)
def test_runtime_matches_transformers_at_served_batches(imported, kind):
    src, art = imported[kind]
    b, enc = _encoder(art)
    try:
        for n in (1, 8, 32):
            images = _siglip.photos(n, seed=n)
            want, _, _, _ = _siglip.reference(src, images, ["x"])
            got = enc.encode_images(images, batch_size=n)
            assert (got * want).sum(1).min() >= 0.99999, n
        for n in (1, 8, 64):
            texts = _siglip.texts(n, seed=n)
            _, want, _, _ = _siglip.reference(src, _siglip.photos(1), texts)
            got = enc.encode_texts(texts, batch_size=n)
            assert (got * want).sum(1).min() >= 0.99999, n
    finally:
        b.close()


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_siglips_sigmoid(imported, kind):
    """ClipEncoder.scores and classify give sigmoid(logits_per_image) of transformers' SiglipModel."""
    src, art = imported[kind]
    images, texts = _siglip.photos(5, seed=3), _siglip.texts(6, seed=4)
    model = transformers.SiglipModel.from_pretrained(src).eval()
    proc = transformers.AutoProcessor.from_pretrained(src)
    px = proc.image_processor(images=images, return_tensors="pt")["pixel_values"]
    ids = proc.tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")[
        "input_ids"
    ]
    with torch.inference_mode():
        want = torch.sigmoid(model(input_ids=ids, pixel_values=px).logits_per_image).numpy()
    b, enc = _encoder(art)
    try:
        got = enc.scores(enc.encode_images(images), enc.encode_texts(texts))
        assert got.shape == (5, 6) and np.abs(got - want).max() < 1e-4
        assert enc.pair_score.name == "sigmoid probability"
        top = enc.classify(images, texts, top_k=6)
        for i, row in enumerate(top):
            assert [s for _, s in row] == pytest.approx(sorted(want[i], reverse=True), abs=1e-4)
    finally:
        b.close()


def test_int8_default_is_close(imported):
    """The int8 graphs the import adopted as default: embeddings near fp32 (figures in docs/export.md)."""
    src, art = imported["siglip"]
    images, texts = _siglip.photos(8, seed=5), _siglip.texts(8, seed=6)
    b32, e32 = _encoder(art)
    b8, e8 = _encoder(art, "int8")
    try:
        img = (e32.encode_images(images) * e8.encode_images(images)).sum(1).min()
        txt = (e32.encode_texts(texts) * e8.encode_texts(texts)).sum(1).min()
    finally:
        b32.close()
        b8.close()
    assert img >= 0.99 and txt >= 0.99


def test_empty_after_normalisation_refused(imported):
    _, art = imported["siglip"]
    b, enc = _encoder(art)
    try:
        for bad in ("   ", "?!...", "a cat", "--"):
            if bad == "a cat":
                continue
            with pytest.raises(InvalidTextError) as e:
                enc.encode_texts(["a cat", bad])
            assert e.value.index == 1
    finally:
        b.close()


@pytest.mark.parametrize(
    "model_type,words",
    [
        ("siglip2", ["NaFlex", "fixed-resolution"]),
        ("blip", ["clipq does not know"]),
    ],
)
def test_other_families_refused_naming_the_supported(tmp_path, model_type, words):
    src = _siglip.save_siglip(tmp_path / "ckpt")
    _siglip.config_model_type(src, model_type)
    with pytest.raises(UnsupportedModelError) as e:
        import_checkpoint(src, tmp_path / "art", int8=False)
    msg = str(e.value)
    for w in [*words, "clip (clip, vision-text-dual-encoder)", "siglip (siglip)", repr(model_type)]:
        assert w in msg
    assert not (tmp_path / "art" / "manifest.json").exists()


@pytest.mark.parametrize("preset", ["siglip-base-patch16-224", "siglip2-base-patch16-224"])
def test_bench_presets_have_the_real_shapes(preset):
    """The benchmark presets: SiglipModel at siglip(2)-base-patch16-224's shapes (built on the meta device:
    the shapes without the weights' memory), with SigLIP's padding and preprocessing in the artifacts."""
    from clipq.models.factory import build_clip, clip_embed_dim, clip_family, get_preset

    pr = get_preset(preset)
    with torch.device("meta"):
        model = build_clip(preset)
    assert type(model).__name__ == "SiglipModel" and clip_family(model) == "siglip"
    v, t = model.config.vision_config, model.config.text_config
    assert (v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers) == (224, 16, 768, 12)
    assert (t.vocab_size, t.max_position_embeddings, t.num_hidden_layers) == (
        256000 if preset.startswith("siglip2") else 32000,
        64,
        12,
    )
    assert clip_embed_dim(model) == 768 and pr.clip_max_length == 64
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(375e6 if preset.startswith("siglip2") else 203e6, rel=0.02)
