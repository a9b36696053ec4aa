"""``clipq bench --target triton``: in-process vs Triton HTTP vs gRPC, with and without dynamic batching.

What is measured, on the artifacts given with ``--artifacts`` (``--quick``: a tiny generated set):

1. Batch-1 latency at concurrency 1, interleaved: in-process, Triton gRPC and Triton HTTP requests
   alternate in rounds, so background load on a shared machine falls on all three alike. Targets
   ``clip_image`` (ready tensors), ``embed_image`` (encoded JPEG bytes in: preprocessing counts, in
   the server for Triton, in the caller for in-process) and ``embed_text`` (text in).
2. Throughput and latency at concurrency 1, 4 and 16 (one client connection per concurrent
   caller, batch 1 per request) for each target and protocol, with the server's dynamic batching
   on and off (two servers side by side), plus the in-process baseline (threads sharing one
   onnxruntime session); every mode of a (target, concurrency) is measured in one pass and again
   in reverse order. The server's own statistics give the average batch it actually ran.
3. With ``--perf-analyzer``: Triton's ``perf_analyzer`` against ``clip_image``, ``embed_text`` and
   ``embed_image`` (gRPC, concurrency 1/4/16), its output saved next to clipq's figures.

``--triton-pipelines fused,ensemble`` (the default) serves ``embed_image`` / ``embed_text`` as fused
models (one Python-stub hop) on the main servers and starts one more server with the ensembles
(two hops): its gRPC latency is interleaved with the other modes (``grpc-ensemble``) and
perf_analyzer runs against both. Every server cell records Triton's per-stage statistics (queue,
compute input / infer / output, mean per request, from the statistics endpoint) of each model the
request crosses, so what remains of the serving overhead is attributed to a stage.

Writes ``<out>/triton.json`` (every cell), ``<out>/triton.md`` (tables and the issue's targets,
met or not: :mod:`.triton_report`) and ``<out>/triton.png``; perf_analyzer's output goes to
``<out>/perf_analyzer/`` (:mod:`.perf_analyzer`). Imports only the standard library at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .triton_report import Cell, Setup, markdown, perf_targets, plot, targets

TARGET_NETWORK = {"clip_image": "clip_image", "embed_image": "clip_image", "embed_text": "clip_text"}
#: the models a request to each target crosses, the target first (ensembles: its steps too)
TARGET_MODELS = {"clip_image": ("clip_image",), "embed_image": ("embed_image", "preprocess_image", "clip_image"),
                 "embed_text": ("embed_text", "tokenize_clip", "clip_text")}
#: the targets a fused repository serves as one model (clipq.serving.plan.FUSABLE)
FUSED_TARGETS = ("embed_image", "embed_text")
#: Triton's per-request inference statistics, in the order a request passes them
STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
CAPTIONS = (
    "a photo of a red circle on the left", "two blue squares at the top", "a green triangle in the middle",
    "three yellow stars on the right", "a purple cross at the bottom", "an orange heart next to a black ring",
    "one white diamond in the center", "a small gray circle and a big red square",
)


def add_arguments(parser: Any) -> None:
    parser.add_argument("--artifacts", help="artifact directory to benchmark (required unless --quick)")
    parser.add_argument("--triton-models", default="clip_image,embed_image,embed_text",
                        help="targets (default %(default)s)")
    parser.add_argument("--triton-concurrency", default="1,4,16", help="concurrency levels (default %(default)s)")
    parser.add_argument("--triton-protocols", default="grpc,http", help="protocols (default %(default)s)")
    parser.add_argument("--triton-seconds", type=float, default=6.0, help="minimum seconds per cell")
    parser.add_argument("--triton-requests", type=int, default=48, help="minimum requests per cell")
    parser.add_argument("--triton-rounds", type=int, default=12, help="interleaved rounds of the latency table")
    parser.add_argument("--triton-queue-delay-us", type=int, default=100, help="dynamic batching queue delay")
    parser.add_argument("--triton-spin", choices=("on", "off"), default="off",
                        help="onnxruntime thread spinning, in process and in the server alike")
    parser.add_argument("--triton-variant", default="fp32",
                        help="graph variant served and run in process alike (default %(default)s)")
    parser.add_argument("--triton-pipelines", default="fused,ensemble",
                        help="how embed_image/embed_text are served: the first on the main servers, the others "
                             "on one more server each, compared at batch 1 and with perf_analyzer (default %(default)s)")
    parser.add_argument("--perf-analyzer", action="store_true", help="also run Triton's perf_analyzer")
    parser.add_argument("--perf-analyzer-bin", help="perf_analyzer binary (default: .venv-perf/bin, then PATH)")


# -- inputs -------------------------------------------------------------------------------------------
def _sample_images(size: int, n: int = 8) -> list[bytes]:
    """Encoded JPEGs a little larger than the model input and not square, like real uploads."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = max(int(size * 1.5), 48), max(int(size * 1.125), 36)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 255, size=3)
        img = np.stack([(xx * 255 // w + base[0]) % 255, (yy * 255 // h + base[1]) % 255,
                        np.full_like(xx, base[2])], axis=-1).astype(np.uint8)
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 20, size=img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _Workload:
    """Request functions per target and mode, and the data they send."""

    def __init__(self, manifest: Any, spin: bool, variant: str = "fp32"):
        from clipq.runtime.backends.ort import OrtBackend
        from clipq.runtime.preprocess import ImagePreprocessor
        from clipq.runtime.text import TextTokenizer

        self.manifest = manifest
        self.pre = ImagePreprocessor.from_manifest(manifest)
        self.tok = TextTokenizer.from_manifest(manifest, "clip")
        self.jpegs = _sample_images(int(manifest.preprocessing["size"]))
        self.pixels = [self.pre([j]) for j in self.jpegs]  # [1, 3, S, S] each
        self.ort = OrtBackend(manifest, variant=variant, spin=spin)
        for net in set(TARGET_NETWORK.values()):
            self.ort.session(net)

    def inproc(self, target: str) -> Callable[[int], Any]:
        if target == "clip_image":
            return lambda i: self.ort.infer("clip_image", {"pixel_values": self.pixels[i % len(self.pixels)]})
        if target == "embed_image":
            return lambda i: self.ort.infer("clip_image", {"pixel_values": self.pre([self.jpegs[i % len(self.jpegs)]])})
        return lambda i: self.ort.infer("clip_text", self.tok([CAPTIONS[i % len(CAPTIONS)]]).as_inputs())

    def remote(self, target: str, backend: Any) -> Callable[[int], Any]:
        if target == "clip_image":
            return lambda i: backend.infer("clip_image", {"pixel_values": self.pixels[i % len(self.pixels)]})
        if target == "embed_image":
            return lambda i: backend.infer("embed_image", {"image": [self.jpegs[i % len(self.jpegs)]]})
        return lambda i: backend.infer("embed_text", {"text": [CAPTIONS[i % len(CAPTIONS)]]})


# -- measurement -----------------------------------------------------------------------------------------
def _percentiles(lat_ms: list[float]) -> dict[str, float]:
    import numpy as np

    if not lat_ms:
        return {"p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    a = np.asarray(lat_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _run_load(make_fn: Callable[[int], Callable[[int], Any]], concurrency: int, min_requests: int,
              min_seconds: float, max_seconds: float,
              on_start: Callable[[], None] | None = None) -> tuple[list[float], int, float]:
    """``concurrency`` closed-loop callers, each with its own function (own connection).

    Args:
        make_fn: Caller index -> its request function (called with a request counter).
        concurrency: Number of callers.
        min_requests, min_seconds: The window ends once both are reached ...
        max_seconds: ... or after this long.
        on_start: Called after the warm-up, right before the measured window (server stats).

    Returns:
        (latencies in ms, errors, wall seconds of the measured window).
    """
    fns = [make_fn(c) for c in range(concurrency)]
    for c, fn in enumerate(fns):  # warm every connection (sequentially: not part of the window)
        for i in range(2):
            fn(c * 1000 + i)
    if on_start is not None:
        on_start()
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_barrier = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker(c: int) -> None:
        fn = fns[c]
        i = 0
        start_barrier.wait()
        while not stop.is_set():
            t = time.perf_counter()
            try:
                fn(c * 100_000 + i)
                ok = True
            except Exception:  # noqa: BLE001 - counted, the cell reports them
                ok = False
            dt = (time.perf_counter() - t) * 1e3
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    errors[0] += 1
            i += 1

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(concurrency)]
    for t in threads:
        t.start()
    start_barrier.wait()
    t0 = time.perf_counter()
    while True:
        time.sleep(0.02)
        el = time.perf_counter() - t0
        with lock:
            n = len(lat) + errors[0]
        if (n >= min_requests and el >= min_seconds) or el >= max_seconds:
            break
    stop.set()
    wall = time.perf_counter() - t0
    for t in threads:
        t.join(60)
    return lat, errors[0], wall


