"""Seed 003's baseline beside CLIP: a dual encoder of a BERT-family text encoder with mean pooling and a
CNN image encoder (transformers' ``ResNetModel``), each with a linear projection, trained contrastively
on the same captions, batches and time budget as CLIP.

Both towers are transformers classes at small sizes (random weights, as the tiny CLIP): ``BertModel``
of CLIP's text-tower size on the same WordPiece ids, ``ResNetModel`` with basic blocks. Text -> image
Recall@K is measured with the same template code as CLIP's.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipq.models.io import load_tokenizer, tokenize
from clipq.runtime.manifest import Manifest

from .clip import clip_loss
from .common import (
    autocast,
    contrastive_step,
    cosine_with_warmup,
    resolve_precision,
    seed_everything,
    set_threads,
)
from .data import SplitData, load_split


@dataclass(frozen=True, kw_only=True)
class BaselineConfig:
    steps: int = 900  # at most; the run also stops at ``seconds``
    seconds: float | None = None  # wall-clock budget (the demo passes CLIP's own training time)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    embed_dim: int = 128
    text_hidden: int = 128
    text_layers: int = 4
    resnet_hidden: tuple[int, ...] = (32, 64, 128, 256)
    precision: str = "auto"
    seed: int = 0


class DualEncoder(nn.Module):
    """BERT (mean pooling) + ResNet (global average pool), each with a linear projection."""

    def __init__(self, cfg: BaselineConfig, vocab_size: int = 30522, max_length: int = 32):
        super().__init__()
        from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel

        self.text = BertModel(BertConfig(
            vocab_size=vocab_size, hidden_size=cfg.text_hidden, num_hidden_layers=cfg.text_layers,
            num_attention_heads=max(1, cfg.text_hidden // 32), intermediate_size=4 * cfg.text_hidden,
            max_position_embeddings=max_length, attn_implementation="eager"), add_pooling_layer=False)
        self.image = ResNetModel(ResNetConfig(
            embedding_size=cfg.resnet_hidden[0], hidden_sizes=list(cfg.resnet_hidden),
            depths=[1] * len(cfg.resnet_hidden), layer_type="basic", downsample_in_first_stage=False))
        self.text_projection = nn.Linear(cfg.text_hidden, cfg.embed_dim, bias=False)
        self.image_projection = nn.Linear(cfg.resnet_hidden[-1], cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        mk = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.text_projection((h * mk).sum(1) / mk.sum(1).clamp(min=1.0))  # mean pooling

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_projection(self.image(pixel_values=pixel_values).pooler_output.flatten(1))  # [B, C]


class _Encoder:
    """The baseline's text tower behind ``encode_texts`` (for ``clipq.runtime.templates.embed_texts``)."""

    def __init__(self, model: DualEncoder, tok) -> None:
        self.model, self.tok = model, tok

    @torch.inference_mode()
    def encode_texts(self, texts, batch_size: int = 512) -> np.ndarray:
        texts = list(texts)
        out = [F.normalize(self.model.encode_text(*tokenize(self.tok, texts[i : i + batch_size])), dim=-1)
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).numpy()


def train_baseline(data: str, artifacts: str, *, cfg: BaselineConfig | None = None, threads: int | None = None,
                   progress: bool = True) -> dict:
    """Train the dual encoder on the artifacts' CLIP tokenizer and the data's captions; saves ``dual_encoder``."""
    from tqdm.auto import tqdm

    from clipq.models.io import _save_module

    cfg = cfg or BaselineConfig()
    set_threads(threads)
    seed_everything(cfg.seed)
    precision = resolve_precision(cfg.precision)
    m = Manifest.load(artifacts)
    tok = load_tokenizer(m, "clip")
    train = load_split(str(data), "train", m.preprocessing["size"])
    usable = np.array([i for i, c in enumerate(train.captions) if c])
    bs = min(cfg.batch_size, len(usable))
    model = DualEncoder(cfg, max_length=int(m.tokenizers["clip"]["max_length"])).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr, fused=True)
    sched = cosine_with_warmup(opt, cfg.steps, cfg.warmup)
    rng = np.random.default_rng(cfg.seed)
    losses: list[float] = []
    t0 = time.perf_counter()
    for _ in tqdm(range(cfg.steps), desc="train dual encoder", disable=not progress, mininterval=1.0):
        if cfg.seconds is not None and time.perf_counter() - t0 >= cfg.seconds:
            break
        idx = usable[rng.choice(len(usable), size=bs, replace=False)]
        ids, mask = tokenize(tok, [train.captions[i][rng.integers(len(train.captions[i]))] for i in idx])
        with autocast(precision):
            v, t = model.encode_image(train.pixels[idx]), model.encode_text(ids, mask)
        loss = clip_loss(v, t, model.logit_scale.exp())
        contrastive_step(opt, sched, loss, model)
        losses.append(loss.item())
    model.eval()
    cfg_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    _save_module(m, "dual_encoder", model, {"baseline": cfg_dict})
    summary = {"steps": len(losses), "seconds": round(time.perf_counter() - t0, 1), "precision": precision,
               "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
               "params": sum(p.numel() for p in model.parameters()), "config": cfg_dict}
    m.extra.setdefault("training", {})["dual_encoder"] = summary
    m.save()
    return summary


def load_baseline(m: Manifest) -> DualEncoder:
    from clipq.models.io import _load_state

    state, cfg = _load_state(m, "dual_encoder")
    c = dict(cfg["baseline"])
    c["resnet_hidden"] = tuple(c["resnet_hidden"])
    model = DualEncoder(BaselineConfig(**c), max_length=int(m.tokenizers["clip"]["max_length"]))
    model.load_state_dict(state)
    return model.eval()


@torch.inference_mode()
def eval_baseline(m: Manifest, split: SplitData) -> dict:
    """The baseline's Recall@K rows (as CLIP's, :func:`clipq.train.recall.retrieval_rows`) and its training record."""
    from .recall import retrieval_rows

    model = load_baseline(m)
    img = torch.cat([F.normalize(model.encode_image(split.pixels[i : i + 256]), dim=-1)
                     for i in range(0, len(split.pixels), 256)]).numpy()
    rows = retrieval_rows(_Encoder(model, load_tokenizer(m, "clip")), img, split.captions)
    keep = ("single", "ensemble", "template_rows", "descriptions", "queries")
    return {**{k: rows[k] for k in keep}, "training": m.extra.get("training", {}).get("dual_encoder")}
