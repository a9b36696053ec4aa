"""How task inputs reach a backend: the path protocol, the one place that chooses, and the local path.

A *path* turns a task's user inputs into backend calls, chosen once per backend by :func:`task_path`:

- :class:`LocalPath`: images are decoded and preprocessed and texts tokenised here, and the
  networks run on tensors (in process; a server that does not describe itself);
- ``ServerPath`` (:mod:`clipq.runtime.server_path`): images go as encoded bytes and texts as
  strings to the server's ensembles, which decode, preprocess and tokenise there; a remote backend
  offers it through its ``task_path()`` method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .contract import Call, Steps, chunked, gather_rows
from .manifest import Manifest


# -- paths ---------------------------------------------------------------------------------------
class TaskPath(Protocol):
    """How task inputs reach a backend. Every method is a step generator (see :class:`Driver`).

    ``images`` / ``texts`` return the raw rows of a network's result (the task normalises);
    ``texts`` and ``vqa`` also return per-text truncation flags. A server's path may offer more
    (``serves(model)`` and ``describe``: the image -> prompt ensemble, see
    :class:`~clipq.runtime.img2prompt.ImageToPrompt`).
    """

    remote: bool
    window: int

    def batch(self, network: str, requested: int) -> int: ...

    def images(self, network: str, items: Sequence[Any], batch: int, progress: bool = False) -> Steps[np.ndarray]: ...

    def texts(self, network: str, items: Sequence[str], batch: int,
              progress: bool = False) -> Steps[tuple[np.ndarray, list[bool]]]: ...

    def vqa(self, image_embeds: np.ndarray, questions: Sequence[str],
            batch: int) -> Steps[tuple[np.ndarray, list[bool]]]: ...


def task_path(backend: Any, *, max_pixels: int | None, window: int) -> TaskPath:
    """The path of ``backend``: its own ``task_path(...)`` where it offers one (a server), else tensors here."""
    own = getattr(backend, "task_path", None)
    if own is not None:
        return own(max_pixels=max_pixels, window=window)
    return LocalPath(backend, max_pixels=max_pixels, window=window)


class LocalPath:
    """Decode, preprocess and tokenise in this process; run the networks on tensors.

    Args:
        backend: Any backend that runs the manifest's networks.
        max_pixels: Decompression-bomb limit for input images.
        window: Calls per step (see :class:`Driver`).
    """

    remote = False

    def __init__(self, backend: Any, *, max_pixels: int | None, window: int = 1) -> None:
        self.backend = backend
        self.manifest: Manifest = backend.manifest
        self.max_pixels = max_pixels
        self.window = window
        self._pre: Any = None
        self._tokenizers: dict[str, Any] = {}

    # -- what runs here
    @property
    def preprocessor(self) -> Any:
        if self._pre is None:
            from .preprocess import ImagePreprocessor

            self._pre = ImagePreprocessor.from_manifest(self.manifest, max_pixels=self.max_pixels)
        return self._pre

    def tokenizer(self, kind: str) -> Any:
        """The manifest's tokenizer ``kind`` (``clip``, ``lm``, ``prompt``), loaded once."""
        if kind not in self._tokenizers:
            from .text import TextTokenizer

            self._tokenizers[kind] = TextTokenizer.from_manifest(self.manifest, kind)
        return self._tokenizers[kind]

    def batch(self, network: str, requested: int) -> int:
        return max(1, min(int(requested), int(self.manifest.model(network).max_batch_size)))

    def _out(self, network: str) -> tuple[str, int]:
        t = self.manifest.model(network).outputs[0]
        return t.name, int(t.shape[-1])

    # -- steps
    def images(self, network: str, items: Sequence[Any], batch: int, progress: bool = False) -> Steps[np.ndarray]:
        from .feed import BatchFeed

        name, dim = self._out(network)
        # decoded in the process's pool of threads, the next chunk while the engine runs this one
        feed = BatchFeed(self.preprocessor, items, batch)

        def call(s: int, e: int) -> Call:
            return Call(network, {"pixel_values": feed(s, e)}, s)

        try:
            outs = yield from chunked(call, len(items), batch, self.window, progress=progress, desc=network)
        finally:
            feed.close()
        return gather_rows(outs, name, len(items), dim)

    def texts(self, network: str, items: Sequence[str], batch: int,
              progress: bool = False) -> Steps[tuple[np.ndarray, list[bool]]]:
        name, dim = self._out(network)
        tok = self.tokenizer(self.manifest.model(network).meta.get("tokenizer", "clip"))
        truncated: list[bool] = []

        def call(s: int, e: int) -> Call:
            enc = tok(items[s:e], start=s)
            truncated.extend(enc.truncated)  # calls are built in order
            return Call(network, enc.as_inputs(), s)

        outs = yield from chunked(call, len(items), batch, self.window, progress=progress, desc=network)
        return gather_rows(outs, name, len(items), dim), truncated

    def vqa(self, image_embeds: np.ndarray, questions: Sequence[str],
            batch: int) -> Steps[tuple[np.ndarray, list[bool]]]:
        from .specs import VQA

        name, dim = self._out(VQA)
        tok = self.tokenizer(self.manifest.model(VQA).meta.get("tokenizer", "lm"))
        truncated: list[bool] = []

        def call(s: int, e: int) -> Call:
            enc = tok(questions[s:e], start=s)
            truncated.extend(enc.truncated)
            return Call(VQA, {"image_embeds": np.ascontiguousarray(image_embeds[s:e]), **enc.as_inputs()}, s)

        outs = yield from chunked(call, len(questions), batch, self.window)
        return gather_rows(outs, name, len(questions), dim), truncated
