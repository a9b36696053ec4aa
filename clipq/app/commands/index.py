"""``clipq index build|add|delete|info``: manage an HNSW image index on disk.

Only stdlib at import time; the runtime loads inside handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clipq.app import cliutil, store_cli
from clipq.app.cliutil import add_backend_args, caption_metadata, print_json
from clipq.app.commands import index_engine
from clipq.app.store_cli import add_store_args, build_target, store_target


# -- the command -----------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("index", help="build, change and inspect an image index (HNSW)")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="encode images and build an index")
    b.add_argument("images", nargs="*", help="image folders (searched recursively) and/or image files")
    b.add_argument("--from-embeddings", metavar="DIR", default=None,
                   help="build from a `clipq embed` output instead of encoding images again")
    b.add_argument("-o", "--out", default=None, help="index directory to write (or --store URL)")
    b.add_argument("--captions", help="CSV with header image,text: adds a caption to each image's metadata")
    b.add_argument("--space", default="cosine", choices=("cosine", "ip", "l2"))
    b.add_argument("--M", type=int, default=16, help="graph degree (default %(default)s)")
    b.add_argument("--ef-construction", type=int, default=200, help="build candidate list (default %(default)s)")
    b.add_argument("--ef", type=int, default=64, help="search candidate list (default %(default)s)")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--skip-invalid", action="store_true", help="skip unreadable images instead of failing")
    b.add_argument("--force", action="store_true", help="replace an existing index")
    b.add_argument("--no-progress", action="store_true")
    add_backend_args(b)
    add_store_args(b, build=True)
    index_engine.add_engine_args(b)  # --engine, --memory-budget, --nprobe, --rescore, --recall-queries
    b.set_defaults(func=run_build)

    a = sub.add_parser("add", help="encode images and add them to an index")
    a.add_argument("index", nargs="?", help="index directory (or --store URL)")
    a.add_argument("images", nargs="*", help="image folders and/or files")
    a.add_argument("--id", dest="ids", action="append", help="id of each image file, in order (repeat)")
    a.add_argument("--captions", help="CSV with header image,text")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--skip-invalid", action="store_true")
    a.add_argument("--no-progress", action="store_true")
    add_backend_args(a)
    add_store_args(a)
    a.set_defaults(func=run_add)

    d = sub.add_parser("delete", help="delete items by id")
    d.add_argument("index", nargs="?", help="index directory (or --store URL)")
    d.add_argument("ids", nargs="*", help="ids to delete")
    d.add_argument("--json", action="store_true")
    add_store_args(d)
    d.set_defaults(func=run_delete)

    i = sub.add_parser("info", help="describe an index (and optionally measure its recall)")
    i.add_argument("index", nargs="?", help="index directory (or --store URL)")
    i.add_argument("--recall", action="store_true", help="measure recall@k against exact search")
    i.add_argument("-k", type=int, default=10, help="k for --recall (default %(default)s)")
    i.add_argument("--queries", type=int, default=200, help="sampled queries for --recall")
    i.add_argument("--json", action="store_true")
    add_store_args(i)
    i.set_defaults(func=run_info)

    from clipq.app.commands.index_compact import add_parsers as add_compact_parsers

    add_compact_parsers(sub)  # `index project` (compact embeddings, issue 30)


def _add_images(index: Any, encoder: Any, args: argparse.Namespace, ids: list[str] | None = None) -> Any:
    """Add every folder/file of ``args.images``; returns the merged AddReport."""
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index import AddReport

    captions = caption_metadata(args.captions) if args.captions else None
    folders = [p for p in args.images if Path(p).is_dir()]
    files = [p for p in args.images if not Path(p).is_dir()]
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        raise InvalidInputError(f"no such file or folder: {missing[0]}")
    if ids is not None and (folders or len(ids) != len(files)):
        raise InvalidInputError("--id needs one id per image file (and no folders)")
    total = AddReport()
    common = {"batch_size": args.batch_size, "progress": not args.no_progress, "skip_invalid": args.skip_invalid}
    for folder in folders:
        rep = index.add_images(folder, encoder, metadata=captions, **common)
        total.added += rep.added
        total.skipped += rep.skipped
    if files:
        file_ids = ids if ids is not None else [Path(f).stem for f in files]
        rep = index.add_images(files, encoder, ids=file_ids, metadata=captions, **common)
        total.added += rep.added
        total.skipped += rep.skipped
    return total


def _report(action: str, path: str, index: Any, rep: Any, as_json: bool) -> None:
    if as_json:
        print_json({"action": action, "index": path, "added": len(rep.added), "skipped": rep.skipped, **index.info()})
        return
    print(f"{action}: {path}: {len(rep.added)} images added, {len(index)} in the index")
    for source, reason in rep.skipped:
        print(f"  skipped {source}: {reason}")


def run_build(args: argparse.Namespace) -> int:
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index import SIDECAR_NAME, ImageIndex

    if (url := build_target(args)) is not None:  # a Milvus collection (clipq.app.store_cli)
        return store_cli.run_build(args, url)
    out = Path(args.out)
    if (out / SIDECAR_NAME).exists() and not args.force:
        raise InvalidInputError(f"{out} already holds an index: pass --force to replace it")
    if args.from_embeddings:
        return _build_from_embeddings(args, out)
    if not args.images:
        raise InvalidInputError("give image folders/files, or --from-embeddings DIR")
    backend, encoder = cliutil.open_encoder(args)
    try:
        index = ImageIndex(
            encoder.dim,
            space=args.space,
            M=args.M,
            ef_construction=args.ef_construction,
            ef=args.ef,
            model_id=getattr(encoder, "model_id", None),
            model_hash=getattr(encoder, "model_hash", None),
            **index_engine.engine_kwargs(args, index_engine.count_images(args.images)),
        )
        rep = _add_images(index, encoder, args)
    finally:
        backend.close()
    if not len(index):
        raise InvalidInputError("no image could be indexed")
    index_engine.check_build(index, args)
    index.save(out)
    _report("built", str(out), index, rep, args.json)
    return 0


def _build_from_embeddings(args: argparse.Namespace, out: Path) -> int:
    """The index of a `clipq embed` directory: no encoding, the embeddings' model id recorded."""
    from clipq.app.batch_embed import read_embeddings
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index import AddReport, ImageIndex

    if args.images:
        raise InvalidInputError("--from-embeddings builds from the embeddings alone: give no images")
    vecs, ids, metas, summary = read_embeddings(args.from_embeddings)
    captions = caption_metadata(args.captions) if args.captions else {}
    metas = [{**meta, **captions.get(i, {})} for i, meta in zip(ids, metas)]
    index = ImageIndex.from_embeddings(vecs, ids, metas, space=args.space, M=args.M,
                                       ef_construction=args.ef_construction, ef=args.ef,
                                       model_id=summary.get("model_id"),
                                       **index_engine.engine_kwargs(args, len(ids)))
    index_engine.check_build(index, args)
    index.save(out)
    _report("built", str(out), index, AddReport(added=list(ids)), args.json)
    return 0


