"""Triton's ``perf_analyzer`` next to ``clipq bench --target triton`` (``--perf-analyzer``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .triton_report import Setup


def find_perf_analyzer(explicit: str | None = None) -> tuple[Path, dict[str, str]] | None:
    """The perf_analyzer binary (``make perf-analyzer`` puts it in .venv-perf) and its environment."""
    candidates = [explicit, os.environ.get("CLIPQ_PERF_ANALYZER"), ".venv-perf/bin/perf_analyzer",
                  shutil.which("perf_analyzer")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            binary = Path(c).resolve()
            env = dict(os.environ)
            venv = binary.parent.parent
            libs = sorted(venv.glob("lib/python*/site-packages/nvidia/cuda_runtime/lib"))
            if libs:  # libcudart.so.12 from nvidia-cuda-runtime-cu12, next to the binary's venv
                env["LD_LIBRARY_PATH"] = os.pathsep.join([str(libs[0]), env.get("LD_LIBRARY_PATH", "")])
            return binary, env
    return None


def run_perf_analyzer(setup: Setup, server: Any, manifest: Any, out: Path, explicit: str | None,
                      captions: Sequence[str]) -> dict[str, Any]:
    """perf_analyzer against ``clip_image`` and ``embed_text`` (gRPC, batch 1, each concurrency of ``setup``)."""
    found = find_perf_analyzer(explicit)
    if found is None:
        msg = "perf_analyzer not found: run `make perf-analyzer` (tool venv .venv-perf) or pass --perf-analyzer-bin"
        print(f"  {msg}", flush=True)
        return {"skipped": msg}
    binary, env = found
    pa_dir = out / "perf_analyzer"
    pa_dir.mkdir(parents=True, exist_ok=True)
    size = int(manifest.preprocessing["size"])
    data = pa_dir / "embed_text_input.json"
    data.write_text(json.dumps({"data": [{"text": [c]} for c in captions]}))
    runs: dict[str, Any] = {}
    host = server.grpc_url.split("://", 1)[1]
    measure_ms = 1000 if setup.quick else 4000
    for model, extra in (("clip_image", ["--shape", f"pixel_values:3,{size},{size}"]),
                         ("embed_text", ["--input-data", str(data)])):
        for conc in setup.concurrency:
            csv = pa_dir / f"{model}_c{conc}.csv"
            cmd = [str(binary), "-m", model, "-u", host, "-i", "grpc", "-b", "1",
                   "--concurrency-range", f"{conc}:{conc}", "--measurement-interval", str(measure_ms),
                   # a shared machine is noisy: accept wider windows rather than no answer at all
                   "--stability-percentage", "60", "--max-trials", "8", "-f", str(csv), *extra]
            try:
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
                text = r.stdout + r.stderr
                rc = r.returncode
            except subprocess.TimeoutExpired as e:
                text, rc = f"timed out after 240 s: {e}", -1
            (pa_dir / f"{model}_c{conc}.txt").write_text("$ " + " ".join(cmd) + "\n" + text)
            summary = parse_perf_csv(csv) if rc == 0 and csv.is_file() else {}
            runs[f"{model}_c{conc}"] = {"rc": rc, **summary}
            shown = (f"{summary.get('throughput_rps', 0):.1f} req/s, p50 {summary.get('p50_ms', 0):.2f} ms"
                     if summary else f"failed (rc {rc}), see {pa_dir}")
            print(f"  perf_analyzer {model} c={conc}: {shown}", flush=True)
    return {"binary": str(binary), "runs": runs}


def parse_perf_csv(path: Path) -> dict[str, float]:
    import csv

    rows = list(csv.DictReader(path.open()))
    if not rows:
        return {}
    row = rows[0]

    def us(key: str) -> float:
        return float(row.get(key, 0) or 0) / 1e3

    return {"throughput_rps": float(row.get("Inferences/Second", 0) or 0), "p50_ms": us("p50 latency"),
            "p90_ms": us("p90 latency"), "p99_ms": us("p99 latency"),
            "client_send_ms": us("Client Send"), "server_queue_ms": us("Server Queue"),
            "server_compute_ms": us("Server Compute Infer")}
