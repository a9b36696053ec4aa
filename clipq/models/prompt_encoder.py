"""all-MiniLM-L6-v2 as a plain module: BertModel, mean pooling over the mask, L2 normalisation.

This is exactly what sentence-transformers computes for this model (tested against it); as a plain
module it exports to ONNX (``prompt_text``) so the runtime can embed new prompts without torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SentenceEncoder(nn.Module):
    """input_ids, attention_mask [B,L] -> sentence_embeds [B,384], normalised."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    @classmethod
    def pretrained(cls) -> SentenceEncoder:
        from .factory import build_lm

        return cls(build_lm("minilm")).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)
