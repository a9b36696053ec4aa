"""Real CLIP checkpoints in and out: a ``save_pretrained`` directory <-> a clipq artifact directory.

In: :func:`init_from_checkpoint` reads any CLIP checkpoint transformers reads (config.json; weights
as model.safetensors or pytorch_model.bin; the tokenizer as tokenizer.json or vocab.json +
merges.txt; preprocessor_config.json, or CLIP's defaults when it is absent) and starts an artifact
directory from it, with no training. Out: :func:`write_hf_tokenizer_files` makes the checkpoints
clipq saves load back with plain ``AutoTokenizer`` / ``AutoProcessor`` (a tokenizer_config.json that
names the tokenizer class, so transformers does not guess CLIP's BPE for a WordPiece vocabulary).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import Manifest
from clipq.runtime.preprocess import CLIP_MEAN, CLIP_STD

from .factory import PROMPT_DIM, build_clip, check_model_type, clip_embed_dim

#: files a checkpoint directory may hold for each part
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
BPE_FILES = ("vocab.json", "merges.txt")


def checkpoint_tokenizer_json(src: str | os.PathLike[str], work: str | os.PathLike[str]) -> Path:
    """The checkpoint's tokenizer as one ``tokenizer.json``: its own, or converted from vocab.json + merges.txt.

    Raises:
        ArtifactError: the directory has neither, or the files do not make a tokenizer.
    """
    src, work = Path(src), Path(work)
    if (src / "tokenizer.json").is_file():
        return src / "tokenizer.json"
    if all((src / f).is_file() for f in BPE_FILES):
        from transformers import CLIPTokenizerFast

        try:  # transformers' own converter: the same ids CLIPTokenizer gives
            tok = CLIPTokenizerFast(vocab_file=str(src / "vocab.json"), merges_file=str(src / "merges.txt"))
        except Exception as e:  # noqa: BLE001 - the converter raises many types on bad files
            raise ArtifactError(f"{src}: vocab.json + merges.txt do not make a CLIP tokenizer: {e}") from e
        work.mkdir(parents=True, exist_ok=True)
        out = work / "tokenizer.json"
        tok.backend_tokenizer.save(str(out))
        return out
    raise ArtifactError(f"{src}: no tokenizer (tokenizer.json, or vocab.json + merges.txt)")


def read_preprocessing(src: str | os.PathLike[str], image_size: int) -> dict[str, Any]:
    """Preprocessing facts from preprocessor_config.json (CLIP's defaults when absent).

    The runtime resizes the shorter side to ``crop`` and centre-crops it, as CLIPImageProcessor does
    when ``shortest_edge`` equals the crop (every released CLIP); another ratio is refused rather than
    silently preprocessed differently.
    """
    mean, std, size = list(CLIP_MEAN), list(CLIP_STD), image_size
    path = Path(src) / "preprocessor_config.json"
    if path.is_file():
        try:
            pp = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"cannot read {path}: {e}") from e
        mean, std = list(pp.get("image_mean", mean)), list(pp.get("image_std", std))
        crop = pp.get("crop_size", size)
        crop = int(crop.get("height", size)) if isinstance(crop, dict) else int(crop)
        short = pp.get("size", crop)
        short = int(short.get("shortest_edge", crop)) if isinstance(short, dict) else int(short)
        if crop != image_size or short != crop:
            raise ArtifactError(
                f"{path}: resize {short} / crop {crop} with a {image_size}px vision tower is not supported "
                "(clipq resizes the shorter side to the crop size, then centre-crops)"
            )
        if len(mean) != 3 or len(std) != 3:
            raise ArtifactError(f"{path}: image_mean and image_std must have 3 values")
    return {"size": size, "mean": mean, "std": std, "resize": "shortest_side", "resample": "bicubic", "crop": "center"}


def init_from_checkpoint(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Manifest, Any]:
    """Start an artifact directory from a local CLIP or SigLIP checkpoint (no training).

    Writes the tokenizer, preprocessing and dims into a new manifest at ``out`` and returns it with
    the loaded CLIP (``CLIPModel``, or clipq's ResNet-tower CLIP; eager attention); the caller saves the checkpoint and exports.

    Raises:
        UnsupportedModelError: ``config.json``'s model type is not one clipq imports (CLIP, SigLIP and
            fixed-resolution SigLIP 2); the message names the supported families.
        ArtifactError: a part of the checkpoint is missing or unreadable.
    """
    from .io import write_tokenizer

    src = Path(src)
    if not src.is_dir():
        raise ArtifactError(f"checkpoint directory not found: {src}")
    if not any((src / f).is_file() for f in WEIGHT_FILES):
        raise ArtifactError(f"{src}: no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        cfg = json.loads((src / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{src}: cannot read config.json: {e}") from e
    family = check_model_type(cfg.get("model_type"), src)
    if family == "siglip":
        return _init_siglip(src, out)
    clip = build_clip(pretrained=src).eval()
    m = Manifest.load_or_new(out)
    size = int(clip.config.vision_config.image_size)
    tok = checkpoint_tokenizer_json(src, Path(out) / ".import")
    write_tokenizer(m, "clip", tok, int(clip.config.text_config.max_position_embeddings))
    m.preprocessing = read_preprocessing(src, size)
    m.dims = {"clip_embed": clip_embed_dim(clip), "prompt_embed": PROMPT_DIM}
    m.extra["family"] = "clip"
    m.extra["scores"] = {"kind": "cosine"}
    m.extra["pretrained"] = str(src.resolve())
    m.extra["imported"] = True
    return m, clip


def _init_siglip(src: Path, out: str | os.PathLike[str]) -> tuple[Manifest, Any]:
    """:func:`init_from_checkpoint` for a SigLIP / fixed-resolution SigLIP 2 checkpoint (SiglipModel).

    The manifest records the family, the pair score (``sigmoid(logit_scale * cos + logit_bias)``),
    the tokenizer converted to tokenizer.json with SigLIP's padding rule (every text padded to the
    context, 64 tokens, as SigLIP was trained; the text graph takes no mask) and the processor's
    resize (the whole image to the square, bilinear) and mean / std.
    """
    from .io import write_tokenizer
    from .siglip import checkpoint_tokenizer, read_siglip_preprocessing, score_settings

    clip = build_clip(pretrained=src).eval()
    m = Manifest.load_or_new(out)
    size = int(clip.config.vision_config.image_size)
    tok, info = checkpoint_tokenizer(src, Path(out) / ".import")
    write_tokenizer(m, "clip", tok, int(clip.config.text_config.max_position_embeddings),
                    pad_token=info["pad_token"], padding="max_length")
    m.tokenizers["clip"]["kind"] = info["kind"]
    if info["padding_side"] != "right":
        m.tokenizers["clip"]["padding_side"] = info["padding_side"]
    m.tokenizers["clip"]["attention_mask"] = False  # the text graph does not read it (SigLIP's training)
    m.preprocessing = read_siglip_preprocessing(src, size)
    m.dims = {"clip_embed": clip_embed_dim(clip), "prompt_embed": PROMPT_DIM}
    m.extra["family"] = "siglip2" if info["kind"] == "gemma" else "siglip"
    m.extra["scores"] = score_settings(clip)
    m.extra["pretrained"] = str(src.resolve())
    m.extra["imported"] = True
    return m, clip


def write_hf_tokenizer_files(tokenizer_json: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                             max_length: int) -> None:
    """tokenizer_config.json + special_tokens_map.json beside a tokenizer.json, for transformers.

    Names the class by the tokenizer's model (WordPiece -> BertTokenizerFast, BPE -> CLIPTokenizerFast):
    without it transformers picks CLIPTokenizerFast for any CLIP checkpoint and fails on WordPiece.
    """
    raw = json.loads(Path(tokenizer_json).read_text())
    kind = (raw.get("model") or {}).get("type")
    if kind == "WordPiece":
        cfg: dict[str, Any] = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True,
                               "unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                               "sep_token": "[SEP]", "mask_token": "[MASK]"}
    else:
        cfg = {"tokenizer_class": "CLIPTokenizerFast", "unk_token": "<|endoftext|>",
               "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    cfg["model_max_length"] = int(max_length)
    out = Path(out_dir)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    special = {k: v for k, v in cfg.items() if k.endswith("_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
