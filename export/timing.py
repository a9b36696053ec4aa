"""Latency measurement shared by the export's adopt-or-not decisions and by ``clipq bench``.

Candidates are timed interleaved (A, B, C, A, B, C, ...) so that a noisy neighbour on a shared
machine slows them all alike instead of whichever happened to run at that moment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def make_session(path: str | os.PathLike[str], threads: int | None = None, *, opt_level: str = "all",
                 providers: list[str] | None = None, spin: bool = False) -> Any:
    """A CPU onnxruntime session with the runtime's settings (sequential, N intra-op threads).

    ``spin=False`` (the default here) stops idle worker threads from busy-waiting: when several
    sessions are timed interleaved in one process, a session's spinning threads would otherwise
    steal the cores of the one timed next.
    """
    import onnxruntime as ort

    from clipq.runtime.backends.ort import session_options

    so = session_options(threads, spin=spin, graph_optimization=opt_level)
    return ort.InferenceSession(str(Path(path)), sess_options=so, providers=providers or ["CPUExecutionProvider"])


def session_runner(sess: Any) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """feeds -> first output of an onnxruntime session (extra feed names are dropped)."""
    names = [i.name for i in sess.get_inputs()]
    out = sess.get_outputs()[0].name

    def run(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return sess.run([out], {n: feeds[n] for n in names})[0]

    return run


def interleaved(fns: Mapping[str, Callable[[], Any]], *, rounds: int = 10, warmup: int = 1,
                budget_s: float | None = None) -> dict[str, np.ndarray]:
    """Time several zero-argument callables interleaved.

    Args:
        fns: name -> callable (one timed call each per round).
        rounds: Maximum rounds.
        warmup: Untimed rounds first (allocation, first-run planning).
        budget_s: Stop after the round in which this many seconds have passed (at least 3 rounds).

    Returns:
        name -> array of per-call seconds.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: np.asarray(v) for k, v in times.items()}


def summarize(seconds: np.ndarray, items_per_call: int) -> dict[str, float]:
    """p50/p95/p99 latency in ms, mean, and items per second (from the median)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50 = float(np.percentile(ms, 50))
    return {
        "p50_ms": p50,
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": int(ms.size),
        "items_per_s": float(items_per_call / (p50 / 1000.0)) if p50 > 0 else float("inf"),
    }
