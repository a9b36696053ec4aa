"""``clipq serve ARTIFACTS_OR_REPO``: run tritonserver on the artifacts (or a ready repository).

Given an artifact directory, the model repository is rendered first (into ``--repository`` or a
temporary directory removed on exit); given a repository, it is served as it is. The server binds
to loopback unless ``--host`` says otherwise, is ready when this command prints its endpoints, and
stops cleanly on Ctrl-C or SIGTERM. When a model fails to load, the server's own reason is shown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the models with Triton (tritonserver on loopback)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("path", nargs="?", metavar="ARTIFACTS_OR_REPO",
                   help="artifact directory (with manifest.json) or Triton model repository "
                        "(default: $CLIPQ_ARTIFACTS or runs/demo/artifacts)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s: loopback only; 0.0.0.0 exposes the server)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default %(default)s; 0 = any free port)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default %(default)s; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, default=8002,
                   help="Prometheus metrics port (default %(default)s; 0 = any free port; -1 = off)")
    p.add_argument("--flavour", "--flavor", choices=("auto", "cpu-python", "gpu"), default="auto",
                   help="repository flavour to render from artifacts (default: gpu when the tritonserver "
                        "found has the onnxruntime backend, else cpu-python)")
    p.add_argument("--repository", metavar="DIR",
                   help="render the repository here and keep it (default: a temporary directory)")
    p.add_argument("--variant", help="graph variant to serve for every network (fp32, int8, ov_int8, ...; default: "
                                     "each network's recorded CPU default, else the manifest's default)")
    p.add_argument("--engine", default=None,
                   help="cpu-python: engine every network runs on (onnxruntime, openvino; default: each network's "
                        "recorded CPU default where the serving host's CPU flags match, else onnxruntime)")
    p.add_argument("--pipelines", choices=("fused", "ensemble"), default=None,
                   help="embed_image/embed_text as one fused model (one Python hop; the cpu-python default) or as "
                        "ensembles of the helper and the network (the gpu default)")
    p.add_argument("--gpu-backend", choices=("auto", "onnxruntime", "tensorrt", "openvino"), default="auto",
                   help="gpu flavour (NGC tritonserver): auto (tensorrt_plan where a plan variant exists, else "
                        "onnxruntime_onnx with TensorRT), onnxruntime, tensorrt, or openvino (a CPU server: every "
                        "network on Triton's native openvino backend from its OpenVINO IR)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request alone")
    p.add_argument("--queue-delay-us", type=int, default=100, help="dynamic batching delay (default %(default)s)")
    p.add_argument("--instances", type=int, default=1, help="instances per network (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="engine threads per instance (0: the cores, split between instances)")
    p.add_argument("--tritonserver", metavar="PATH", help="tritonserver binary (default: nvidia-pytriton's, or PATH)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="restrict every protocol group but health to calls with header 'clipq-api-key: KEY' "
                        "(clients: api_key=, --server-api-key or $CLIPQ_API_KEY); see docs/security.md")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="read that key from a file (first line), so it stays out of the shell history")
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="serve gRPC over TLS with this certificate (clients: grpcs://, verified against its CA); "
                        "Triton's HTTP has no TLS: put a TLS proxy in front of it")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")
    p.add_argument("--trace-file", default=None, metavar="JSON",
                   help="write Triton's trace of every request here (each with the request id the client sent: "
                        "clipq app sends its X-Request-ID)")
    p.add_argument("--otel-endpoint", default=None, metavar="URL",
                   help="export Triton's traces as OpenTelemetry spans (OTLP/HTTP, e.g. "
                        "http://collector:4318/v1/traces) instead of --trace-file")
    p.add_argument("--log", action="store_true", help="show the server's whole log (default: warnings and errors)")
    p.set_defaults(func=run)


def _echo(show_all: bool):
    def echo(line: str) -> None:
        # tritonserver log lines start with I/W/E + date; show warnings and errors unless --log
        if show_all or line[:1] in ("W", "E") or line.startswith(("Traceback", "  File", "error:")):
            print(f"[tritonserver] {line}", file=sys.stderr, flush=True)
    return echo


def run(args: argparse.Namespace) -> int:
    from clipq.runtime.errors import ArtifactError, ServerError
    from clipq.serving import RenderOptions, is_repository, read_repository_info, render_repository
    from clipq.serving.launcher import find_tritonserver
    from clipq.serving.server import ServerOptions, StopSignals, TritonServer

    target = Path(args.path or os.environ.get("CLIPQ_ARTIFACTS") or "runs/demo/artifacts")
    if not target.exists():
        raise ArtifactError(f"{target} does not exist: give an artifact directory or a model repository "
                            "(`clipq demo` writes runs/demo/artifacts)")
    installation = find_tritonserver(args.tritonserver)
    temp_repo: Path | None = None
    if (target / "manifest.json").is_file():
        flavour = args.flavour
        native = "openvino" if args.gpu_backend == "openvino" else "onnxruntime"
        if flavour == "auto":
            flavour = "gpu" if installation.has_backend(native) else "cpu-python"
        if flavour == "gpu" and not installation.has_backend(native):
            raise ServerError(f"{installation.binary} has no {native} backend: the gpu flavour needs the NGC "
                              "tritonserver (see docs/serving.md); use --flavour cpu-python here")
        if args.repository:
            repo = Path(args.repository)
        else:
            temp_repo = Path(tempfile.mkdtemp(prefix="clipq-repo-"))
            repo = temp_repo / "repository"
        opts = RenderOptions(flavour=flavour, variant=args.variant, dynamic_batching=not args.no_dynamic_batching,
                             max_queue_delay_us=args.queue_delay_us, instances=args.instances,
                             intra_op_threads=args.threads, engine=args.engine, pipelines=args.pipelines,
                             gpu_backend=args.gpu_backend)
        rendered = render_repository(target, repo, opts)
        print(f"rendered {len(rendered.models)} models ({flavour}) from {target} into {repo}", flush=True)
    elif is_repository(target):
        repo = target
        info = read_repository_info(repo) or {}
        flavour = info.get("flavour", "?")
    else:
        raise ArtifactError(f"{target} is neither an artifact directory (no manifest.json) nor a Triton model "
                            "repository (no models/<model>/config.pbtxt or <model>/config.pbtxt)")

    def port(v: int) -> int | None:
        return None if v == 0 else v

    api_key = args.api_key
    if args.api_key_file:
        lines = Path(args.api_key_file).read_text(encoding="utf-8").split()
        api_key = lines[0] if lines else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"clipq serve: warning: listening on {args.host} without --api-key: anyone who reaches the ports "
              "can run and inspect the models (docs/security.md)", file=sys.stderr)
    options = ServerOptions(
        api_key=api_key or None, tls_cert=args.tls_cert, tls_key=args.tls_key, trace_file=args.trace_file,
        otel_endpoint=args.otel_endpoint, host=args.host, http_port=port(args.http_port), grpc_port=port(args.grpc_port),
        metrics_port=0 if args.metrics_port < 0 else port(args.metrics_port),
        startup_timeout_s=args.startup_timeout,
    )
    server = TritonServer(repo, options, installation=installation, on_line=_echo(args.log))
    # handlers first: a Ctrl-C during start-up abandons the start and still cleans up
    with StopSignals() as stop:
        try:
            print(f"starting tritonserver ({installation.binary}) on {args.host} ...", flush=True)
            server.start()
            stop.started()
            models = server.layout.model_names()
            print(f"tritonserver {server.version} ready in {server.startup_s:.1f} s: {len(models)} models ({flavour})")
            print(f"  HTTP     {server.http_url}")
            print(f"  gRPC     {server.grpc_url}")
            if server.metrics_url:
                print(f"  metrics  {server.metrics_url}")
            print(f"  models   {', '.join(models)}")
            if api_key:
                print("  key      every protocol but health needs header 'clipq-api-key' (clients: $CLIPQ_API_KEY)")
            print(f"query it with e.g. `clipq search INDEX \"a red circle\" --server {server.grpc_url}`; "
                  "Ctrl-C stops it", flush=True)
            if stop.wait(server) is None:
                code = server.proc.poll() if server.proc else None
                print(f"tritonserver exited by itself (exit code {code})", file=sys.stderr)
                return 1
            print("stopping tritonserver ...", flush=True)
        finally:
            server.stop()
            if temp_repo is not None:
                shutil.rmtree(temp_repo, ignore_errors=True)
    print("stopped", flush=True)
    return 0
