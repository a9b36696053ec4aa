"""`clipq import`: real CLIP checkpoints (saved here by transformers, several shapes) -> deployable artifacts.

Every imported model is checked end to end against transformers itself: the torch-free runtime
(our preprocessing, our tokenizer handling, the exported graph) must give the embeddings that
``CLIPModel.get_*_features`` gives on ``CLIPProcessor``'s inputs from the original checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _require import require_module
from PIL import Image

torch = require_module("torch")
transformers = require_module("transformers")

from clipq.app.cli import main  # noqa: E402
from clipq.app.importer import import_checkpoint  # noqa: E402
from clipq.runtime.errors import ArtifactError  # noqa: E402
from clipq.runtime.manifest import Manifest  # noqa: E402

TEXTS = ["the cat", "a photo of the the", "hello world"]


def _bpe_files(d: Path) -> tuple[int, int]:
    """A small CLIP-format byte-level BPE (vocab.json + merges.txt); returns (bos id, eos id)."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *[c + "</w>" for c in chars], "th", "the</w>", "ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\nc a\nca t</w>\n")
    return len(vocab) - 2, len(vocab) - 1


def save_checkpoint(d: Path, *, image_size: int, patch: int, vision_width: int, text_width: int, projection: int,
                    context: int, tokenizer: str = "bpe", weights: str = "safetensors",
                    preprocessor: dict | None = None, layers: int = 2, seed: int = 0) -> Path:
    """A random-weight CLIP checkpoint as transformers' save_pretrained writes it."""
    d.mkdir(parents=True)
    bos, eos = _bpe_files(d)
    vocab = eos + 1
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": text_width, "intermediate_size": 2 * text_width, "num_hidden_layers": layers,
                     "num_attention_heads": max(1, text_width // 32), "max_position_embeddings": context,
                     "vocab_size": vocab, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": vision_width, "intermediate_size": 2 * vision_width, "num_hidden_layers": layers,
                       "num_attention_heads": max(1, vision_width // 32), "image_size": image_size, "patch_size": patch},
        projection_dim=projection,
    )
    torch.manual_seed(seed)
    transformers.CLIPModel(cfg).save_pretrained(d, safe_serialization=weights == "safetensors")
    if tokenizer == "json":  # the fast tokenizer file only, as most hub checkpoints also ship it
        tok = transformers.CLIPTokenizerFast(vocab_file=str(d / "vocab.json"), merges_file=str(d / "merges.txt"))
        tok.backend_tokenizer.save(str(d / "tokenizer.json"))
        (d / "vocab.json").unlink()
        (d / "merges.txt").unlink()
    if preprocessor is not None:
        (d / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return d


def _photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (17, 64), (1, 1), (300, 200)]
    return [Image.fromarray(rng.integers(0, 256, (*sizes[i % 4][::-1], 3), dtype=np.uint8)) for i in range(n)]


def _reference(src: Path, images, texts, tokenizer_src: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Normalised embeddings computed by transformers alone, from the original checkpoint."""
    model = transformers.CLIPModel.from_pretrained(src).eval()
    proc = transformers.CLIPImageProcessor.from_pretrained(src) if (src / "preprocessor_config.json").is_file() \
        else transformers.CLIPImageProcessor(size={"shortest_edge": model.config.vision_config.image_size},
                                             crop_size={"height": model.config.vision_config.image_size,
                                                        "width": model.config.vision_config.image_size})
    tok_dir = tokenizer_src or src
    tok = (transformers.CLIPTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
           if (tok_dir / "tokenizer.json").is_file()
           else transformers.CLIPTokenizerFast(vocab_file=str(tok_dir / "vocab.json"), merges_file=str(tok_dir / "merges.txt")))
    px = proc(images=images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    ids = tok(texts, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
              return_tensors="pt")
    with torch.inference_mode():
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=px), dim=-1).numpy()
        txt = torch.nn.functional.normalize(model.get_text_features(**ids), dim=-1).numpy()
    return img, txt


def _runtime(art: Path, images, texts) -> tuple[np.ndarray, np.ndarray]:
    import clipq.runtime as rt

    b = rt.connect(art, threads=2, variant="fp32")
    try:
        enc = rt.ClipEncoder(b)
        return enc.encode_images(images), enc.encode_texts(texts)
    finally:
        b.close()


SHAPES = {
    # small vision/text towers of unusual shapes; BPE as vocab.json + merges.txt; .bin weights; defaults
    "bin-bpe-defaults": dict(image_size=32, patch=8, vision_width=64, text_width=48, projection=24, context=20,
                             weights="bin"),
    # another image size / patch, tokenizer.json only, a preprocessor config with its own mean/std
    "json-own-preprocessing": dict(image_size=48, patch=16, vision_width=96, text_width=64, projection=40, context=33,
                                   tokenizer="json",
                                   preprocessor={"image_processor_type": "CLIPImageProcessor",
                                                 "size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48},
                                                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.3, 0.35],
                                                 "do_resize": True, "do_center_crop": True, "resample": 3}),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_import_matches_transformers_end_to_end(tmp_path, shape):
    src = save_checkpoint(tmp_path / "ckpt", **SHAPES[shape])
    rep = import_checkpoint(src, tmp_path / "art", int8=False, parity_batches=(1, 4))
    assert rep.networks == ["clip_image", "clip_text"]
    m = Manifest.load(rep.artifacts)
    cfg = json.loads((src / "config.json").read_text())
    assert m.preprocessing["size"] == cfg["vision_config"]["image_size"]
    assert m.tokenizers["clip"]["max_length"] == cfg["text_config"]["max_position_embeddings"]
    assert m.dims["clip_embed"] == cfg["projection_dim"]
    for n in rep.networks:
        assert m.model(n).parity["fp32"]["passed"]
    images = _photos(4)
    want_img, want_txt = _reference(src, images, TEXTS)
    got_img, got_txt = _runtime(rep.artifacts, images, TEXTS)
    # by default large images are reduced at the size the model needs: within the draft gate (0.999)
    assert (got_img * want_img).sum(1).min() > 0.999
    assert (got_txt * want_txt).sum(1).min() > 0.9999 and np.abs(got_txt - want_txt).max() < 1e-3
    # with the manifest's switch off the pixels are CLIPImageProcessor's: fp32 parity end to end
    m.preprocessing["draft"] = False
    m.save()
    got_img, _ = _runtime(rep.artifacts, images, TEXTS)
    assert (got_img * want_img).sum(1).min() > 0.9999 and np.abs(got_img - want_img).max() < 1e-3
    # checkpoints out: what clipq saved loads back with plain transformers
    out = rep.artifacts / "checkpoints" / "clip"
    assert isinstance(transformers.AutoTokenizer.from_pretrained(out), transformers.CLIPTokenizerFast)
    assert isinstance(transformers.AutoProcessor.from_pretrained(out), transformers.CLIPProcessor)
    again = transformers.CLIPModel.from_pretrained(out)
    assert again.config.projection_dim == cfg["projection_dim"]


def test_import_full_vit_b32_shape(tmp_path):
    """The clip-vit-base-patch32 configuration (random weights): every tower shape at its real size."""
    cfg = transformers.CLIPConfig()  # transformers' defaults are clip-vit-base-patch32
    src = tmp_path / "b32"
    src.mkdir()
    bos, eos = _bpe_files(src)
    cfg.text_config.vocab_size, cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = eos + 1, bos, eos
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(src)
    rep = import_checkpoint(src, tmp_path / "art", int8=False, parity_batches=(1, 2))
    m = Manifest.load(rep.artifacts)
    assert (m.preprocessing["size"], m.dims["clip_embed"], m.tokenizers["clip"]["max_length"]) == (224, 512, 77)
    images = _photos(2)
    want_img, want_txt = _reference(src, images, TEXTS)
    got_img, got_txt = _runtime(rep.artifacts, images, TEXTS)
    assert (got_img * want_img).sum(1).min() > 0.9999 and (got_txt * want_txt).sum(1).min() > 0.9999
    assert rep.seconds["total"] > 0


def test_embedded_default_checkpoint_round_trips_through_transformers(tiny_artifacts):
    """The embedded CLIP (a WordPiece vocabulary, a ResNet image tower) loads with AutoTokenizer /
    AutoProcessor / AutoModel, and plain transformers' towers give clipq's embeddings."""
    d = tiny_artifacts / "checkpoints" / "clip"
    tok = transformers.AutoTokenizer.from_pretrained(d)
    assert isinstance(tok, transformers.BertTokenizerFast)
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(str(d / "tokenizer.json")).encode("two red circles").ids
    assert tok("two red circles")["input_ids"] == ours
    transformers.AutoImageProcessor.from_pretrained(d)
    hf = transformers.AutoModel.from_pretrained(d).eval()
    assert isinstance(hf, transformers.VisionTextDualEncoderModel)
    assert isinstance(hf.vision_model, transformers.ResNetModel)
    assert isinstance(hf.text_model, transformers.CLIPTextModel)
    import torch

    from clipq.models.factory import build_clip, image_features

    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = image_features(build_clip(pretrained=d).eval(), px)
        plain = hf.visual_projection(hf.vision_model(pixel_values=px).pooler_output.flatten(1))
    assert torch.allclose(plain, ref, atol=1e-6) and ref.abs().sum() > 0


def test_import_attaches_heads_and_prompts(tiny_artifacts, tmp_path):
    """Heads from a clipq artifact directory (VQA, Model A) and a prompt database (Model B) attach."""
    import clipq.runtime as rt

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = ["imgId,prompt"]
    for i, im in enumerate(_photos(6, seed=1)):
        im.convert("RGB").resize((40, 40)).save(imgs / f"p{i}.png")
        rows.append(f"p{i}.png,a picture number {i} of shapes")
    (tmp_path / "prompts.csv").write_text("\n".join(rows) + "\n")
    rep = import_checkpoint(tiny_artifacts / "checkpoints" / "clip", tmp_path / "art", int8=False,
                            heads=tiny_artifacts, prompts=tmp_path / "prompts.csv", prompt_images=imgs, k=3,
                            parity_batches=(1, 2))
    assert {"clip_image", "clip_text", "vqa", "img2prompt_a", "prompt_text", "ensemble_head"} <= set(rep.networks)
    assert rep.heads["model_b"] == {"prompts": 6, "k": 3}
    b = rt.connect(rep.artifacts, threads=2)
    try:
        ans = rt.VqaModel(b).ask(imgs / "p0.png", "what color is the shape ?")
        assert ans[0].answer in Manifest.load(tiny_artifacts).answer_vocab
    finally:
        b.close()


def test_import_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ArtifactError, match="not found"):
        import_checkpoint(tmp_path / "nope", tmp_path / "a")
    src = save_checkpoint(tmp_path / "c", image_size=32, patch=8, vision_width=32, text_width=32, projection=16,
                          context=12, layers=1)
    (src / "vocab.json").unlink()
    with pytest.raises(ArtifactError, match="no tokenizer"):
        import_checkpoint(src, tmp_path / "a")
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "a" / "x").write_text("keep me")
    with pytest.raises(ArtifactError, match="not empty"):
        import_checkpoint(src, tmp_path / "a")
    assert (tmp_path / "a" / "x").read_text() == "keep me"
    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (w / "model.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match="model_type 'bert'.*Supported families"):
        import_checkpoint(w, tmp_path / "b")
    (w / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no weights"):
        import_checkpoint(w, tmp_path / "b")
    # through the CLI: exit code 2 and the reason, never a traceback
    assert main(["import", str(w), "--out", str(tmp_path / "b")]) == 2
    assert "no weights" in capsys.readouterr().err


def test_import_with_model_b_alone_describes(tiny_artifacts, tmp_path, capsys):
    """A prompt database without Model A: describe runs Model B alone (alpha 0) and names known prompts."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = ["imgId,prompt"]
    for i, im in enumerate(_photos(5, seed=2)):
        im.convert("RGB").resize((40, 40)).save(imgs / f"q{i}.png")
        rows.append(f"q{i},prompt number {i}")
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    rep = import_checkpoint(tiny_artifacts / "checkpoints" / "clip", tmp_path / "art", int8=False,
                            prompts=tmp_path / "p.csv", prompt_images=imgs, k=2, parity_batches=(1, 2))
    assert "img2prompt_a" not in rep.networks and "prompt_text" in rep.networks
    assert main(["describe", str(imgs / "q3.png"), "--artifacts", str(rep.artifacts), "--json", "-k", "2"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["alpha"] == 0.0 and row["neighbours"][0]["prompt"] == "prompt number 3"  # its own prompt first
    assert main(["describe", str(imgs / "q3.png"), "--artifacts", str(rep.artifacts), "--alpha", "0.5"]) == 2
    assert "Model A" in capsys.readouterr().err