def _server_counts(backend: Any, model: str) -> tuple[int, int]:
    stats = backend.statistics(model)
    ms = (stats.get("model_stats") or [{}])[0]
    return int(ms.get("inference_count", 0)), int(ms.get("execution_count", 0))


def _batch_model(server: Any, target: str) -> str:
    """The model whose executions show the batches a target runs: the fused model itself, else the network."""
    fused = getattr(server, "clipq_pipeline", "ensemble") == "fused" and target in FUSED_TARGETS
    return target if fused else TARGET_NETWORK[target]


def stage_snapshot(backend: Any, models: tuple[str, ...] | list[str]) -> dict[str, dict[str, int]]:
    """Cumulative counts and nanoseconds of every stage of each model (the statistics endpoint)."""
    out: dict[str, dict[str, int]] = {}
    for m in models:
        try:
            stats = backend.statistics(m)
        except Exception:  # noqa: BLE001 - a model the repository does not serve
            continue
        ms = (stats.get("model_stats") or [{}])[0]
        inf = ms.get("inference_stats") or {}
        row = {"inference_count": int(ms.get("inference_count", 0) or 0),
               "execution_count": int(ms.get("execution_count", 0) or 0)}
        for stage in ("success", *STAGES):
            row[f"{stage}_count"] = int((inf.get(stage) or {}).get("count", 0) or 0)
            row[f"{stage}_ns"] = int((inf.get(stage) or {}).get("ns", 0) or 0)
        out[m] = row
    return out


