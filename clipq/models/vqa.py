"""VQA (seed CLIQQA): CLIP image embedding -> mapper -> prefix tokens + question -> LM -> answers.

Variants as in the paper:
    v1  no mapper (one linear projection to the prefix), frozen LM, 1 epoch, lr 1e-4
    v2  mapper (Linear, ReLU, Linear; hidden 1024), frozen LM, 1 epoch
    v3  v2 + one more epoch with the LM unfrozen (lr 1e-5 on the LM)
    v4  v3 + one more epoch
and the equal-time control (not in the paper):
    v2t v2 trained on, LM still frozen, for as long as v3's unfrozen epoch took, so that v3's gain
        over it is the LM's and not the extra training time's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VqaVariant:
    name: str
    use_mapper: bool
    epochs_frozen: int
    epochs_unfrozen: int
    init_from: str | None  # continue training from this variant's weights
    time_of: str | None = None  # train (LM frozen) for as long as this variant's own training took
    label: str = ""


VQA_VARIANTS: dict[str, VqaVariant] = {
    "v1": VqaVariant("v1", use_mapper=False, epochs_frozen=1, epochs_unfrozen=0, init_from=None,
                      label="V1 (no mapper, LM frozen, 1 epoch)"),
    "v2": VqaVariant("v2", use_mapper=True, epochs_frozen=1, epochs_unfrozen=0, init_from=None,
                      label="V2 (mapper, LM frozen, 1 epoch)"),
    "v3": VqaVariant("v3", use_mapper=True, epochs_frozen=0, epochs_unfrozen=1, init_from="v2",
                      label="V3 (V2 + 1 epoch, LM unfrozen)"),
    "v4": VqaVariant("v4", use_mapper=True, epochs_frozen=0, epochs_unfrozen=1, init_from="v3",
                      label="V4 (V3 + 1 more epoch)"),
    "v2t": VqaVariant("v2t", use_mapper=True, epochs_frozen=0, epochs_unfrozen=0, init_from="v2", time_of="v3",
                       label="V2 + as long as V3's epoch took, LM frozen (equal-time control)"),
}
#: the paper's variants, in order; ``v2t`` is trained after v3 when both are asked for
PAPER_VQA_VARIANTS = ("v1", "v2", "v3", "v4")


@dataclass(frozen=True)
class VQAConfig:
    embed_dim: int
    n_answers: int
    prefix_len: int = 4
    use_mapper: bool = True
    mapper_hidden: int = 1024
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class VQAModel(nn.Module):
    """forward(image_embeds [B,D], input_ids [B,L], attention_mask [B,L]) -> logits [B,A]."""

    def __init__(self, cfg: VQAConfig, lm: nn.Module):
        super().__init__()
        from .factory import lm_hidden_size

        self.cfg = cfg
        self.lm = lm
        hidden = lm_hidden_size(lm)
        out = cfg.prefix_len * hidden
        if cfg.use_mapper:
            self.mapper = nn.Sequential(
                nn.Linear(cfg.embed_dim, cfg.mapper_hidden), nn.ReLU(), nn.Linear(cfg.mapper_hidden, out)
            )
        else:  # v1: no mapping network, only the projection the shapes require
            self.mapper = nn.Linear(cfg.embed_dim, out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(hidden, cfg.n_answers)
        self.hidden = hidden

    def word_embeddings(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    def freeze_lm(self, frozen: bool = True) -> None:
        for p in self.lm.parameters():
            p.requires_grad_(not frozen)

    def forward(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        b = image_embeds.shape[0]
        prefix = self.mapper(image_embeds).reshape(b, self.cfg.prefix_len, self.hidden)  # [B, P, H]
        tokens = self.word_embeddings()(input_ids)  # [B, L, H]
        embeds = torch.cat([prefix, tokens], dim=1)  # [B, P+L, H]
        mask = torch.cat(
            [torch.ones(b, self.cfg.prefix_len, dtype=attention_mask.dtype, device=attention_mask.device),
             attention_mask],
            dim=1,
        )
        hidden = self.lm(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # [B, P+L, H]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # mean over prefix + question tokens
        return self.head(self.dropout(pooled))


class VQAProbs(nn.Module):
    """The exported graph: softmax over the answer vocabulary."""

    def __init__(self, model: VQAModel):
        super().__init__()
        self.model = model

    def forward(self, image_embeds, input_ids, attention_mask):
        return torch.softmax(self.model(image_embeds, input_ids, attention_mask), dim=-1)
