"""Modules with exactly the exported signatures (tensor names in clipq.runtime.specs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClipImageTower(nn.Module):
    """pixel_values [B,3,S,S] -> L2-normalised image_embeds [B,D]."""

    def __init__(self, clip):
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = clip.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output  # [B, hidden]
        return F.normalize(self.visual_projection(pooled), dim=-1)


class ClipTextTower(nn.Module):
    """input_ids, attention_mask [B,L] -> L2-normalised text_embeds [B,D]."""

    def __init__(self, clip):
        super().__init__()
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)