def stage_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per model that ran requests in between: mean ms per request of each stage, requests, average batch."""
    out: dict[str, dict[str, Any]] = {}
    for m, a in after.items():
        b = before.get(m, {})
        d = {k: v - b.get(k, 0) for k, v in a.items()}
        n = d["success_count"]
        if n <= 0:
            continue
        row: dict[str, Any] = {"requests": n, "total_ms": d["success_ns"] / n / 1e6}
        for stage in STAGES:
            row[f"{stage}_ms"] = d[f"{stage}_ns"] / max(d[f"{stage}_count"], 1) / 1e6
        row["avg_batch"] = d["inference_count"] / d["execution_count"] if d["execution_count"] else None
        out[m] = row
    return out


def _latency_table(setup: Setup, work: _Workload, server: Any, cells: list[Cell],
                   others: dict[str, Any] | None = None) -> None:
    """Batch 1, concurrency 1, in-process / gRPC / HTTP (/ gRPC to the other pipelines' servers) interleaved in rounds.

    Each server's per-stage statistics over the rounds are recorded with its cells (both
    protocols' requests: the server-side stages do not depend on the protocol).
    """
    from clipq.runtime.backends.triton import TritonBackend

    others = others or {}
    backends = {"grpc": TritonBackend(server.grpc_url, work.manifest),
                "http": TritonBackend(server.http_url, work.manifest)}
    for name, srv in others.items():
        backends[f"grpc-{name}"] = TritonBackend(srv.grpc_url, work.manifest)
    server_of = {"grpc": server, "http": server, **{f"grpc-{n}": s for n, s in others.items()}}
    per_round = 2 if setup.quick else 5
    try:
        for target in setup.targets:
            modes = [*setup.protocols, *(f"grpc-{n}" for n in others if target in FUSED_TARGETS)]
            fns = {"in-process": work.inproc(target), **{m: work.remote(target, backends[m]) for m in modes}}
            for fn in fns.values():
                for i in range(3):
                    fn(i)
            watched = {id(server_of[m]): (server_of[m], backends[m]) for m in modes}
            before = {k: stage_snapshot(b, TARGET_MODELS[target]) for k, (_, b) in watched.items()}
            lat: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(setup.rounds):
                order = list(fns) if r % 2 == 0 else list(reversed(fns))  # ABBA: no mode always goes first
                for mode in order:
                    for i in range(per_round):
                        t = time.perf_counter()
                        fns[mode](r * per_round + i)
                        lat[mode].append((time.perf_counter() - t) * 1e3)
            stages = {k: stage_delta(before[k], stage_snapshot(b, TARGET_MODELS[target]))
                      for k, (_, b) in watched.items()}
            for mode, values in lat.items():
                srv = server_of.get(mode)
                cells.append(Cell(target, mode, 1, "-" if mode == "in-process" else "on", len(values), 0,
                                  phase="latency", **_percentiles(values),
                                  throughput_rps=1e3 / max(_percentiles(values)["mean_ms"], 1e-9),
                                  loadavg_1m=os.getloadavg()[0],
                                  pipeline=getattr(srv, "clipq_pipeline", "-") if srv else "-",
                                  server_stages=stages.get(id(srv)) if srv else None))
            print(f"  latency {target}: " + ", ".join(
                f"{m} p50 {_percentiles(v)['p50_ms']:.2f} ms" for m, v in lat.items()), flush=True)
    finally:
        for b in backends.values():
            b.close()


def _measure(setup: Setup, work: _Workload, target: str, conc: int, mode: str, server: Any | None,
             max_s: float) -> tuple[list[float], int, float, tuple[int, int]]:
    """One pass of one cell: latencies, errors, wall seconds and the server's (inferences, executions)."""
    from clipq.runtime.backends.triton import TritonBackend

    opened: list[Any] = []

    def make(c: int) -> Callable[[int], Any]:
        if server is None:
            return work.inproc(target)
        b = TritonBackend(server.grpc_url if mode == "grpc" else server.http_url, work.manifest)
        opened.append(b)
        return work.remote(target, b)

    stats = TritonBackend(server.grpc_url, work.manifest) if server is not None else None
    before: list[Any] = [(0, 0), {}]

    def snapshot() -> None:  # after the warm-up: warm-up requests run alone and would skew the batch size
        if stats is not None:
            before[0] = _server_counts(stats, _batch_model(server, target))
            before[1] = stage_snapshot(stats, TARGET_MODELS[target])

    stages: dict[str, Any] = {}
    try:
        lat, errors, wall = _run_load(make, conc, setup.requests, setup.seconds, max_s, on_start=snapshot)
        counts = (0, 0)
        if stats is not None:
            after = _server_counts(stats, _batch_model(server, target))
            counts = (after[0] - before[0][0], after[1] - before[0][1])
            stages = stage_delta(before[1], stage_snapshot(stats, TARGET_MODELS[target]))
    finally:
        for b in [*opened, *([stats] if stats else [])]:
            b.close()
    return lat, errors, wall, counts, stages


def _batch_ceiling(setup: Setup, work: _Workload) -> list[dict[str, Any]]:
    """What batching can buy at most: in-process time per item at batch 1 and at larger batches.

    Dynamic batching can only raise throughput by as much as the model itself runs faster per
    item in a batch (plus filling the gaps between requests), so this bounds what the grid can
    show. Batch sizes are interleaved in rounds against background load.
    """
    import numpy as np

    rows = []
    for net in sorted({TARGET_NETWORK[t] for t in setup.targets}):
        if net == "clip_image":
            base = np.concatenate(work.pixels)
            def feeds(b: int, base: Any = base) -> dict[str, Any]:
                return {"pixel_values": np.ascontiguousarray(np.resize(base, (b, *base.shape[1:])))}
        else:
            def feeds(b: int) -> dict[str, Any]:
                return work.tok([CAPTIONS[i % len(CAPTIONS)] for i in range(b)]).as_inputs()
        sizes = [1, 4] if setup.quick else [1, 4, 8, 16]
        per_item: dict[int, list[float]] = {b: [] for b in sizes}
        prepared = {b: feeds(b) for b in sizes}
        for b in sizes:
            work.ort.infer(net, prepared[b])
        for r in range(2 if setup.quick else 3):
            for b in (sizes if r % 2 == 0 else list(reversed(sizes))):
                reps = max(1, 8 // b)
                t = time.perf_counter()
                for _ in range(reps):
                    work.ort.infer(net, prepared[b])
                per_item[b].append((time.perf_counter() - t) * 1e3 / (reps * b))
        med = {b: float(np.median(v)) for b, v in per_item.items()}
        rows.append({"network": net, "ms_per_item": med, "speedup_vs_batch1": {b: med[1] / med[b] for b in sizes}})
        print(f"  batching ceiling {net}: " + ", ".join(f"b={b} {med[b]:.1f} ms/item ({med[1] / med[b]:.2f}x)"
                                                       for b in sizes), flush=True)
    return rows


def _grid(setup: Setup, work: _Workload, servers: dict[str, Any], cells: list[Cell]) -> None:
    """Every (target, concurrency): all modes in one order, then in the reverse order (ABBA).

    Both servers (dynamic batching on and off) run side by side and the in-process baseline is
    measured in the same passes, so a change in background load during the run falls on every
    mode alike instead of on whichever happened to run at that moment.
    """
    max_s = setup.seconds * 4 + 10
    modes: list[tuple[str, str]] = [("in-process", "-")]
    modes += [(p, b) for p in setup.protocols for b in ("on", "off") if b in servers]
    passes = 1 if setup.quick else 2
    for target in setup.targets:
        for conc in setup.concurrency:
            acc: dict[tuple[str, str], dict[str, Any]] = {
                m: {"lat": [], "errors": 0, "wall": 0.0, "inf": 0, "exec": 0, "stages": None} for m in modes}
            for p in range(passes):
                for mode, batching in (modes if p % 2 == 0 else list(reversed(modes))):
                    server = None if mode == "in-process" else servers[batching]
                    lat, errors, wall, (d_inf, d_exec), stages = _measure(setup, work, target, conc, mode, server,
                                                                         max_s)
                    a = acc[(mode, batching)]
                    a["lat"] += lat
                    a["errors"] += errors
                    a["wall"] += wall
                    a["inf"] += d_inf
                    a["exec"] += d_exec
                    a["stages"] = a["stages"] or stages  # the first pass's: one consistent window
            for (mode, batching), a in acc.items():
                avg_batch = a["inf"] / a["exec"] if a["exec"] else None
                srv = None if mode == "in-process" else servers[batching]
                cell = Cell(target, mode, conc, batching, len(a["lat"]), a["errors"], **_percentiles(a["lat"]),
                            throughput_rps=len(a["lat"]) / a["wall"] if a["wall"] > 0 else 0.0,
                            server_avg_batch=avg_batch, loadavg_1m=os.getloadavg()[0],
                            pipeline=getattr(srv, "clipq_pipeline", "-") if srv else "-",
                            server_stages=a["stages"] or None)
                cells.append(cell)
                extra = f", server batch {avg_batch:.2f}" if avg_batch else ""
                print(f"  {target:11s} {mode:10s} c={conc:<2d} batching={batching:3s} "
                      f"{cell.throughput_rps:7.1f} req/s  p50 {cell.p50_ms:7.2f} ms{extra}"
                      + (f"  ({cell.errors} errors)" if cell.errors else ""), flush=True)


def _quick_artifacts(root: Path) -> Path:
    """``--quick`` without ``--artifacts``: untrained ``test``-preset networks, exported fp32 (seconds)."""
    from clipq.export import ExportOptions, export_artifacts
    from clipq.models.io import build_random_artifacts

    build_random_artifacts(root, "test")
    export_artifacts(root, ExportOptions(networks=sorted(set(TARGET_NETWORK.values())), parity_batches=(1, 4),
                                         timing_rounds=2))
    return root


# -- entry point -----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from clipq.runtime.errors import ArtifactError
    from clipq.runtime.manifest import Manifest
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    out = Path(getattr(args, "out", None) or "bench_results")
    out.mkdir(parents=True, exist_ok=True)
    quick = bool(getattr(args, "quick", False))
    work_dir = Path(tempfile.mkdtemp(prefix="clipq-bench-triton-"))
    # SIGTERM ends the run through the finally blocks below: servers stopped, temp files removed
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        artifacts = getattr(args, "artifacts", None)
        if artifacts is None:
            if not quick:
                raise ArtifactError("clipq bench --target triton needs --artifacts DIR (or --quick for tiny models)")
            artifacts = _quick_artifacts(work_dir / "artifacts")
        manifest = Manifest.load(artifacts)

        def ints(s: str) -> list[int]:
            return [int(x) for x in str(s).split(",") if x.strip()]

        setup = Setup(
            artifacts=Path(artifacts), quick=quick,
            targets=[t for t in str(getattr(args, "triton_models", "clip_image,embed_image,embed_text")).split(",") if t],
            # --quick checks the outputs, not the scaling: two levels are enough
            concurrency=ints(getattr(args, "triton_concurrency", "1,4,16"))[:2] if quick
            else ints(getattr(args, "triton_concurrency", "1,4,16")),
            protocols=[p for p in str(getattr(args, "triton_protocols", "grpc,http")).split(",") if p],
            seconds=0.0 if quick else float(getattr(args, "triton_seconds", 6.0)),
            requests=8 if quick else int(getattr(args, "triton_requests", 48)),
            rounds=2 if quick else int(getattr(args, "triton_rounds", 12)),
            queue_delay_us=int(getattr(args, "triton_queue_delay_us", 100)),
            spin=getattr(args, "triton_spin", "off") == "on",
            variant=str(getattr(args, "triton_variant", "fp32")),
            pipelines=[p for p in str(getattr(args, "triton_pipelines", "fused,ensemble")).split(",") if p],
        )
        bad = [p for p in setup.pipelines if p not in ("fused", "ensemble")]
        if bad or not setup.pipelines:
            raise ArtifactError(f"--triton-pipelines takes fused and/or ensemble, got {setup.pipelines}")
        unknown = set(setup.targets) - set(TARGET_NETWORK)
        if unknown:
            raise ArtifactError(f"unknown triton bench targets {sorted(unknown)}; choose from {sorted(TARGET_NETWORK)}")
        env = {"cpus": os.cpu_count(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
               "python": sys.version.split()[0], "server_version": "?"}
        print(f"triton bench: {setup.artifacts} targets {setup.targets}, concurrency {setup.concurrency}, "
              f"protocols {setup.protocols}, load average {env['loadavg']}", flush=True)
        work = _Workload(manifest, setup.spin, setup.variant)
        cells: list[Cell] = []
        ceiling = _batch_ceiling(setup, work)
        perf: dict[str, Any] | None = None
        models = ["clip_image", "clip_text", "preprocess_image", "tokenize_clip", "embed_image", "embed_text"]
        with contextlib.ExitStack() as stack:
            servers: dict[str, Any] = {}
            others: dict[str, Any] = {}
            main = setup.pipelines[0]
            for key, batching, pipeline in [("on", True, main), ("off", False, main),
                                            *((p, True, p) for p in setup.pipelines[1:])]:
                opts = RenderOptions(variant=setup.variant, dynamic_batching=batching,
                                     max_queue_delay_us=setup.queue_delay_us, allow_spinning=setup.spin,
                                     pipelines=pipeline)
                repo = render_repository(manifest, work_dir / f"repo_{key}", opts, models=models)
                server = stack.enter_context(TritonServer(repo.path))
                server.clipq_pipeline = pipeline  # type: ignore[attr-defined]
                (servers if key in ("on", "off") else others)[key] = server
                env["server_version"] = server.version
                print(f"tritonserver {server.version}, {pipeline} pipelines, dynamic batching "
                      f"{'on' if batching else 'off'}: ready in {server.startup_s:.1f} s at {server.grpc_url}", flush=True)
            _latency_table(setup, work, servers["on"], cells, others)
            _grid(setup, work, servers, cells)
            if getattr(args, "perf_analyzer", False):
                from .perf_analyzer import run_perf_analyzer

                perf = run_perf_analyzer(setup, servers["on"], manifest, out, getattr(args, "perf_analyzer_bin", None),
                                         CAPTIONS, others=others, images=work.jpegs)
        work.ort.close()
        met = targets(cells, setup) + perf_targets(cells, perf, setup)
        env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        result = {"setup": {**asdict(setup), "artifacts": str(setup.artifacts)}, "environment": env,
                  "cells": [asdict(c) for c in cells], "targets": met, "batching_ceiling": ceiling,
                  "perf_analyzer": perf}
        (out / "triton.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "triton.md").write_text(markdown(setup, cells, met, env, perf, ceiling))
        plot(setup, cells, out / "triton.png")
        print((out / "triton.md").read_text())
        print(f"wrote {out / 'triton.json'}, {out / 'triton.md'}, {out / 'triton.png'}")
        return 0
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
