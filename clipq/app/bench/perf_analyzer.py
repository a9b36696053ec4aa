"""Triton's ``perf_analyzer`` next to ``clipq bench --target triton`` (``--perf-analyzer``)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
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
                      captions: Sequence[str], *, others: Mapping[str, Any] | None = None,
                      images: Sequence[bytes] = ()) -> dict[str, Any]:
    """perf_analyzer against ``clip_image``, ``embed_text`` and ``embed_image`` (gRPC, batch 1, each concurrency).

    ``others``: servers with other pipelines (name -> server): their ``embed_text`` / ``embed_image``
    are measured too, as ``embed_text[name]``. ``images``: the encoded images ``embed_image`` sends.
    """
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
    plan: list[tuple[str, str, Any, list[str]]] = [
        ("clip_image", "clip_image", server, ["--shape", f"pixel_values:3,{size},{size}"]),
        ("embed_text", "embed_text", server, ["--input-data", str(data)])]
    if images:
        img_data = pa_dir / "embed_image_input.json"
        # b64 of a BYTES tensor is Triton's raw layout: each element as a 4-byte little-endian length + data
        raw = [base64.b64encode(struct.pack("<I", len(b)) + b).decode() for b in images]
        img_data.write_text(json.dumps({"data": [{"image": {"b64": r, "shape": [1]}} for r in raw]}))
        plan.append(("embed_image", "embed_image", server, ["--input-data", str(img_data)]))
    for name, srv in (others or {}).items():
        plan += [(f"{model}[{name}]", model, srv, extra) for label, model, _, extra in list(plan)
                 if model in ("embed_text", "embed_image") and "[" not in label]
    runs: dict[str, Any] = {}
    measure_ms = 1000 if setup.quick else 4000
    for label, model, srv, extra in plan:
        host = srv.grpc_url.split("://", 1)[1]
        for conc in setup.concurrency:
            stem = f"{label.replace('[', '.').replace(']', '')}_c{conc}"
            csv = pa_dir / f"{stem}.csv"
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
            (pa_dir / f"{stem}.txt").write_text("$ " + " ".join(cmd) + "\n" + text)
            summary = parse_perf_csv(csv) if rc == 0 and csv.is_file() else {}
            runs[f"{label}_c{conc}"] = {"rc": rc, **summary}
            shown = (f"{summary.get('throughput_rps', 0):.1f} req/s, p50 {summary.get('p50_ms', 0):.2f} ms"
                     if summary else f"failed (rc {rc}), see {pa_dir}")
            print(f"  perf_analyzer {label} c={conc}: {shown}", flush=True)
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
            "client_send_ms": us("Client Send"), "client_recv_ms": us("Client Recv"),
            "server_queue_ms": us("Server Queue"), "server_input_ms": us("Server Compute Input"),
            "server_compute_ms": us("Server Compute Infer"), "server_output_ms": us("Server Compute Output"),
            "network_ms": us("Network+Server Send/Recv")}
