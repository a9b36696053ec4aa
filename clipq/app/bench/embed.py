"""``clipq bench --target embed``: `clipq embed` throughput in process, on local Ray, and through Triton.

One run on one machine, the same collection and artifacts for every mode: in process (one backend,
all cores), local Ray Data with ``--embed-workers`` actors (the cores split between them), and a
Triton server on loopback (``clipq serve``'s launcher; the client sends image bytes, the server
decodes, preprocesses and runs the tower). Startup (Ray, server) is reported apart from the
steady-state images/s. From the Triton figure, the sizing note: replicas needed for a target rate.
Writes ``<out>/embed.json``, ``embed.md`` and ``embed.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("in-process", "ray", "triton")


def add_arguments(parser: Any) -> None:
    g = parser
    g.add_argument("--artifacts", default=None, help="artifact directory (default: $CLIPQ_ARTIFACTS or the demo's)")
    g.add_argument("--embed-images", default=None, help="embed: image folder (default: the demo's test images)")
    g.add_argument("--embed-workers", type=int, default=2, help="embed: Ray actors")
    g.add_argument("--embed-modes", default=",".join(MODES), help="embed: subset of " + ",".join(MODES))
    g.add_argument("--embed-target", type=float, default=1000.0, help="embed: images/s the sizing note is for")


def _images(args: argparse.Namespace, artifacts: Path, work: Path) -> Path:
    if args.embed_images:
        return Path(args.embed_images)
    demo = artifacts.parent / "data" / "images" / "test"
    if demo.is_dir() and not args.quick:
        return demo
    import numpy as np
    from PIL import Image

    d = work / "images"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(128 if args.quick else 1000):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"im{i:05d}.png")
    return d


def _one(mode: str, images: Path, artifacts: Path, work: Path, workers: int, server: str | None) -> dict[str, Any]:
    from clipq.app.batch_embed import embed_collection

    out = work / f"out-{mode}"
    t0 = time.perf_counter()
    cores = os.cpu_count() or 2
    n = sum(1 for _ in images.iterdir())
    s = embed_collection([images], out, artifacts=str(artifacts), server=server, ray=mode == "ray",
                         workers=workers, shard_size=max(16, n // (4 * workers)), batch_size=32,
                         threads=max(1, cores // workers) if mode == "ray" else (None if server else cores),
                         progress=False)
    wall = time.perf_counter() - t0
    return {"mode": mode, "images": s.images, "embedded": s.embedded, "wall_s": round(wall, 3),
            "startup_s": round(s.startup_s, 2), "images_per_s": round(s.images_per_s, 1),
            "encode_images_per_s": round(s.encode_images_per_s, 1), "workers": s.workers}


def run(args: argparse.Namespace) -> int:
    from clipq.runtime.connect import default_artifacts

    artifacts = Path(args.artifacts or default_artifacts())
    modes = [m for m in args.embed_modes.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="clipq-bench-embed-"))
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}
    try:
        images = _images(args, artifacts, work)
        for mode in modes:
            if mode == "ray":
                try:
                    import ray  # noqa: F401
                except ImportError:
                    notes[mode] = "skipped: ray is not installed (pip install clipq[scale])"
                    continue
            if mode == "triton":
                rows_or_note = _with_server(images, artifacts, work, args.embed_workers)
                if isinstance(rows_or_note, str):
                    notes[mode] = rows_or_note
                    continue
                rows.append(rows_or_note)
                continue
            rows.append(_one(mode, images, artifacts, work, args.embed_workers, None))
            print(json.dumps(rows[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "artifacts": str(artifacts), "rows": rows, "notes": notes, "sizing": _sizing(rows, args.embed_target)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "embed.md").write_text(markdown(result))
    _plot(result, out / "embed.png")
    print(markdown(result))
    return 0


def _with_server(images: Path, artifacts: Path, work: Path, workers: int) -> dict[str, Any] | str:
    from clipq.runtime.errors import ServerError
    from clipq.serving import TritonServer, render_repository

    repo = work / "repository"
    try:
        render_repository(artifacts, repo)
        t0 = time.perf_counter()
        with TritonServer(repo) as server:
            startup = time.perf_counter() - t0
            row = _one("triton", images, artifacts, work, workers, server.grpc_url)
    except ServerError as e:
        return f"skipped: tritonserver could not start here ({e})"
    row["server_startup_s"] = round(startup, 2)
    print(json.dumps(row))
    return row


def _sizing(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    triton = next((r for r in rows if r["mode"] == "triton"), None)
    if not triton or not triton["images_per_s"]:
        return {}
    per = float(triton["encode_images_per_s"] or triton["images_per_s"])
    return {"per_replica_images_per_s": per, "target_images_per_s": target,
            "replicas": math.ceil(target / per), "hours_per_million": round(1e6 / per / 3600, 2)}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`clipq embed` throughput ({result['machine']['cores']} cores, {result['machine']['cpu']})", "",
             "| mode | workers | images | images/s (after start-up) | images/s (in shards) | start-up s | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['mode']} | {r['workers']} | {r['embedded']} | {r['images_per_s']} | "
                     f"{r['encode_images_per_s']} | {r.get('server_startup_s', r['startup_s'])} | {r['wall_s']} |")
    for mode, note in result["notes"].items():
        lines.append(f"| {mode} | - | - | {note} | - | - | - |")
    s = result.get("sizing")
    if s:
        lines += ["", f"One replica (this machine's cores) embeds {s['per_replica_images_per_s']:.0f} images/s: "
                      f"1M images take {s['hours_per_million']} h on one, and {s['target_images_per_s']:.0f} images/s "
                      f"needs about {s['replicas']} replicas (assuming linear scaling behind a load balancer)."]
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = result["rows"]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["mode"] for r in rows], [r["images_per_s"] for r in rows], color="#4c72b0")
    ax.set_ylabel("images/s")
    ax.set_title("clipq embed throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
