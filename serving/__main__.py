"""``python -m clipq.serving render ARTIFACTS OUT [--flavour gpu]``: render a model repository.

The same renderer ``clipq export --triton DIR`` and ``clipq serve ARTIFACTS`` use; handy for
refreshing the checked-in ``triton_models/`` or writing the GPU flavour for the NGC container.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from clipq.runtime.errors import ClipqError

    from .plan import PIPELINE_CHOICES
    from .renderers import GPU_BACKENDS
    from .repository import FLAVOURS, RenderOptions, render_repository

    p = argparse.ArgumentParser(prog="python -m clipq.serving", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render a Triton model repository from an artifact directory")
    r.add_argument("artifacts")
    r.add_argument("out")
    r.add_argument("--flavour", choices=FLAVOURS, default="cpu-python")
    r.add_argument("--variant", help="graph variant (default: the manifest's default; fp32 on gpu)")
    r.add_argument("--gpu-backend", choices=GPU_BACKENDS, default="auto",
                   help="gpu flavour: auto (tensorrt_plan where the manifest has a plan variant, else "
                        "onnxruntime_onnx with the TensorRT accelerator), onnxruntime, tensorrt, or openvino (a CPU "
                        "server: Triton's native openvino backend from each network's OpenVINO IR)")
    r.add_argument("--engine", help="cpu-python: one engine for every network (default: each network's recorded "
                                    "CPU default, else onnxruntime)")
    r.add_argument("--pipelines", choices=PIPELINE_CHOICES, default=None,
                   help="embed_image/embed_text as fused models (cpu-python default) or ensembles (gpu default)")
    args = p.parse_args(argv)
    try:
        rendered = render_repository(args.artifacts, args.out, RenderOptions(
            flavour=args.flavour, variant=args.variant, gpu_backend=args.gpu_backend, engine=args.engine,
            pipelines=args.pipelines))
    except (ClipqError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{rendered.path}: {len(rendered.models)} models ({rendered.flavour}): {', '.join(rendered.models)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
