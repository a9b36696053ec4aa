"""Modules with exactly the exported signatures (tensor names in clipq.runtime.specs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factory import image_features, text_features


class ClipImageTower(nn.Module):
    """pixel_values [B,3,S,S] -> L2-normalised image_embeds [B,D]."""

    def __init__(self, clip):
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = getattr(clip, "visual_projection", None)  # None: SigLIP

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_features(self, pixel_values), dim=-1)


class ClipTextTower(nn.Module):
    """input_ids, attention_mask [B,L] -> L2-normalised text_embeds [B,D].

    A SigLIP text tower does not read the mask (:func:`text_features`); the graph keeps the input so
    that every text graph takes the same two tensors.
    """

    def __init__(self, clip):
        super().__init__()
        self.text_model = clip.text_model
        self.text_projection = getattr(clip, "text_projection", None)  # None: SigLIP

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            # SigLIP: the mask is not used, and the exporter drops an unused input; adding the sum of an
            # empty slice of it (always 0) keeps it in the graph without touching the ids
            input_ids = input_ids + attention_mask[:, :0].sum(dim=1, keepdim=True)
        return F.normalize(text_features(self, input_ids, attention_mask), dim=-1)
