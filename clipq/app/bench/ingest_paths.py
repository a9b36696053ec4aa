"""The ingest benchmark's other clipq paths: through Triton (a thin client sending JPEG bytes) and with Ray.

- :func:`triton_rows`: a real ``tritonserver`` on 127.0.0.1 (free ports) serving the repository
  ``clipq serve`` renders by default (fused ``embed_image``: decode in the server's decode pool,
  the manifest's CPU default engine); ``concurrency`` callers, each with its own gRPC connection,
  send one photo's encoded bytes per request until every photo of the folder is embedded. Per
  level: images/s, request latency percentiles and Triton's own per-stage statistics (queue,
  compute input / infer / output) of ``embed_image`` with the average batch it ran.
- :func:`ray_row`: ``clipq embed --ray`` (:func:`clipq.app.batch_embed.embed_collection` on a local
  Ray, one actor per core, a shard per actor): images/s after Ray's start-up and inside the shards.

Every figure comes from the same run as the in-process rows; with shared cores compare within a run only.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: the models a request to the fused embed_image crosses (its statistics are the request's)
TRITON_MODELS = ("embed_image",)


def _percentiles(lat_ms: list[float]) -> dict[str, float]:
    import numpy as np

    if not lat_ms:
        return {"p50_ms": 0.0, "p90_ms": 0.0}
    a = np.asarray(lat_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90))}


def _one_pass(clients: list[Any], data: list[bytes], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Every photo once, ``concurrency`` callers taking the next one in turn: (seconds, latencies ms, errors)."""
    nxt = [0]
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[str] = []

    def caller(c: int) -> None:
        client = clients[c]
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(data):
                return
            t = time.perf_counter()
            try:
                client.infer("embed_image", {"image": [data[i]]})
            except Exception as e:  # noqa: BLE001 - counted and reported with the row
                with lock:
                    errors.append(f"{i}: {type(e).__name__}: {e}")
                continue
            dt = 1e3 * (time.perf_counter() - t)
            with lock:
                lat.append(dt)

    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in range(concurrency)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0, lat, errors


def _settled_delta(client: Any, before: dict[str, Any], answered: int, snapshot: Any, delta: Any,
                   timeout_s: float = 3.0) -> dict[str, Any]:
    """Triton's per-stage delta once its statistics count every answered request.

    The server records a request's statistics after its response is on the way, so a snapshot
    taken the moment the client has the last answer may miss it: poll until the count is there.
    """
    base = before.get("embed_image", {}).get("success_count", 0)
    end = time.perf_counter() + timeout_s
    while True:
        after = snapshot(client, TRITON_MODELS)
        if after.get("embed_image", {}).get("success_count", 0) - base >= answered or time.perf_counter() > end:
            return delta(before, after)
        time.sleep(0.02)


def parse_instances(spec: Any) -> tuple[int, int]:
    """``2`` or ``"2"`` -> (2, 0); ``"2x1"`` -> (2, 1): instances and engine threads (0: the engine's default).

    Raises:
        InvalidInputError: not N or NxT with N >= 1, T >= 0.
    """
    from clipq.runtime.errors import InvalidInputError

    text = str(spec).strip().lower()
    try:
        n, _, t = text.partition("x")
        got = (int(n), int(t) if t else 0)
    except ValueError:
        got = (0, -1)
    if got[0] < 1 or got[1] < 0:
        raise InvalidInputError(f"Triton instances must be N or NxT (instances x engine threads), got {spec!r}")
    return got


