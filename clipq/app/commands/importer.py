"""`clipq import CHECKPOINT --out ARTIFACTS`: a local CLIP / SigLIP checkpoint -> deployable artifacts, no training."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import", help="import a local CLIP or SigLIP checkpoint (save_pretrained dir) and export it, without training",
        description="Read a CLIP or SigLIP / SigLIP 2 (fixed resolution) checkpoint as transformers does "
                    "(config.json's model_type; model.safetensors or pytorch_model.bin; tokenizer.json, "
                    "vocab.json + merges.txt or SigLIP's spiece.model, converted to tokenizer.json; "
                    "preprocessor_config.json or the family's defaults), export both towers to ONNX with parity checks (int8 where it "
                    "passes and is faster), ready for `clipq serve`, `clipq index build` and `clipq search`.",
    )
    p.add_argument("checkpoint", help="the checkpoint directory")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.add_argument("--no-int8", action="store_true", help="fp32 graphs only (no int8, no OpenVINO variants)")
    p.add_argument("--no-openvino", action="store_true",
                   help="no OpenVINO variants and no engine measurement (onnxruntime only; faster import)")
    p.add_argument("--data", default=None, help="data directory: real parity inputs and the task-metric gate")
    p.add_argument("--heads", default=None, metavar="ARTIFACTS",
                   help="attach the VQA / Model A checkpoints of a clipq artifact directory")
    p.add_argument("--prompts", default=None, metavar="CSV", help="Model B's database: a csv with imgId,prompt")
    p.add_argument("--prompt-images", default=None, metavar="DIR", help="the images the prompts csv names")
    p.add_argument("-k", type=int, default=10, help="Model B's neighbours (default %(default)s)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--force", action="store_true", help="replace an existing artifact directory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.app.cliutil import print_json
    from clipq.app.importer import import_checkpoint

    rep = import_checkpoint(args.checkpoint, args.out, int8=not args.no_int8, data=args.data, heads=args.heads,
                            prompts=args.prompts, prompt_images=args.prompt_images, k=args.k,
                            threads=args.threads, force=args.force, openvino=False if args.no_openvino else None)
    if args.json:
        print_json(rep.to_dict())
        return 0
    print(rep.export.markdown())
    print(f"imported {args.checkpoint} -> {rep.artifacts} in {rep.seconds['total']:.1f} s "
          f"(load {rep.seconds['load']:.1f} s, export {rep.seconds['export']:.1f} s); networks: {', '.join(rep.networks)}")
    if rep.heads:
        print(f"heads: {rep.heads}")
    print(f"next: clipq serve {rep.artifacts}   |   clipq index build IMAGES -o INDEX --artifacts {rep.artifacts}")
    return 0
