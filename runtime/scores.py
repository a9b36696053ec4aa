"""What an (image, text) score means, per model family: CLIP's cosine, SigLIP's sigmoid probability.

CLIP was trained with a softmax over a batch: its cosine orders candidates but is not a probability on
its own (typical matching pairs sit near 0.25-0.35). SigLIP was trained with a sigmoid per pair:
``sigmoid(logit_scale * cos + logit_bias)`` is the model's probability that the text matches the image,
meaningful alone, so a threshold such as 0.5 means something. The import records the family's score in
the manifest (``extra["scores"]``: ``{"kind": "cosine"}`` or ``{"kind": "sigmoid", "logit_scale": s,
"logit_bias": b}``, ``s`` already exponentiated); :class:`PairScore` reads it, on every backend (a
clipq server passes it on in its description). Image-to-image similarity stays a cosine in both
families: the sigmoid was trained on image-text pairs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArtifactError

KINDS = ("cosine", "sigmoid")


@dataclass(frozen=True)
class PairScore:
    """The score of image-text pairs from their cosine.

    Attributes:
        kind: ``"cosine"`` (CLIP) or ``"sigmoid"`` (SigLIP).
        logit_scale: the multiplier of the cosine (``exp`` of the model's ``logit_scale`` parameter).
        logit_bias: added before the sigmoid.
    """

    kind: str = "cosine"
    logit_scale: float = 1.0
    logit_bias: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArtifactError(f"unknown pair score kind {self.kind!r} (known: {', '.join(KINDS)})")
        if not (np.isfinite(self.logit_scale) and np.isfinite(self.logit_bias)):
            raise ArtifactError("the pair score's logit_scale and logit_bias must be finite")

    @classmethod
    def from_manifest(cls, manifest: Any) -> PairScore:
        """The manifest's ``extra["scores"]``; cosine where it has none (every CLIP before this field)."""
        d = dict(((getattr(manifest, "extra", None) or {}).get("scores")) or {})
        return cls(
            kind=str(d.get("kind", "cosine")),
            logit_scale=float(d.get("logit_scale", 1.0)),
            logit_bias=float(d.get("logit_bias", 0.0)),
        )

    @property
    def name(self) -> str:
        """How the score is described to a user ("cosine" or "sigmoid probability")."""
        return "cosine" if self.kind == "cosine" else "sigmoid probability"

    def __call__(self, cosine: Any) -> np.ndarray:
        """Scores of cosines (any shape), float32; the identity for CLIP."""
        c = np.asarray(cosine, dtype=np.float64)
        if self.kind == "cosine":
            return c.astype(np.float32)
        z = self.logit_scale * c + self.logit_bias
        # the logistic function without overflow for large |z|
        out = np.where(
            z >= 0, 1.0 / (1.0 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1.0 + np.exp(-np.abs(z)))
        )
        return out.astype(np.float32)

    def cosine_of(self, score: float) -> float:
        """The cosine a score corresponds to (the inverse), for turning a ``min_score`` into a cosine cut.

        Raises:
            ValueError: a sigmoid score outside (0, 1).
        """
        if self.kind == "cosine":
            return float(score)
        if not 0.0 < score < 1.0:
            raise ValueError(f"a sigmoid score threshold must be in (0, 1), got {score}")
        return float((np.log(score / (1.0 - score)) - self.logit_bias) / self.logit_scale)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "cosine":
            return {"kind": "cosine"}
        return {"kind": self.kind, "logit_scale": self.logit_scale, "logit_bias": self.logit_bias}
