"""The backend contract: backends move tensors, task classes do pre/post-processing.

``OrtBackend`` (in-process onnxruntime) and ``TritonBackend`` (tritonclient over HTTP/gRPC)
implement the same protocol with the same tensor names (from the manifest's model specs), so
every task class and CLI command runs unchanged on either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from .manifest import Manifest, ModelSpec


@runtime_checkable
class Backend(Protocol):
    manifest: Manifest

    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` on named input arrays; returns its named outputs (numpy)."""
        ...

    def spec(self, model: str) -> ModelSpec:
        """The model's tensor contract (from the manifest)."""
        ...

    def health(self) -> None:
        """Raise ``BackendUnavailable`` unless the backend can serve."""
        ...

    def close(self) -> None: ...
