"""``clipq export ARTIFACTS [--optimize] [--fp16] [--int8] [--tensorrt]``: networks -> checked ONNX graphs."""

from __future__ import annotations

import argparse
import os
from typing import Any

from clipq.app.cliutil import default_artifacts_arg


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export every network to ONNX (parity-checked), with optional int8/fp16/TensorRT",
        description="Export the artifact's networks to ONNX and check each graph against PyTorch "
                    "(batch 1, 8, largest served batch). Variants are adopted only when they pass parity "
                    "and, for --optimize/--int8, are measurably faster.",
    )
    p.add_argument("artifacts", nargs="?", default=default_artifacts_arg(),
                   help="artifact directory (default: $CLIPQ_ARTIFACTS or %(default)s)")
    p.add_argument("--artifacts", dest="artifacts_opt", default=None, metavar="DIR",
                   help="the artifact directory, as the other commands take it (overrides ARTIFACTS)")
    p.add_argument("--optimize", action="store_true", help="try onnxruntime's transformer optimizer (adopted if faster)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs (for GPUs)")
    p.add_argument("--int8", action="store_true", help="also write int8 graphs (for CPUs; recipe chosen by measurement)")
    p.add_argument("--require-int8", action="store_true",
                   help="fail (ParityError) when a network gets no int8 graph, instead of warning")
    p.add_argument("--tensorrt", action="store_true", help="build TensorRT fp16 engines (needs a GPU and TensorRT)")
    p.add_argument("--openvino", action="store_true",
                   help="also the OpenVINO IR and NNCF int8 variants; every passing (engine, variant) is timed "
                        "here and the fastest recorded as each network's CPU default (needs clipq[openvino])")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data directory: real parity inputs, static-int8 calibration, task-metric parity")
    p.add_argument("--networks", default=None, help="comma-separated subset (default: all the artifacts hold)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads when timing candidates")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--parity-batches", default=None, help="comma-separated batch sizes (default 1,8,max)")
    p.add_argument("--triton", default=None, metavar="DIR", help="also render a Triton model repository here")
    p.add_argument("--flavour", default="cpu-python", choices=["cpu-python", "gpu"], help="Triton repository flavour")
    p.add_argument("--gpu-backend", default="auto", choices=["auto", "onnxruntime", "tensorrt", "openvino"],
                   help="gpu flavour: how its networks run (openvino: a CPU server on Triton's openvino backend)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _ints(s: str | None) -> list[int] | None:
    return [int(x) for x in s.split(",") if x.strip()] if s else None


def run(args: argparse.Namespace) -> int:
    from clipq.app.taskmetrics import export_options_for_data
    from clipq.export import ExportOptions, export_artifacts
    from clipq.runtime.errors import ClipqError

    if args.artifacts_opt:
        args.artifacts = args.artifacts_opt
    opts = ExportOptions(
        optimize=args.optimize, fp16=args.fp16, int8=args.int8 or args.require_int8, require_int8=args.require_int8,
        tensorrt=args.tensorrt, openvino=args.openvino, **export_options_for_data(args.data, threads=args.threads),
        networks=args.networks.split(",") if args.networks else None, threads=args.threads, opset=args.opset,
        parity_batches=_ints(args.parity_batches),
    )
    report = export_artifacts(args.artifacts, opts)
    rendered = None
    if args.triton:
        try:
            from clipq.serving.repository import RenderOptions, render_repository
        except ImportError as e:
            raise ClipqError(f"--triton needs clipq.serving, which is not available here: {e}") from e
        render_opts = RenderOptions(flavour=args.flavour, gpu_backend=args.gpu_backend)
        rendered = render_repository(args.artifacts, args.triton, render_opts)
    if args.json:
        import dataclasses

        from clipq.app.cliutil import print_json

        print_json({"networks": {k: dataclasses.asdict(v) for k, v in report.networks.items()},
                    "skipped": report.skipped, "task_metrics": report.task_metrics, "tensorrt": report.tensorrt,
                    "triton": str(args.triton) if rendered is not None else None})
        return 0
    print(report.markdown())
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    if args.tensorrt:
        t = report.tensorrt
        print(f"TensorRT: {len(t.get('engines', {}))} engine(s) built" if t.get("available")
              else f"TensorRT: nothing built ({t.get('status')})")
    if rendered is not None:
        print(f"Triton repository ({args.flavour}) written to {args.triton}")
    print(f"manifest updated: {os.path.join(args.artifacts, 'manifest.json')}")
    return 0
