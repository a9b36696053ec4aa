"""The backend contract, and the one place that decides how task inputs reach a backend.

Backends move tensors; task classes do pre- and post-processing. ``OrtBackend`` (in-process
onnxruntime) and ``TritonBackend`` (tritonclient over HTTP/gRPC) implement one protocol with the
same tensor names (from the manifest's model specs).

How a task's user inputs become backend calls is a *path*, chosen once per backend by
:func:`task_path`:

- :class:`TensorPath`: images are decoded and preprocessed and texts tokenised here, and the
  networks run on tensors (in process; a server that does not describe itself);
- ``ServerPath`` (:mod:`clipq.runtime.backends.remote`): images go as encoded bytes and texts as
  strings to the server's ensembles, which decode, preprocess and tokenise there; a remote backend
  offers it through its ``task_path()`` method.

Task logic is written once, as generators that yield the backend calls each step needs (a list of
:class:`Call`) and receive their outputs. :class:`Driver` runs such a generator against a blocking
backend (one call at a time) or an asyncio one (the calls of a step concurrently), so the task
classes have one copy of their logic for both.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from .errors import InvalidInputError
from .manifest import Manifest, ModelSpec

T = TypeVar("T")


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


# -- calls and their drivers ---------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One backend call of a task step.

    Attributes:
        model: The model (network or server ensemble) to run.
        feeds: Its named inputs.
        start: Index of the call's first row in the caller's whole batch: an input error the
            backend reports for row ``i`` is raised for item ``start + i``.
        sources: Per row, how an error names the item (a path, ``<123 bytes>``), where known here.
    """

    model: str
    feeds: Mapping[str, Any]
    start: int = 0
    sources: Sequence[str | None] | None = None

    def relocate(self, exc: BaseException) -> BaseException:
        """The same input error, its index moved into the caller's batch and its item named."""
        if not isinstance(exc, InvalidInputError) or exc.index is None:
            return exc
        i = exc.index
        source = self.sources[i] if self.sources is not None and 0 <= i < len(self.sources) else exc.source
        return type(exc)(exc.reason, index=self.start + i, source=source)


#: a task step generator: yields calls, receives their outputs (same order), returns the result
Steps = Generator[list[Call], list[dict[str, np.ndarray]], T]


class Driver:
    """Runs task step generators against one backend: blocking, or asyncio when ``infer`` is a coroutine.

    Attributes:
        aio: Whether :meth:`run` returns an awaitable.
        window: Calls per step: 1 for a blocking backend (chunks go one by one, memory stays
            bounded), the backend's ``max_in_flight`` for an asyncio one (chunks run concurrently).
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.aio = inspect.iscoroutinefunction(getattr(backend, "infer", None))
        self.window = max(1, int(getattr(backend, "max_in_flight", 8))) if self.aio else 1

    def run(self, steps: Steps[T]) -> Any:
        """Run ``steps`` to completion: its result, or (asyncio backend) an awaitable of it."""
        return self._run_async(steps) if self.aio else self._run_sync(steps)

    def _run_sync(self, steps: Steps[T]) -> T:
        try:
            calls = next(steps)
            while True:
                outs = []
                for c in calls:
                    try:
                        outs.append(self.backend.infer(c.model, c.feeds))
                    except Exception as e:  # noqa: BLE001 - re-raised, moved into the caller's batch
                        err = c.relocate(e)
                        if err is e:
                            raise
                        raise err from e
                calls = steps.send(outs)
        except StopIteration as stop:
            return stop.value

    async def _run_async(self, steps: Steps[T]) -> T:
        try:
            calls = next(steps)
            while True:
                # every call finishes before the first error is raised: none is left running unobserved
                got = await asyncio.gather(*(self.backend.infer(c.model, c.feeds) for c in calls),
                                           return_exceptions=True)
                for c, g in zip(calls, got):
                    if isinstance(g, BaseException):
                        err = c.relocate(g)
                        raise err from (g if err is not g else None)
                calls = steps.send(list(got))
        except StopIteration as stop:
            return stop.value


def chunked(make_call: Callable[[int, int], Call], n: int, batch: int, window: int, *, progress: bool = False,
            desc: str = "") -> Steps[list[dict[str, np.ndarray]]]:
    """Split ``n`` rows into chunks of ``batch``, ``window`` calls per step; returns every chunk's outputs.

    ``make_call(start, end)`` builds the call of rows ``[start, end)`` (preprocessing them), so a
    blocking backend never holds more than one chunk's tensors.
    """
    bounds = [(s, min(n, s + batch)) for s in range(0, n, batch)]
    groups = [bounds[i:i + window] for i in range(0, len(bounds), window)]
    outs: list[dict[str, np.ndarray]] = []
    for group in _progress(groups, len(groups), progress, desc):
        outs.extend((yield [make_call(s, e) for s, e in group]))
    return outs


def gather_rows(outs: Sequence[Mapping[str, np.ndarray]], name: str, n: int, dim: int) -> np.ndarray:
    """Output ``name`` of every chunk, joined: float32 [n, dim] (an empty batch gives [0, dim])."""
    if not outs:
        return np.zeros((n, dim), np.float32)
    return np.ascontiguousarray(np.concatenate([np.asarray(o[name], np.float32) for o in outs]))


def _progress(it: Sequence[Any], total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a base dependency
        return it
    return tqdm(it, total=total, desc=desc, unit="batch")


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
    return TensorPath(backend, max_pixels=max_pixels, window=window)


class TensorPath:
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
        name, dim = self._out(network)

        def call(s: int, e: int) -> Call:
            return Call(network, {"pixel_values": self.preprocessor(items[s:e], start=s)}, s)

        outs = yield from chunked(call, len(items), batch, self.window, progress=progress, desc=network)
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
