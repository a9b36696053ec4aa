"""Small SigLIP and SigLIP 2 checkpoints saved the way hub checkpoints carry them (for the SigLIP tests).

SigLIP: ``SiglipModel`` + ``SiglipTokenizer`` over a SentencePiece Unigram ``spiece.model`` trained here
+ ``SiglipImageProcessor``, written by ``SiglipProcessor.save_pretrained``. SigLIP 2 (fixed resolution):
the same ``SiglipModel`` class with a Gemma tokenizer (``GemmaTokenizerFast``: tokenizer.json and
tokenizer.model, from a SentencePiece BPE model with byte fallback trained here), as
siglip2-base-patch16-224 ships. Random weights; logit scale and bias set to trained-like values so
that sigmoid scores are not all 0.5.
"""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path

import numpy as np
from PIL import Image

_rng = random.Random(0)
WORDS = [
    *(
        "a photo of the cat dog red green blue yellow on left right top bottom two three shapes picture "
        "circle square triangle star with and in some very small large bright dark image"
    ).split(),
    *("".join(_rng.choice(string.ascii_lowercase) for _ in range(_rng.randint(3, 9))) for _ in range(150)),
    *"über café naïve 東京 人 привет мир straße".split(),
]


def corpus(path: Path, n: int = 4000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def train_spm(work: Path, prefix: str, model_type: str, vocab: int, **ids: int) -> Path:
    """A SentencePiece model trained on :data:`WORDS` sentences (unigram for SigLIP, bpe for Gemma)."""
    import sentencepiece as spm

    work.mkdir(parents=True, exist_ok=True)
    text = corpus(work / "corpus.txt")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(work / prefix),
        vocab_size=vocab,
        model_type=model_type,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return work / f"{prefix}.model"


def siglip_tokenizer(work: Path):
    """transformers' SiglipTokenizer over a trained spiece.model (ids: pad 0, eos 1, unk 2, as SigLIP's)."""
    from transformers import SiglipTokenizer

    from clipq.models.siglip import spm_protobuf

    spm_protobuf()  # SiglipTokenizer reads the model's protobuf (see its docstring)
    return SiglipTokenizer(
        str(train_spm(work, "spiece", "unigram", 400, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    )


def gemma_tokenizer(work: Path):
    """transformers' GemmaTokenizerFast over a trained BPE model (pad 0, eos 1, bos 2, unk 3, as Gemma's)."""
    from transformers import GemmaTokenizerFast

    from clipq.models.siglip import spm_protobuf

    spm_protobuf()
    model = train_spm(work, "gemma", "bpe", 500, pad_id=0, eos_id=1, bos_id=2, unk_id=3, byte_fallback=True)
    return GemmaTokenizerFast(vocab_file=str(model), add_bos_token=False, add_eos_token=True)


def save_siglip(
    d: Path,
    *,
    kind: str = "siglip",
    image_size: int = 32,
    patch: int = 8,
    width: int = 32,
    layers: int = 2,
    context: int = 64,
    resample: int = 2,
    seed: int = 0,
    logit_scale: float = 10.0,
    logit_bias: float = -2.0,
) -> Path:
    """A random-weight SigLIP (``kind="siglip"``) or fixed-resolution SigLIP 2 (``"siglip2"``) checkpoint."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    d.mkdir(parents=True)
    tok = (
        siglip_tokenizer(d.parent / f"{d.name}-spm")
        if kind == "siglip"
        else gemma_tokenizer(d.parent / f"{d.name}-spm")
    )
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=2,
            max_position_embeddings=context,
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=patch,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=layers,
            num_attention_heads=2,
        ),
    )
    torch.manual_seed(seed)
    model = SiglipModel(cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
        model.logit_bias.fill_(logit_bias)
    model.save_pretrained(d)
    proc = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        resample=resample,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    SiglipProcessor(image_processor=proc, tokenizer=tok).save_pretrained(d)
    return d


def reference(src: Path, images, texts) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Normalised embeddings by transformers alone (its own processor and tokenizer, padding="max_length"),
    and the model's exp(logit_scale), logit_bias."""
    import torch
    from transformers import AutoProcessor, SiglipModel

    model = SiglipModel.from_pretrained(src).eval()
    proc = AutoProcessor.from_pretrained(src)
    px = proc.image_processor(images=images, return_tensors="pt")["pixel_values"]
    ids = proc.tokenizer(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")[
        "input_ids"
    ]
    with torch.inference_mode():
        img = torch.nn.functional.normalize(model.get_image_features(pixel_values=px), dim=-1).numpy()
        txt = torch.nn.functional.normalize(model.get_text_features(input_ids=ids), dim=-1).numpy()
    return img, txt, float(model.logit_scale.detach().exp()), float(model.logit_bias.detach())


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of several sizes and aspects (all under 3x a 32 px model: no draft reduction)."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (17, 64), (1, 1), (90, 90), (32, 32), (33, 71)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)][::-1], 3), dtype=np.uint8))
        for i in range(n)
    ]


def texts(n: int, seed: int = 0) -> list[str]:
    """Captions of mixed lengths and forms, one in eight longer than the 64-token context."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.3:
            s = s.capitalize() + rng.choice([".", "!", "?", ", right?", ""])
        if i % 8 == 7:
            s = " ".join([s] * 30)
        out.append(s)
    return out


def config_model_type(d: Path, model_type: str) -> None:
    """Rewrite a saved checkpoint's config.json model_type (for the refusal tests)."""
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(cfg))
