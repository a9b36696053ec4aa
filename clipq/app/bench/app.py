"""``clipq bench --target app``: what the HTTP layer costs, as measured numbers.

``/v1/embeddings`` of the app (``clipq app`` in its own process, JSON over keep-alive HTTP, one
client connection per concurrent caller) side by side with the same model through Triton directly
(the ``embed_text`` / ``embed_image`` ensembles, text and JPEG bytes in, over gRPC and HTTP) and in
process (``ClipEncoder`` on onnxruntime in the benchmark's own process: tokenising / decoding
included, as the app and the server do). Workloads: one caption, or one JPEG (as a base64 data URI
for the app, raw bytes for Triton), per request; concurrency 1 and 16 by default. All three run the
manifest's default graph variants. Every (workload, concurrency) measures each mode in turn and
again in reverse order (ABBA), so background load on a shared machine falls on all alike.

Where tritonserver cannot start the benchmark fails with the server's reason; ``--app-triton-protocols ''``
leaves the Triton column out on purpose. Writes
``<out>/app.json``, ``app.md`` and ``app.png``. Imports only the standard library at module level.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .triton import CAPTIONS, _percentiles, _quick_artifacts, _run_load, _sample_images

MODES = ("in-process", "app", "triton-grpc", "triton-http")
MODEL = {"text": "clip-text", "image": "clip-image"}
ENSEMBLE = {"text": ("embed_text", "text"), "image": ("embed_image", "image")}


def add_arguments(parser: Any) -> None:
    parser.add_argument("--artifacts", help="artifact directory to benchmark (required unless --quick)")
    parser.add_argument("--app-workloads", default="text,image", help="text and/or image (default %(default)s)")
    parser.add_argument("--app-concurrency", default="1,16", help="concurrency levels (default %(default)s)")
    parser.add_argument("--app-seconds", type=float, default=5.0, help="minimum seconds per cell")
    parser.add_argument("--app-requests", type=int, default=64, help="minimum requests per cell")
    parser.add_argument("--app-workers", type=int, default=4, help="the app's thread pool (clipq app --workers)")
    parser.add_argument("--app-triton-protocols", default="grpc,http",
                        help="Triton protocols (default %(default)s; '' for no Triton column)")


# -- the three ways in ------------------------------------------------------------------------------
class _AppProcess:
    """``clipq app`` on a free loopback port, in its own process (its GIL is not the caller's)."""

    def __init__(self, artifacts: Path, workers: int, log_path: Path) -> None:
        from clipq.serving.launcher import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "clipq.app.cli", "app", "--artifacts", str(artifacts), "--port", str(self.port),
               "--workers", str(workers), "--max-pending", "4096", "--no-access-log", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.startup_s = self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path, timeout_s: float = 180.0) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clipq app exited with {self.proc.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"clipq app did not answer /healthz within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class _Work:
    """Request functions per (mode, workload); each caller gets its own connection."""

    def __init__(self, manifest: Any) -> None:
        import clipq.runtime as rt

        self.manifest = manifest
        self.jpegs = _sample_images(int(manifest.preprocessing["size"]))
        self.uris = ["data:image/jpeg;base64," + base64.b64encode(j).decode() for j in self.jpegs]
        self.backend = rt.connect(manifest)
        self.encoder = rt.ClipEncoder(self.backend)
        self.app: _AppProcess | None = None
        self.triton: Any = None
        self.opened: list[Any] = []

    def maker(self, mode: str, workload: str) -> Callable[[int], Callable[[int], Any]]:
        return getattr(self, "_" + mode.replace("-", "_"))(workload)

    def _in_process(self, workload: str) -> Callable[[int], Callable[[int], Any]]:
        enc = self.encoder
        if workload == "text":
            return lambda c: (lambda i: enc.encode_texts([CAPTIONS[i % len(CAPTIONS)]]))
        return lambda c: (lambda i: enc.encode_images([self.jpegs[i % len(self.jpegs)]]))

    def _app(self, workload: str) -> Callable[[int], Callable[[int], Any]]:
        import httpx

        items = CAPTIONS if workload == "text" else self.uris
        model = MODEL[workload]

        def make(c: int) -> Callable[[int], Any]:
            client = httpx.Client(base_url=self.app.url, timeout=60)
            self.opened.append(client)

            def call(i: int) -> Any:
                r = client.post("/v1/embeddings", json={"input": [items[i % len(items)]], "model": model})
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                return r
            return call
        return make

    def _triton(self, workload: str, protocol: str) -> Callable[[int], Callable[[int], Any]]:
        from clipq.runtime.backends.triton import TritonBackend

        model, name = ENSEMBLE[workload]
        items = CAPTIONS if workload == "text" else self.jpegs
        url = self.triton.grpc_url if protocol == "grpc" else self.triton.http_url

        def make(c: int) -> Callable[[int], Any]:
            b = TritonBackend(url, self.manifest)
            self.opened.append(b)
            return lambda i: b.infer(model, {name: [items[i % len(items)]]})
        return make

    def _triton_grpc(self, workload: str) -> Callable[[int], Callable[[int], Any]]:
        return self._triton(workload, "grpc")

    def _triton_http(self, workload: str) -> Callable[[int], Callable[[int], Any]]:
        return self._triton(workload, "http")

    def close_opened(self) -> None:
        for o in self.opened:
            with contextlib.suppress(Exception):
                o.close()
        self.opened.clear()


def _start_triton(manifest: Any, work_dir: Path, stack: contextlib.ExitStack) -> Any:
    """A tritonserver over the same artifacts.

    Raises:
        ServerError: it could not start (the reason in the message); ``--app-triton-protocols ''``
            leaves the Triton column out instead.
    """
    from clipq.runtime.errors import ServerError
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    try:
        repo = render_repository(manifest, work_dir / "repo", RenderOptions(dynamic_batching=True),
                                 models=["clip_image", "clip_text", "preprocess_image", "tokenize_clip", "embed_image",
                                         "embed_text"])
        return stack.enter_context(TritonServer(repo.path))
    except Exception as e:
        raise ServerError(
            f"clipq bench --target app: tritonserver did not start for the Triton column ({type(e).__name__}: {e}); "
            "fix the server (`clipq serve` shows the same error; `make libpython` installs the shared libpython "
            "the Python backend needs) or pass --app-triton-protocols '' to measure without Triton") from e


# -- report -------------------------------------------------------------------------------------------
def _cell(cells: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    return next((c for c in cells if all(c[k] == v for k, v in kw.items())), None)


def costs(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The app's p50 and throughput against in-process and Triton, per (workload, concurrency)."""
    out = []
    for c in (c for c in cells if c["mode"] == "app"):
        row: dict[str, Any] = {"workload": c["workload"], "concurrency": c["concurrency"], "app_p50_ms": c["p50_ms"]}
        for ref in ("in-process", "triton-grpc", "triton-http"):
            r = _cell(cells, workload=c["workload"], concurrency=c["concurrency"], mode=ref)
            if r and r["p50_ms"] > 0 and r["throughput_rps"] > 0:
                row[f"vs_{ref}_p50_ms"] = c["p50_ms"] - r["p50_ms"]
                row[f"vs_{ref}_throughput_ratio"] = c["throughput_rps"] / r["throughput_rps"]
        out.append(row)
    return out


def _fmt(row: dict[str, Any], key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "-"


def markdown(result: dict[str, Any]) -> str:
    env, setup, cells = result["environment"], result["setup"], result["cells"]
    modes = [m for m in MODES if any(c["mode"] == m for c in cells)]
    lines = [f"# clipq bench --target app{' (quick)' if setup['quick'] else ''}", "",
             f"{env['time']}; {env['cpus']} CPUs, load average {env['loadavg']} at the start, "
             f"{env['loadavg_end']} at the end; Python {env['python']}; artifacts {setup['artifacts']}; "
             f"variants {env['variants']}; app workers {setup['app_workers']}.", "",
             "One input per request (a caption, or one JPEG); req/s and p50 latency in ms.", ""]
    for mode, why in result["skipped"].items():
        lines.append(f"- {mode}: not measured ({why})")
    if result["skipped"]:
        lines.append("")
    lines.append("| workload | concurrency | " + " | ".join(f"{m} req/s | {m} p50" for m in modes) + " |")
    lines.append("|---|---|" + "---|---|" * len(modes))
    for w in setup["workloads"]:
        for conc in setup["concurrency"]:
            row = [w, str(conc)]
            for m in modes:
                c = _cell(cells, workload=w, concurrency=conc, mode=m)
                row += [f"{c['throughput_rps']:.1f}", f"{c['p50_ms']:.2f}"] if c else ["-", "-"]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## The HTTP layer's cost", "",
              "| workload | concurrency | app p50 | minus in-process p50 | minus Triton HTTP p50 | app / in-process req/s | "
              "app / Triton HTTP req/s |", "|---|---|---|---|---|---|---|"]
    for r in result["http_cost"]:
        lines.append(f"| {r['workload']} | {r['concurrency']} | {r['app_p50_ms']:.2f} | "
                     f"{_fmt(r, 'vs_in-process_p50_ms', '+.2f')} | {_fmt(r, 'vs_triton-http_p50_ms', '+.2f')} | "
                     f"{_fmt(r, 'vs_in-process_throughput_ratio', '.2f')} | "
                     f"{_fmt(r, 'vs_triton-http_throughput_ratio', '.2f')} |")
    errors = sum(c["errors"] for c in cells)
    lines += ["", f"Errors: {errors}." if errors else "No request failed."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cells, setup = result["cells"], result["setup"]
    modes = [m for m in MODES if any(c["mode"] == m for c in cells)]
    groups = [(w, c) for w in setup["workloads"] for c in setup["concurrency"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(modes))
    for k, (key, label) in enumerate((("throughput_rps", "requests / s"), ("p50_ms", "p50 latency (ms)"))):
        ax = axes[k]
        for j, m in enumerate(modes):
            ys = [(_cell(cells, workload=w, concurrency=c, mode=m) or {}).get(key, 0) for w, c in groups]
            ax.bar([i + j * width for i in range(len(groups))], ys, width, label=m)
        ax.set_xticks([i + width * (len(modes) - 1) / 2 for i in range(len(groups))])
        ax.set_xticklabels([f"{w}\nc={c}" for w, c in groups])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle("/v1/embeddings: app vs Triton vs in-process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- entry point ----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import logging

    from clipq.runtime.errors import ArtifactError
    from clipq.runtime.manifest import Manifest

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    out = Path(getattr(args, "out", None) or "bench_results")
    out.mkdir(parents=True, exist_ok=True)
    quick = bool(getattr(args, "quick", False))
    work_dir = Path(tempfile.mkdtemp(prefix="clipq-bench-app-"))

    def ints(s: str) -> list[int]:
        return [int(x) for x in str(s).split(",") if x.strip()]

    try:
        artifacts = getattr(args, "artifacts", None)
        if artifacts is None:
            if not quick:
                raise ArtifactError("clipq bench --target app needs --artifacts DIR (or --quick for tiny models)")
            artifacts = _quick_artifacts(work_dir / "artifacts")
        manifest = Manifest.load(artifacts)
        setup = {"artifacts": str(artifacts), "quick": quick,
                 "workloads": [w for w in str(getattr(args, "app_workloads", "text,image")).split(",") if w],
                 "concurrency": ints(getattr(args, "app_concurrency", "1,16")),
                 "seconds": 0.0 if quick else float(getattr(args, "app_seconds", 5.0)),
                 "requests": 16 if quick else int(getattr(args, "app_requests", 64)),
                 "passes": 1 if quick else 2, "app_workers": int(getattr(args, "app_workers", 4)),
                 "protocols": [p for p in str(getattr(args, "app_triton_protocols", "grpc,http")).split(",") if p]}
        unknown = set(setup["workloads"]) - set(MODEL)
        if unknown:
            raise ArtifactError(f"unknown app bench workloads {sorted(unknown)}; choose from {sorted(MODEL)}")
        env: dict[str, Any] = {"time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": os.cpu_count(),
                               "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                               "python": sys.version.split()[0]}
        print(f"app bench: {artifacts}, workloads {setup['workloads']}, concurrency {setup['concurrency']}, "
              f"load average {env['loadavg']}", flush=True)
        work = _Work(manifest)
        env["variants"] = ", ".join(f"{n} {work.backend.variant_for(n)}" for n in ("clip_text", "clip_image")) \
            if hasattr(work.backend, "variant_for") else "default"
        skipped: dict[str, str] = {}
        cells: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            work.app = _AppProcess(Path(artifacts), setup["app_workers"], work_dir / "app.log")
            stack.callback(work.app.stop)
            print(f"clipq app ready in {work.app.startup_s:.1f} s at {work.app.url}", flush=True)
            modes = ["in-process", "app"]
            if not setup["protocols"]:
                skipped["triton"] = "not asked for (--app-triton-protocols '')"
                print(f"triton: {skipped['triton']}", flush=True)
            else:
                work.triton = _start_triton(manifest, work_dir, stack)
                env["server_version"] = work.triton.version
                modes += [f"triton-{p}" for p in setup["protocols"]]
                print(f"tritonserver {work.triton.version} ready in {work.triton.startup_s:.1f} s", flush=True)
            max_s = setup["seconds"] * 4 + 20
            for w in setup["workloads"]:
                for conc in setup["concurrency"]:
                    acc = {m: {"lat": [], "errors": 0, "wall": 0.0} for m in modes}
                    for p in range(setup["passes"]):
                        for m in (modes if p % 2 == 0 else list(reversed(modes))):
                            try:
                                lat, errors, wall = _run_load(work.maker(m, w), conc, setup["requests"],
                                                              setup["seconds"], max_s)
                            finally:
                                work.close_opened()
                            acc[m]["lat"] += lat
                            acc[m]["errors"] += errors
                            acc[m]["wall"] += wall
                    for m, a in acc.items():
                        cell = {"workload": w, "mode": m, "concurrency": conc, "requests": len(a["lat"]),
                                "errors": a["errors"], **_percentiles(a["lat"]),
                                "throughput_rps": len(a["lat"]) / a["wall"] if a["wall"] > 0 else 0.0,
                                "loadavg_1m": os.getloadavg()[0]}
                        cells.append(cell)
                        print(f"  {w:5s} {m:11s} c={conc:<2d} {cell['throughput_rps']:7.1f} req/s  "
                              f"p50 {cell['p50_ms']:7.2f} ms" + (f"  ({cell['errors']} errors)" if cell["errors"] else ""),
                              flush=True)
        work.backend.close()
        env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        result = {"setup": setup, "environment": env, "skipped": skipped, "cells": cells, "http_cost": costs(cells)}
        (out / "app.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "app.md").write_text(markdown(result))
        plot(result, out / "app.png")
        print((out / "app.md").read_text())
        print(f"wrote {out / 'app.json'}, {out / 'app.md'}, {out / 'app.png'}")
        return 0
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
