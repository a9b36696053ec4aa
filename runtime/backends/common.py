"""What every in-process backend shares: the input checks, dummy inputs, the host CPU's facts.

Torch-free. ``check_inputs`` is the one place a backend checks named arrays against a model spec,
so onnxruntime, OpenVINO and the Triton client refuse the same inputs with the same errors.
"""

from __future__ import annotations

import functools
import inspect
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendUnavailable, DTypeError, InvalidInputError, ShapeError
from ..manifest import ModelSpec

__all__ = ["ISA_FLAGS", "accepted_kwargs", "check_inputs", "cpu_facts", "dummy_inputs", "np_dtype"]

#: the CPU flags that decide which engine and precision is fastest (in /proc/cpuinfo spelling)
ISA_FLAGS = ("amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")


def np_dtype(name: str) -> np.dtype:
    """numpy dtype of a spec dtype name (``bytes`` is numpy's object dtype)."""
    return np.dtype(object) if name == "bytes" else np.dtype(name)


def check_inputs(spec: ModelSpec, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check named arrays against a model spec (names, dtypes, ranks, fixed dims, one batch size).

    Returns:
        The inputs as numpy arrays, in the spec's order.

    Raises:
        InvalidInputError: a missing or unexpected input name.
        DTypeError: an array of another dtype than the spec's.
        ShapeError: wrong rank, a fixed dimension that differs, or batch sizes that disagree.
    """
    names = [t.name for t in spec.inputs]
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise InvalidInputError(f"model {spec.name!r} has no input(s) {extra}; it takes {names}")
    feeds: dict[str, np.ndarray] = {}
    batch: int | None = None
    for t in spec.inputs:
        if t.name not in inputs:
            raise InvalidInputError(f"model {spec.name!r} needs input {t.name!r} (takes {names})")
        a = np.asarray(inputs[t.name])
        want = np_dtype(t.dtype)
        if a.dtype != want:
            raise DTypeError(f"{spec.name}.{t.name} must be {t.dtype}, got {a.dtype}", source=t.name)
        if a.ndim != len(t.shape):
            raise ShapeError(
                f"{spec.name}.{t.name} must have rank {len(t.shape)} {list(t.shape)}, got shape {list(a.shape)}",
                source=t.name,
            )
        for axis, (d, got) in enumerate(zip(t.shape, a.shape)):
            if d >= 0 and d != got:
                raise ShapeError(
                    f"{spec.name}.{t.name} axis {axis} must be {d} (shape {list(t.shape)}), got {list(a.shape)}",
                    source=t.name,
                )
        if batch is None:
            batch = int(a.shape[0])
        elif a.shape[0] != batch:
            raise ShapeError(f"{spec.name}: inputs disagree on the batch size ({batch} vs {a.shape[0]} in {t.name})")
        feeds[t.name] = a
    return feeds


def dummy_inputs(spec: ModelSpec, batch: int = 1, seq_len: int = 8) -> dict[str, np.ndarray]:
    """Zero-valued inputs of the right names, dtypes and shapes (batch ``batch``, dynamic seq ``seq_len``)."""
    out = {}
    for t in spec.inputs:
        shape = [batch if i == 0 else (seq_len if d < 0 else d) for i, d in enumerate(t.shape)]
        a = np.zeros(shape, dtype=np_dtype(t.dtype))
        if t.name == "attention_mask":
            a[:] = 1
        out[t.name] = a
    return out


def accepted_kwargs(cls: type, kw: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``kw`` that ``cls(...)`` takes (a routing backend passes each engine its own)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kw)
    return {k: v for k, v in kw.items() if k in params}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _threads_per_core() -> int | None:
    """Hardware threads per core as the OS sees it (``lscpu``'s "Thread(s) per core")."""
    base = Path("/sys/devices/system/cpu")
    sizes = set()
    for f in base.glob("cpu[0-9]*/topology/thread_siblings_list"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        n = 0
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            n += (int(hi) - int(lo) + 1) if hi else 1
        sizes.add(n)
    return max(sizes) if sizes else None


@functools.lru_cache(maxsize=1)
def _static_facts() -> dict[str, Any]:
    text = _cpuinfo()
    model, flags, mhz = platform.processor() or "?", set(), None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("?", "", "x86_64"):
            model = val.strip()
        elif key == "flags" and not flags:
            flags = set(val.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(val)
            except ValueError:
                pass
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        logical = os.cpu_count() or 1
    tpc = _threads_per_core()
    return {
        "cpu": model,
        "flags": {f: f in flags for f in ISA_FLAGS},
        "logical_cpus": logical,
        "threads_per_core": tpc,
        "cores": logical // tpc if tpc else None,
        "mhz": mhz,
    }


def cpu_facts(threads: int | None = None) -> dict[str, Any]:
    """The host CPU as the engine choice records it.

    Args:
        threads: The thread count a measurement used (recorded as ``threads``).

    Returns:
        ``{"cpu": model name, "flags": {amx_int8, amx_bf16, avx512_bf16, avx512_vnni, avx512f,
        avx_vnni, avx2: bool}, "logical_cpus", "threads_per_core", "cores", "mhz", "threads"}``.
    """
    facts = dict(_static_facts())
    facts["flags"] = dict(facts["flags"])
    facts["threads"] = int(threads) if threads else facts["logical_cpus"]
    return facts


def flags_text(flags: Mapping[str, bool]) -> str:
    """``amx_int8, avx512_vnni, avx2`` (the flags that are set), or ``none of ...``."""
    on = [f for f in ISA_FLAGS if flags.get(f)]
    return ", ".join(on) if on else f"none of {', '.join(ISA_FLAGS)}"


class InProcessModels:
    """``health``, ``warmup`` and the context manager of a backend that runs the manifest's model
    files in this process (onnxruntime, OpenVINO). A subclass has ``manifest``, ``_closed``,
    ``spec``, ``infer`` and ``close``, and opens one model (session, compiled model) in ``_open``."""

    def _open(self, model: str) -> Any:
        raise NotImplementedError

    def _graph_file(self, model: str, variant: str) -> tuple[str, Path]:
        """``model``'s graph file for ``variant``: its manifest path and the hash-checked file."""
        rel = self.spec(model).file_for(variant)  # type: ignore[attr-defined]
        if not rel:
            raise ArtifactError(f"{self.manifest.root}: model {model!r} has no graph file; run `clipq export`")  # type: ignore[attr-defined]
        return rel, self.manifest.resolve(rel)  # type: ignore[attr-defined]

    def _check_graph_inputs(self, model: str, rel: str, names: set[str]) -> None:
        """Raise ``ArtifactError`` unless the opened graph has every input the manifest declares."""
        missing = [t.name for t in self.spec(model).inputs if t.name not in names]  # type: ignore[attr-defined]
        if missing:
            raise ArtifactError(f"{rel}: graph lacks the inputs {missing} declared in the manifest")

    def health(self) -> None:
        """Raise ``BackendUnavailable`` unless every model file in the manifest opens."""
        if self._closed:  # type: ignore[attr-defined]
            raise BackendUnavailable("backend is closed")
        try:
            for name, spec in self.manifest.models.items():  # type: ignore[attr-defined]
                if spec.file:
                    self._open(name)
        except ArtifactError as e:
            raise BackendUnavailable(str(e)) from e

    def warmup(self, models: Sequence[str] | None = None, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run each model once per batch size on dummy inputs (first runs allocate and plan)."""
        names = list(models) if models else [n for n, s in self.manifest.models.items() if s.file]  # type: ignore[attr-defined]
        for name in names:
            for b in batch_sizes:
                self.infer(name, dummy_inputs(self.spec(name), b))  # type: ignore[attr-defined]

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]
