"""Image -> prompt embedding (seed 2401.06167).

Model A: CLIP vision + FC1, LayerNorm, FC2, LayerNorm into the 384-d all-MiniLM-L6-v2 space.
Model B (KNN over CLIP image embeddings) lives in the runtime (``clipq.runtime.fusion``): it is an
index, not a network. The ensemble ``alpha*A + (1-alpha)*B``, re-normalised, is ``EnsembleHead``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .factory import PROMPT_DIM, clip_embed_dim, image_features


class PromptRegressorA(nn.Module):
    """pixel_values [B,3,S,S] -> L2-normalised prompt embedding [B,384]."""

    def __init__(self, clip, hidden: int = 1024, out_dim: int = PROMPT_DIM):
        super().__init__()
        self.vision_model = clip.vision_model
        self.visual_projection = getattr(clip, "visual_projection", None)  # None: SigLIP (no projection)
        self.head = self.make_head(clip_embed_dim(clip), hidden, out_dim)

    @staticmethod
    def make_head(in_dim: int, hidden: int = 1024, out_dim: int = PROMPT_DIM) -> nn.Sequential:
        """FC1, LayerNorm, FC2, LayerNorm (the paper's head), on CLIP's projected image features."""
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim)
        )

    def backbone_parameters(self):
        proj = [] if self.visual_projection is None else list(self.visual_projection.parameters())
        return list(self.vision_model.parameters()) + proj

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = image_features(self, pixel_values)
        return F.normalize(self.head(feats), dim=-1)


class EnsembleHead(nn.Module):
    """(a [B,E], b [B,E], alpha [B,1]) -> normalize(alpha*a + (1-alpha)*b)."""

    def forward(self, a_embeds: torch.Tensor, b_embeds: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return F.normalize(alpha * a_embeds + (1.0 - alpha) * b_embeds, dim=-1)
