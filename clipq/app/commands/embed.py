"""`clipq embed IMAGES --out DIR`: embed a large collection in resumable shards (in process, Ray, or Triton)."""

from __future__ import annotations

import argparse

from clipq.app.cliutil import add_backend_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embed an image collection into resumable shards (npy + jsonl), optionally on Ray",
        description="Finished shards are skipped on restart; unreadable images are skipped and listed in "
                    "DIR/skipped.jsonl. Build an index from the result with "
                    "`clipq index build --from-embeddings DIR -o INDEX`.",
    )
    p.add_argument("images", nargs="+", help="image folders (searched recursively) and/or files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run the encoders as Ray Data actors: a local Ray, or the cluster at ADDRESS")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (default %(default)s)")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard, the unit of resume")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads per worker")
    p.add_argument("--variant", default=None, help="graph variant in process: fp32, int8 (default: the manifest's)")
    p.add_argument("--codes", default=None, metavar="CODE[,CODE]",
                   help="also write compact copies to OUT/compact/: int8, uint8 (ranges calibrated on this "
                        "collection), binary, ubinary (8 dimensions a byte)")
    p.add_argument("--projection", default=None, metavar="PATH",
                   help="project the compact copies first: a projection.npz, or an index made by "
                        "`clipq index project` (its projection)")
    p.add_argument("--no-progress", action="store_true")
    add_backend_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.app.batch_embed import embed_collection
    from clipq.app.cliutil import print_json
    from clipq.app.compact_export import load_projection, parse_codes, write_compact

    codes = parse_codes(args.codes)
    if args.projection:
        load_projection(args.projection)  # a bad path fails now, not after the whole collection is embedded
    s = embed_collection(args.images, args.out, artifacts=args.artifacts, server=args.server, ray=args.ray,
                         workers=args.workers, shard_size=args.shard_size, batch_size=args.batch_size,
                         threads=args.threads, variant=args.variant, progress=not args.no_progress)
    compact = write_compact(args.out, codes, args.projection) if codes or args.projection else None
    if args.json:
        print_json({**s.to_dict(), **({"compact": compact} if compact else {})})
        return 0
    print(f"embedded {s.embedded} of {s.images} images into {s.out} ({s.shards} shards, "
          f"{s.shards_done_before} already done) in {s.seconds:.1f} s, {s.images_per_s:.1f} img/s [{s.mode}]")
    if s.skipped:
        print(f"skipped {s.skipped} unreadable images: see {s.out}/skipped.jsonl")
    if compact:
        what = ", ".join(compact["files"])
        print(f"compact copies ({what}) of {compact['count']} {compact['dim']}-d embeddings in {s.out}/compact/")
    return 0