def run_add(args: argparse.Namespace) -> int:
    from clipq.runtime.compact import encoder_for_index
    from clipq.runtime.index import ImageIndex

    if (url := store_target(args, "images")) is not None:
        return store_cli.run_add(args, url)
    backend, encoder = cliutil.open_encoder(args)
    encoder = encoder_for_index(args.index, encoder)  # an index of projected vectors: new images projected too
    try:
        # load-add-save under the index's inter-process lock: concurrent `index add`s serialise
        with ImageIndex.edit(args.index, encoder=encoder) as index:
            rep = _add_images(index, encoder, args, ids=args.ids)
    finally:
        backend.close()
    _report("added", args.index, index, rep, args.json)
    return 0


def run_delete(args: argparse.Namespace) -> int:
    from clipq.runtime.index import ImageIndex

    if (url := store_target(args, "ids")) is not None:
        return store_cli.run_delete(args, url)
    with ImageIndex.edit(args.index) as index:
        n = index.delete(args.ids)
    if args.json:
        # index.info()'s "deleted" is what awaits the graph's rebuild: this call's count goes after it
        print_json({"action": "deleted", "index": args.index, **index.info(), "deleted": n,
                    "awaiting_rebuild": index.deleted_count})
    else:
        print(f"deleted: {args.index}: {n} items, {len(index)} left ({index.deleted_count} awaiting rebuild)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from clipq.runtime.index import ImageIndex

    if (url := store_target(args, None)) is not None:
        return store_cli.run_info(args, url)

    def lines(info: dict[str, Any]) -> tuple[list[str], list[str]]:
        return [f"{args.index}: {info['count']} items ({info['deleted']} deleted, capacity {info['capacity']})",
                f"  dim {info['dim']}, space {info['space']}, M {info['M']}, ef_construction {info['ef_construction']}, "
                f"ef {info['ef']}"], list(index_engine.describe(info))

    return store_cli.report_info(args, args.index, ImageIndex.load(args.index), lines, "HNSW", "exact")
