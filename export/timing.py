"""Latency measurement shared by the export's adopt-or-not decisions and by ``clipq bench``.

Candidates are timed interleaved (A, B, C, A, B, C, ...) so that a noisy neighbour on a shared
machine slows them all alike instead of whichever happened to run at that moment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
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


# -- one engine per process ---------------------------------------------------------------------------
# Two engines in one process disturb each other (thread pools that spin or pin cores: OpenVINO next to
# an onnxruntime session ran clip_image 1.25-1.8x slower than alone, at batch 1 and 8, on a 2-core Intel
# Xeon of the Sapphire Rapids class with AMX), so engines that are compared run in worker processes of
# their own, driven in alternating rounds: only one works at a time while the others wait on their pipe.


class WorkerError(RuntimeError):
    """A timing worker failed to start or to answer."""


class ProcessEngine:
    """A callable ``feeds -> output`` built and run in a process of its own.

    Args:
        factory: ``"module:function"``; ``function(**kwargs)`` returns ``fn`` or ``(fn, info)`` where
            ``fn(feeds: dict[str, np.ndarray]) -> np.ndarray``; ``info`` is a JSON-able dict.
        kwargs: JSON-able keyword arguments of the factory.
        env: Extra environment variables of the worker (e.g. ``OMP_NUM_THREADS``).
        timeout_s: How long to wait for the worker to build its engine or answer one command.
        wait: Wait for the engine to be built; ``False`` returns at once (several workers then build
            concurrently) and :meth:`ready` waits.

    Raises:
        WorkerError: the worker died or the factory raised (the message carries its error).
    """

    def __init__(self, factory: str, kwargs: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 1800.0, name: str = "", wait: bool = True):
        import json
        import subprocess
        import sys

        self.name = name or factory
        self.timeout_s = timeout_s
        self._json = json
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from clipq.export.timing import _worker_main; sys.exit(_worker_main())"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self._buf = b""
        self.info: dict[str, Any] = {}
        self._pending = True
        self._send({"cmd": "init", "factory": factory, "kwargs": dict(kwargs or {})})
        if wait:
            self.ready()

    def ready(self) -> ProcessEngine:
        """Wait until the worker has built its engine (``info`` is then what the factory returned)."""
        if self._pending:
            self._pending = False
            try:
                self.info = self._reply().get("info") or {}
            except BaseException:
                self.close()
                raise
        return self

    def _readline(self, timeout: float) -> bytes:
        import select

        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerError(f"{self.name}: worker exited (status {self.proc.wait()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _send(self, msg: Mapping[str, Any]) -> None:
        if self.proc.poll() is not None:
            raise WorkerError(f"{self.name}: worker is not running (status {self.proc.returncode})")
        self.proc.stdin.write((self._json.dumps(msg) + "\n").encode())  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def _reply(self) -> dict[str, Any]:
        reply = self._json.loads(self._readline(self.timeout_s))
        if not reply.get("ok"):
            raise WorkerError(f"{self.name}: {reply.get('error', 'failed')}")
        return reply

    def _call(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        self.ready()
        self._send(msg)
        return self._reply()

    def time(self, feeds: str | os.PathLike[str], *, calls: int = 5, warmup: int = 1,
             budget_s: float | None = None) -> np.ndarray:
        """Seconds of up to ``calls`` timed calls on the feeds saved at ``feeds`` (``np.savez``)."""
        r = self._call({"cmd": "time", "feeds": str(feeds), "calls": int(calls), "warmup": int(warmup),
                        "budget_s": budget_s})
        return np.asarray(r["seconds"], dtype=np.float64)

    def run(self, feeds: str | os.PathLike[str], out: str | os.PathLike[str]) -> np.ndarray:
        """The output on the saved feeds (written by the worker to ``out``, an ``.npy`` file)."""
        self._call({"cmd": "run", "feeds": str(feeds), "out": str(out)})
        return np.load(out)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a worker that does not quit is stopped the hard way
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def alternating(engines: Mapping[str, ProcessEngine], feeds: Mapping[int, str | os.PathLike[str]], *, rounds: int = 2,
                calls: int = 5, budget_s: float | None = None, pause_s: float = 0.05,
                drop_over: float | None = None) -> dict[str, dict[int, list[np.ndarray]]]:
    """Time every engine at every batch, in alternating rounds (the order rotates each round).

    Args:
        engines: name -> worker.
        feeds: batch size -> saved feeds (timed in this order: smallest first gives ``drop_over`` its
            cheapest evidence).
        rounds: Rounds; in each, every (batch, engine) gets one cell of up to ``calls`` calls.
        calls, budget_s: Calls per cell, and seconds after which a cell stops (at least one call).
        pause_s: Idle time between cells, so the previous engine's worker threads settle.
        drop_over: In the first round, an engine whose median at a batch is over this many times the
            fastest engine's there is not timed further (its cells stop where it was dropped). None
            times every engine everywhere.

    Returns:
        name -> batch -> one array of per-call seconds per round (fewer for a dropped engine).
    """
    names = list(engines)
    out: dict[str, dict[int, list[np.ndarray]]] = {n: {b: [] for b in feeds} for n in names}
    dropped: set[str] = set()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        for b, path in feeds.items():
            live = [n for n in order if n not in dropped]
            for n in live:
                out[n][b].append(engines[n].time(path, calls=calls, warmup=1 if r == 0 else 0, budget_s=budget_s))
                time.sleep(pause_s)
            if drop_over is not None and r == 0 and len(live) > 1:
                med = {n: float(np.median(out[n][b][-1])) for n in live}
                fastest = min(med.values())
                dropped.update(n for n in live if med[n] > drop_over * fastest)
    return out


def completed(secs: Mapping[str, Mapping[int, Sequence[np.ndarray]]]) -> tuple[dict[str, dict[int, list[np.ndarray]]],
                                                                             dict[str, dict[int, float]]]:
    """Split :func:`alternating`'s result: the engines timed at every batch, and the dropped ones with
    the median ms of each batch they were timed at."""
    full = {k: {b: list(v) for b, v in per.items()} for k, per in secs.items() if all(per.values())}
    dropped = {k: {b: round(float(np.median(v[0])) * 1e3, 4) for b, v in per.items() if v}
               for k, per in secs.items() if k not in full}
    return full, dropped


def _load_feeds(path: str, cache: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if path not in cache:
        with np.load(path) as z:
            cache[path] = {k: z[k] for k in z.files}
    return cache[path]


def _first_output(y: Any) -> np.ndarray:
    if isinstance(y, Mapping):
        y = next(iter(y.values()))
    if hasattr(y, "detach"):  # a torch tensor from a PyTorch peer
        y = y.detach().float().numpy()
    return np.asarray(y)


def _worker_main() -> int:
    """The worker loop: one JSON command per stdin line, one JSON answer per line on the real stdout."""
    import importlib
    import json
    import sys
    import traceback

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, never into the protocol
    fn: Callable[[dict[str, np.ndarray]], Any] | None = None
    cache: dict[str, dict[str, np.ndarray]] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            if cmd == "quit":
                break
            if cmd == "init":
                mod, _, attr = msg["factory"].partition(":")
                made = getattr(importlib.import_module(mod), attr)(**msg.get("kwargs", {}))
                fn, info = made if isinstance(made, tuple) else (made, {})
                reply: dict[str, Any] = {"ok": True, "info": info}
            elif fn is None:
                raise RuntimeError("not initialised")
            elif cmd == "time":
                feeds = _load_feeds(msg["feeds"], cache)
                for _ in range(int(msg.get("warmup", 1))):
                    fn(feeds)
                secs: list[float] = []
                budget, start = msg.get("budget_s"), time.perf_counter()
                for _ in range(max(1, int(msg.get("calls", 5)))):
                    t0 = time.perf_counter()
                    fn(feeds)
                    secs.append(time.perf_counter() - t0)
                    if budget is not None and time.perf_counter() - start > float(budget):
                        break
                reply = {"ok": True, "seconds": secs}
            elif cmd == "run":
                np.save(msg["out"], _first_output(fn(_load_feeds(msg["feeds"], cache))))
                reply = {"ok": True}
            else:
                raise RuntimeError(f"unknown command {cmd!r}")
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent as an answer
            if not isinstance(e, (LookupError, ImportError)):  # those say "does not apply here": no trace
                traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        proto.write(json.dumps(reply) + "\n")
    return 0
