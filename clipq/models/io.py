"""Checkpoints and the artifact directory on the training side (safetensors / save_pretrained).

``save_*`` write a network under ``checkpoints/`` and record it in the manifest; ``load_*`` read it
back; ``load_for_export`` gives every network as a module with the exported signature.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from torch import nn

from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import Manifest

from .checkpoint import init_from_checkpoint, write_hf_tokenizer_files
from .export_wrappers import ClipImageTower, ClipTextTower
from .factory import (
    CLIP_MEAN,
    CLIP_STD,
    PROMPT_DIM,
    build_clip,
    build_image_processor,
    build_lm,
    clip_embed_dim,
    get_preset,
    minilm_dir,
    wordpiece_tokenizer_file,
)
from .img2prompt import EnsembleHead, PromptRegressorA
from .prompt_encoder import SentenceEncoder
from .vqa import VQAConfig, VQAModel, VQAProbs


# -- tokenizers -----------------------------------------------------------------------------------
def write_tokenizer(m: Manifest, name: str, source: str | os.PathLike[str], max_length: int, *,
                    pad_token: str | None = None, padding: str = "longest") -> None:
    """Copy a tokenizer.json into ``tokenizer/<name>/`` with batch padding set.

    Truncation is not written into the file: every reader sets it from the manifest's ``max_length``
    (:func:`load_tokenizer` here, ``TextTokenizer`` in the runtime), so tokenizers that share a
    vocabulary are byte-identical files and a rendered Triton repository keeps one copy of them.

    Args:
        pad_token: the padding token (default: ``[PAD]``, else CLIP's ``<|endoftext|>``).
        padding: ``"longest"`` (pad to the longest text of a batch, CLIP) or ``"max_length"`` (every
            text to ``max_length``: SigLIP, trained on fixed-length inputs); recorded in the manifest.
    """
    from tokenizers import Tokenizer

    if padding not in ("longest", "max_length"):
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    tok = Tokenizer.from_file(str(source))
    if pad_token is not None:
        pad_id = tok.token_to_id(pad_token)
        if pad_id is None:
            raise ArtifactError(f"{source}: padding token {pad_token!r} is not in the vocabulary")
    else:
        pad_id = tok.token_to_id("[PAD]")
        pad_token = "[PAD]"
        if pad_id is None:  # CLIP BPE: pads with its end-of-text token
            pad_token = "<|endoftext|>"
            pad_id = tok.token_to_id(pad_token) or 0
    tok.no_truncation()
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    out = m.root / "tokenizer" / name
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    m.add_tree(f"tokenizer/{name}")
    m.tokenizers[name] = {"path": f"tokenizer/{name}", "max_length": max_length, "pad_id": pad_id}
    if padding != "longest":
        m.tokenizers[name]["padding"] = padding


def load_tokenizer(m: Manifest, name: str):
    """The artifact's tokenizer as a ``tokenizers.Tokenizer`` (truncation/padding configured)."""
    from tokenizers import Tokenizer

    info = m.tokenizers.get(name)
    if info is None:
        raise ArtifactError(f"{m.root}: no tokenizer {name!r} in the manifest")
    tok = Tokenizer.from_file(str(m.resolve(f"{info['path']}/tokenizer.json")))
    tok.enable_truncation(max_length=int(info["max_length"]))
    return tok


def tokenize(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask


# -- CLIP -----------------------------------------------------------------------------------------
def init_clip_artifacts(
    out: str | os.PathLike[str], preset: str = "tiny", pretrained: str | os.PathLike[str] | None = None
) -> tuple[Manifest, Any]:
    """Start an artifact directory: tokenizers, preprocessing and an (untrained or real) CLIP.

    With ``pretrained`` (a local CLIP checkpoint) the CLIP side comes from it, as ``clipq import``
    reads it (:func:`clipq.models.checkpoint.init_from_checkpoint`); the heads' tokenizers and sizes
    come from the preset.
    """
    pr = get_preset(preset)
    if pretrained is not None:
        m, clip = init_from_checkpoint(pretrained, out)
    elif pr.vision_arch == "siglip":  # SigLIP shapes, random weights: SigLIP's preprocessing and padding
        from .siglip import score_settings

        m = Manifest.load_or_new(out)
        clip = build_clip(preset)
        write_tokenizer(m, "clip", wordpiece_tokenizer_file(), pr.clip_max_length, padding="max_length")
        m.tokenizers["clip"]["attention_mask"] = False
        m.preprocessing = {"size": int(clip.config.vision_config.image_size), "mean": [0.5] * 3, "std": [0.5] * 3,
                           "resize": "squash", "resample": "bilinear", "crop": "none"}
        m.dims = {"clip_embed": clip_embed_dim(clip), "prompt_embed": PROMPT_DIM}
        m.extra["pretrained"] = None
        m.extra["family"] = "siglip2" if preset.startswith("siglip2") else "siglip"
        m.extra["scores"] = score_settings(clip)
    else:
        m = Manifest.load_or_new(out)
        clip = build_clip(preset)
        write_tokenizer(m, "clip", wordpiece_tokenizer_file(), pr.clip_max_length)
        m.preprocessing = {"size": int(clip.config.vision_config.image_size), "mean": list(CLIP_MEAN),
                           "std": list(CLIP_STD), "resize": "shortest_side", "resample": "bicubic", "crop": "center"}
        m.dims = {"clip_embed": clip_embed_dim(clip), "prompt_embed": PROMPT_DIM}
        m.extra["pretrained"] = None
    write_tokenizer(m, "lm", wordpiece_tokenizer_file(), pr.question_max_length)
    write_tokenizer(m, "prompt", wordpiece_tokenizer_file(), pr.prompt_max_length)
    m.extra["preset"] = preset
    m.extra["lm"] = pr.lm
    m.extra["vqa_prefix_len"] = pr.vqa_prefix_len
    return m, clip


def save_clip(m: Manifest, clip, name: str = "clip") -> None:
    d = m.root / "checkpoints" / name
    if d.exists():
        shutil.rmtree(d)
    clip.save_pretrained(d, safe_serialization=True)
    pp = m.preprocessing
    info = m.tokenizers["clip"]
    shutil.copy(m.root / info["path"] / "tokenizer.json", d / "tokenizer.json")
    if pp.get("resize") == "squash":  # SigLIP: its processor and a fast tokenizer over the converted file
        from .siglip import save_hf_processor

        save_hf_processor(d, pp, info)
    else:
        build_image_processor(pp["size"], pp.get("mean", CLIP_MEAN), pp.get("std", CLIP_STD)).save_pretrained(d)
        # so that plain transformers (AutoTokenizer / AutoProcessor) loads what clipq saved
        write_hf_tokenizer_files(d / "tokenizer.json", d, int(info["max_length"]))
    m.add_tree(f"checkpoints/{name}")
    m.checkpoints[name] = f"checkpoints/{name}"
    if name == "clip":  # identity of the embedding space: indexes built on it record this id
        m.extra["clip_model_id"] = m.files[f"checkpoints/{name}/model.safetensors"]["sha256"]
        if getattr(clip.config, "model_type", "") == "siglip":  # the saved model's own scale and bias
            from .siglip import score_settings

            m.extra["scores"] = score_settings(clip)


def load_clip(m: Manifest, name: str = "clip"):
    rel = m.checkpoints.get(name)
    if rel is None:
        raise ArtifactError(f"{m.root}: no {name!r} checkpoint; run `clipq train clip` first")
    return build_clip(pretrained=m.resolve_dir(rel))


# -- generic module checkpoints -------------------------------------------------------------------
def _save_module(m: Manifest, name: str, module: nn.Module, config: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    d = m.root / "checkpoints" / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config, indent=2))
    m.add_tree(f"checkpoints/{name}")
    m.checkpoints[name] = f"checkpoints/{name}"


def _load_state(m: Manifest, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    rel = m.checkpoints.get(name)
    if rel is None:
        raise ArtifactError(f"{m.root}: no {name!r} checkpoint in the manifest; train it first")
    d = m.resolve_dir(rel)
    return load_file(str(d / "model.safetensors")), json.loads((d / "config.json").read_text())


def save_vqa(m: Manifest, variant: str, model: VQAModel) -> None:
    lm_cfg = model.lm.config.to_dict()
    _save_module(m, f"vqa_{variant}", model, {"vqa": model.cfg.to_dict(), "lm_config": lm_cfg, "variant": variant})


def load_vqa(m: Manifest, variant: str) -> VQAModel:
    from transformers import AutoConfig, AutoModel

    state, cfg = _load_state(m, f"vqa_{variant}")
    lm_cfg = dict(cfg["lm_config"])
    model_type = lm_cfg.pop("model_type")
    kwargs = {"add_pooling_layer": False} if model_type == "bert" else {}
    lm = AutoModel.from_config(AutoConfig.for_model(model_type, **lm_cfg), attn_implementation="eager", **kwargs)
    model = VQAModel(VQAConfig(**cfg["vqa"]), lm)
    model.load_state_dict(state)
    return model.eval()


def save_img2prompt(m: Manifest, model: PromptRegressorA) -> None:
    _save_module(m, "img2prompt_a", model, {"hidden": model.head[0].out_features})


def load_img2prompt(m: Manifest) -> PromptRegressorA:
    state, cfg = _load_state(m, "img2prompt_a")
    model = PromptRegressorA(load_clip(m), hidden=cfg["hidden"])
    model.load_state_dict(state)
    return model.eval()


def load_prompt_encoder() -> SentenceEncoder:
    return SentenceEncoder.pretrained()


def _towers(clip, image: str, text: str) -> dict[str, nn.Module]:  # CLIP and SigLIP alike
    """A CLIP's two towers with the exported signatures, under their network names."""
    clip = clip.eval()
    return {image: ClipImageTower(clip).eval(), text: ClipTextTower(clip).eval()}


def load_for_export(artifacts: str | os.PathLike[str], vqa_variant: str | None = None) -> dict[str, nn.Module]:
    """Every trained network of an artifact directory, wrapped with its exported signature.

    Networks whose checkpoint is missing are left out (export reports which).
    """
    m = Manifest.load(artifacts)
    out: dict[str, nn.Module] = {}
    out.update(_towers(load_clip(m), "clip_image", "clip_text"))
    reading = (m.extra.get("reading") or {}).get("checkpoint")
    if reading and reading in m.checkpoints:  # the CLIP fine-tuned for reading (clipq train reading)
        out.update(_towers(load_clip(m, reading), "reading_image", "reading_text"))
    variant = vqa_variant or m.extra.get("vqa", {}).get("export_variant")
    if variant is None:
        have = sorted(k for k in m.checkpoints if k.startswith("vqa_"))
        variant = have[-1][4:] if have else None
    if variant is not None:
        out["vqa"] = VQAProbs(load_vqa(m, variant)).eval()
    if "img2prompt_a" in m.checkpoints:
        out["img2prompt_a"] = load_img2prompt(m)
    out["ensemble_head"] = EnsembleHead().eval()
    out["prompt_text"] = load_prompt_encoder()
    return out


def build_random_artifacts(
    out: str | os.PathLike[str], preset: str = "tiny", answers: list[str] | None = None, seed: int = 0
) -> Manifest:
    """An artifact directory of untrained networks (for tests and speed benchmarks)."""
    torch.manual_seed(seed)
    m, clip = init_clip_artifacts(out, preset)
    save_clip(m, clip)
    answers = answers or ["red", "green", "blue", "one", "two", "three", "left", "right", "circle", "square"]
    m.answer_vocab = list(answers)
    pr = get_preset(preset)
    lm = build_lm(pr.lm, seed=seed)
    vqa = VQAModel(VQAConfig(embed_dim=m.dims["clip_embed"], n_answers=len(answers), prefix_len=pr.vqa_prefix_len), lm)
    save_vqa(m, "v2", vqa)
    m.extra["vqa"] = {"export_variant": "v2"}
    save_img2prompt(m, PromptRegressorA(clip))
    m.save()
    return m


__all__ = [
    "build_random_artifacts", "init_clip_artifacts", "load_clip", "load_for_export", "load_img2prompt",
    "load_prompt_encoder", "load_tokenizer", "load_vqa", "minilm_dir", "save_clip", "save_img2prompt",
    "save_vqa", "tokenize", "write_tokenizer",
]
