"""The backend contract: what a backend offers, and how task logic drives it.

Backends move tensors; task classes do pre- and post-processing. ``OrtBackend`` (in-process
onnxruntime), ``OpenVinoBackend``, ``RoutedBackend`` and ``TritonBackend`` (tritonclient over
HTTP/gRPC) implement one protocol with the same tensor names (from the manifest's model specs).
How a task's inputs reach a backend (decoded here, or sent as bytes to a server) is a *path*:
:mod:`clipq.runtime.local_path` and :mod:`clipq.runtime.server_path`.

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
