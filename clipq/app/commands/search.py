"""``clipq search INDEX "text" -k 5``: text -> image (and image -> image) search over an index."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> None:
    from clipq.app.cliutil import add_backend_args
    from clipq.app.store_cli import add_store_args

    p = subparsers.add_parser("search", help="search an image index with text or images")
    p.add_argument("index", nargs="?", help="index directory (from `clipq index build`), or --store URL")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="text queries")
    p.add_argument("--image", dest="images", action="append", default=[], metavar="PATH", help="image query (repeat)")
    p.add_argument("-k", type=int, default=5, help="results per query (default %(default)s)")
    p.add_argument(
        "--templates",
        default="default",
        help="prompt templates: 'default' (an ensemble of start phrases), 'none', or 'tpl1|tpl2' with {} for the text",
    )
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata filter (repeat; one key given twice matches either value; VALUE parsed as JSON when it can be)",
    )
    p.add_argument("--min-score", type=float, default=None, metavar="S",
                   help="drop results scoring below S: the model family's text-image score (the cosine for CLIP, "
                        "the sigmoid probability for SigLIP), the cosine for --image queries")
    p.add_argument("--exact", action="store_true", help="exact search instead of HNSW")
    p.add_argument("--ef", type=int, help="HNSW search candidate list for this run")
    p.add_argument("--contact-sheet", metavar="PNG", help="also draw queries and results into this PNG")
    add_backend_args(p)
    add_store_args(p)
    p.set_defaults(func=run)


def parse_filters(items: list[str]) -> dict[str, Any] | None:
    """``["kind=circle", "count=2", "kind=square"]`` -> ``{"kind": ["circle", "square"], "count": 2}``.

    Raises:
        InvalidInputError: an item has no ``=``.
    """
    from clipq.runtime.errors import InvalidInputError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--filter takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out or None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipq.app import cliutil
    from clipq.app.cliutil import print_json
    from clipq.app.contact_sheet import contact_sheet
    from clipq.app.store_cli import open_index, store_target
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch, results_to_json

    store = store_target(args, "texts")  # a Milvus collection (--store URL: the first positional is a query)
    if not args.texts and not args.images:
        raise InvalidInputError("give a text query, or --image PATH")
    filt = parse_filters(args.filters)
    exact = True if args.exact else None
    backend, encoder = cliutil.open_encoder(args)
    try:
        from clipq.runtime.compact import encoder_for_index

        if store:
            index = open_index(args, encoder)
        else:
            index = ImageIndex.load(args.index, encoder=encoder_for_index(args.index, encoder))  # a projection.npz: its dim
        if args.ef:
            index.ef = args.ef
        searcher = ImageSearch(index, encoder, templates=args.templates)
        queries: list[Any] = list(args.texts)
        cut = args.min_score
        results = searcher.search_many(args.texts, args.k, filter=filt, exact=exact, min_score=cut) if args.texts else []
        for image in args.images:
            path = Path(image)
            # an indexed image would find itself first: leave it out
            self_ids = [path.stem] if path.stem in index else []
            results.append(searcher.search_image(path, args.k, exclude=self_ids, filter=filt, exact=exact, min_score=cut))
            queries.append(path)
    finally:
        backend.close()
    sheet = contact_sheet(queries, results, args.contact_sheet) if args.contact_sheet else None
    if args.json:
        out: dict[str, Any] = {"index": args.index, "k": args.k, "queries": results_to_json(queries, results)}
        if sheet:
            out["contact_sheet"] = str(sheet)
        print_json(out)
        return 0
    for query, hits in zip(queries, results):
        label = f'"{query}"' if isinstance(query, str) else f"image {query}"
        print(f"{label}: {len(hits)} results")
        for n, hit in enumerate(hits, 1):
            extra = hit.metadata.get("caption") or hit.metadata.get("path") or ""
            print(f"  {n:>2}  {hit.score:7.4f}  {hit.id}  {extra}")
    if sheet:
        print(f"contact sheet: {sheet}")
    return 0