def triton_rows(artifacts: str | Path, files: list[Path], concurrency: list[int], repeats: int,
                work: Path | None = None, instances: tuple[Any, ...] | list[Any] = (1,)) -> list[dict[str, Any]]:
    """Through Triton at each concurrency level (see the module docstring), one server per instance count.

    ``instances``: instances of the fused ``embed_image`` (``clipq serve --instances``), one server
    each, all running at once: at each concurrency level their passes alternate (server 1, server 2,
    server 1, ...), so load from other jobs on a shared machine falls on each alike. An entry
    ``"NxT"`` serves N instances with T engine threads each (``clipq serve --threads``; N alone:
    the engine's default threads).

    Returns:
        Per instance count: ``{"server_version", "startup_s", "instances", "rows": [{concurrency,
        images_per_s, p50_ms, p90_ms, errors, stages}]}``; ``stages`` is Triton's mean ms per request
        of each stage of ``embed_image`` over the best pass, with its average batch.

    Raises:
        clipq.serving.server.ServerError: a server cannot be found or started.
    """
    import contextlib

    from clipq.runtime import connect
    from clipq.runtime.manifest import Manifest
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    from .triton import stage_delta, stage_snapshot

    own = work is None
    root = Path(tempfile.mkdtemp(prefix="clipq-ingest-triton-")) if work is None else Path(work)
    data = [f.read_bytes() for f in files]  # a thin client sends what is on disk
    m = Manifest.load(artifacts)
    try:
        with contextlib.ExitStack() as stack:
            servers, clients = [], []
            for spec in instances:
                n, threads = parse_instances(spec)
                # what `clipq serve ARTIFACTS --instances N --threads T` renders: fused pipelines, the CPU default
                repo = render_repository(m, root / f"repository_{n}x{threads}",
                                         RenderOptions(pipelines="fused", instances=n, intra_op_threads=threads),
                                         models=["clip_image", "embed_image", "clipq_info"])
                server = stack.enter_context(TritonServer(repo.path))
                print(f"ingest: tritonserver {server.version} ({n} instance(s) of embed_image, engine threads "
                      f"{threads or ('the cores split between them' if n > 1 else 'default')}) ready in "
                      f"{server.startup_s:.1f} s at {server.grpc_url}", flush=True)
                cs = [connect(server=server.grpc_url) for _ in range(max(concurrency))]
                stack.callback(lambda cs=cs: [c.close() for c in cs])
                for c in cs:  # connections and the server's first requests are start-up
                    c.infer("embed_image", {"image": [data[0]]})
                servers.append(server)
                clients.append(cs)
            runs: list[dict[str, Any]] = [{"server_version": s.version, "startup_s": s.startup_s,
                                           "instances": parse_instances(n)[0], "threads": parse_instances(n)[1],
                                           "pipelines": "fused", "rows": []} for s, n in zip(servers, instances)]
            for conc in concurrency:
                best: list[Any] = [None] * len(servers)
                for _ in range(repeats):
                    for k, cs in enumerate(clients):  # alternating: one pass of each server in turn
                        before = stage_snapshot(cs[0], TRITON_MODELS)
                        dt, lat, errors = _one_pass(cs, data, conc)
                        stages = _settled_delta(cs[0], before, len(lat), stage_snapshot, stage_delta)
                        if best[k] is None or dt < best[k][0]:
                            best[k] = (dt, lat, errors, stages)
                for k, (dt, lat, errors, stages) in enumerate(best):
                    row = {"concurrency": conc, "images_per_s": (len(data) - len(errors)) / dt,
                           **_percentiles(lat), "errors": errors, "stages": stages.get("embed_image", {})}
                    print(f"ingest: triton x{instances[k]} concurrency {conc}: {row['images_per_s']:.1f} images/s, "
                          f"p50 {row['p50_ms']:.1f} ms", flush=True)
                    runs[k]["rows"].append(row)
            return runs
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def ray_row(artifacts: str | Path, folder: Path, n_files: int, workers: int, repeats: int,
            batch_size: int = 8) -> dict[str, Any]:
    """``clipq embed --ray`` on the folder: a local Ray with ``workers`` actors, one shard each.

    Each pass starts and stops its own Ray (as the command does); the best pass is kept.

    Returns:
        ``{"workers", "images_per_s" (after ray.init, actors' start counted), "in_shard_images_per_s",
        "startup_s" (ray.init), "seconds", "skipped"}``.
    """
    from clipq.app.batch_embed import embed_collection

    shard = max(1, math.ceil(n_files / max(1, workers)))
    best: Any = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="clipq-ingest-ray-") as out:
            s = embed_collection([folder], out, artifacts=str(artifacts), ray=True, workers=workers,
                                 shard_size=shard, batch_size=batch_size, progress=False)
        if best is None or s.images_per_s > best.images_per_s:
            best = s
    row = {"workers": best.workers, "images_per_s": best.images_per_s,
           "in_shard_images_per_s": best.encode_images_per_s, "startup_s": best.startup_s,
           "seconds": best.seconds, "skipped": best.skipped, "shard_size": shard, "batch_size": batch_size}
    print(f"ingest: ray ({best.workers} actors): {row['images_per_s']:.1f} images/s after ray.init "
          f"({row['startup_s']:.1f} s), {row['in_shard_images_per_s']:.1f} in shards", flush=True)
    return row
