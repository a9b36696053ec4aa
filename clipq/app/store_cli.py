"""``--store URL`` for ``clipq index build|add|delete|info`` and ``clipq search``: the same commands on Milvus.

A store URL (``milvus://HOST:PORT/COLLECTION``, ``milvus-lite://PATH.db/COLLECTION``) goes either
in ``--store`` or where the index directory would go. The commands in ``clipq.app.commands.index``
hand over to the functions here when they see one; the output (text and ``--json``) is theirs.
``--from-embeddings`` loads a ``clipq embed`` output shard by shard and resumes an interrupted
load (:mod:`clipq.runtime.index.milvus_load`).

Only stdlib at import time; the runtime loads inside the functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipq.app import cliutil
from clipq.app.cliutil import print_json


def add_store_args(p: argparse.ArgumentParser, *, build: bool = False) -> None:
    """``--store URL`` (and, for ``build``, the Milvus index options)."""
    p.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="a Milvus collection instead of an index directory: milvus://HOST:PORT/COLLECTION "
        "(token in $CLIPQ_MILVUS_TOKEN) or milvus-lite://PATH.db/COLLECTION",
    )
    p.add_argument(
        "--store-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for a Milvus server (default %(default)s)",
    )
    if build:
        p.add_argument(
            "--index-type",
            default="HNSW",
            choices=("HNSW", "IVF_FLAT", "FLAT"),
            help="Milvus vector index (default %(default)s; HNSW uses --M/--ef-construction)",
        )
        p.add_argument("--nlist", type=int, default=1024, help="IVF_FLAT clusters (default %(default)s)")


def store_target(args: argparse.Namespace, rest: str | None = None) -> str | None:
    """The store URL a command names, or None for an index directory (then checked to be given).

    With ``--store`` the positional that would hold the index directory holds the first of ``rest``
    (an image, an id, a query): it is moved back in front of them.

    Raises:
        InvalidInputError: neither an index directory nor ``--store``, or nothing in ``rest``.
    """
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index.milvus_url import MilvusURL, is_store_url

    url = getattr(args, "store", None)
    if url:
        MilvusURL.parse(url)  # a bad URL: StoreError naming it, before anything opens
        if rest is not None and getattr(args, "index", None) is not None:
            setattr(args, rest, [args.index, *getattr(args, rest)])
        args.index = url
        return url
    index = getattr(args, "index", None)
    if index is None:
        raise InvalidInputError("give the index directory, or --store URL")
    if rest is not None and rest != "texts" and not getattr(args, rest):
        raise InvalidInputError(f"give the {rest} after the index")
    return index if is_store_url(index) else None


def build_target(args: argparse.Namespace) -> str | None:
    """``index build``'s store URL (``--store``, or a URL given as ``-o``), or None for ``-o DIR``.

    Raises:
        InvalidInputError: neither ``-o`` nor ``--store``, or both.
    """
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index.milvus_url import MilvusURL, is_store_url

    if args.store and args.out:
        raise InvalidInputError("give -o DIR or --store URL, not both")
    if not args.store and not args.out:
        raise InvalidInputError("give -o DIR (an index directory) or --store URL (a Milvus collection)")
    if args.store:
        MilvusURL.parse(args.store)  # a bad URL: StoreError naming it
    url = args.store or args.out
    return url if is_store_url(url) or args.store else None


def _open(url: str, args: argparse.Namespace, **kw: Any) -> Any:
    from clipq.runtime.index.stores import open_store

    return open_store(url, timeout=getattr(args, "store_timeout", 10.0), **kw)


def open_index(args: argparse.Namespace, encoder: Any) -> Any:
    """``clipq search``'s collection, once :func:`store_target` has said ``args.index`` is a store URL."""
    return _open(args.index, args, encoder=encoder)


# -- index build / add / delete / info ---------------------------------------------------------------
def run_build(args: argparse.Namespace, url: str) -> int:
    from clipq.app.commands.index import _add_images, _report
    from clipq.runtime.errors import InvalidInputError

    if args.from_embeddings:
        return _build_from_embeddings(args, url)
    if not args.images:
        raise InvalidInputError("give image folders/files, or --from-embeddings DIR")
    backend, encoder = cliutil.open_encoder(args)
    try:
        index = _create(args, url, encoder=encoder)
        try:
            rep = _add_images(index, encoder, args)
            if not len(index):
                raise InvalidInputError("no image could be indexed")
        except BaseException:
            _drop(index)  # the collection this build created: nothing half-built stays behind
            raise
    finally:
        backend.close()
    _report("built", url, index, rep, args.json)
    return 0


def _create(args: argparse.Namespace, url: str, **kw: Any) -> Any:
    """A new collection for ``build`` (an existing, non-empty one only with ``--force``)."""
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index.milvus import NoCollectionError

    try:
        existing = _open(url, args)
    except NoCollectionError:
        pass
    else:
        n = len(existing)
        existing.close()
        if n and not args.force:
            raise InvalidInputError(
                f"{url} already holds {n} items: pass --force to replace them (or `clipq index add`)"
            )
    return _new_collection(url, args, replace=True, **kw)


def _new_collection(url: str, args: argparse.Namespace, *, replace: bool, **kw: Any) -> Any:
    """The collection created (or replaced) with the build options of ``args``."""
    return _open(
        url,
        args,
        create=True,
        replace=replace,
        space=args.space,
        index_type=args.index_type,
        M=args.M,
        ef_construction=args.ef_construction,
        ef=args.ef,
        nlist=args.nlist,
        **kw,
    )


def _drop(index: Any) -> None:
    try:
        index._client.drop_collection(index.collection)
    finally:
        index.close()


def _build_from_embeddings(args: argparse.Namespace, url: str) -> int:
    """Load a `clipq embed` output into the collection, in batches that a rerun resumes."""
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.index.milvus import NoCollectionError
    from clipq.runtime.index.milvus_load import bulk_load, load_progress

    if args.images:
        raise InvalidInputError("--from-embeddings builds from the embeddings alone: give no images")
    summary, counts, readers = embedding_shards(args.from_embeddings, args.captions)
    key = summary["key"]
    kw = {"dim": summary.get("dim"), "model_id": summary.get("model_id")}
    index = None
    if not args.force:
        try:
            index = _open(url, args, **kw)  # an existing collection's dimension and model are checked here
        except NoCollectionError:
            pass
        if index is not None and load_progress(index, key) is None and len(index):
            n = len(index)
            index.close()
            raise InvalidInputError(
                f"{url} already holds {n} items not loaded from {args.from_embeddings}: "
                "pass --force to replace them"
            )
    if index is None:
        index = _new_collection(url, args, replace=args.force, **kw)
    report = bulk_load(index, readers, counts, key, progress=not args.no_progress)
    if args.json:
        print_json(
            {
                "action": "built",
                "index": url,
                "added": report.inserted,
                "skipped": [],
                "load": report.to_dict(),
                **index.info(),
            }
        )
    else:
        again = f", {report.present} already there from an interrupted run" if report.present else ""
        resumed = (
            f" (resumed at shard {report.resumed_at[0]}, row {report.resumed_at[1]})"
            if report.resumed_at
            else ""
        )
        print(
            f"built: {url}: {report.inserted} vectors loaded{resumed}{again} in {report.seconds:.1f} s "
            f"({report.rows_per_s:,.0f}/s), {len(index)} in the collection"
        )
    return 0


def embedding_shards(out: str, captions: str | None = None) -> tuple[dict[str, Any], list[int], list[Any]]:
    """(summary with a ``key``, rows per shard, shard readers) of a finished `clipq embed` directory.

    Each reader checks its shard against its marker (sha256, counts) as ``read_embeddings`` does, but
    one shard at a time: a collection of any size streams through.

    Raises:
        ArtifactError: not a `clipq embed` output, or a shard missing or changed.
    """
    from clipq.app.batch_embed import SHARD_DIR, SUMMARY
    from clipq.runtime.errors import ArtifactError
    from clipq.runtime.manifest import sha256_file

    root = Path(out)
    try:
        raw = (root / SUMMARY).read_bytes()
        summary = json.loads(raw)
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{root}: not a `clipq embed` output ({SUMMARY}: {e})") from e
    cap = cliutil.caption_metadata(captions) if captions else {}
    markers = []
    for n in range(int(summary["shards"])):
        path = root / SHARD_DIR / f"shard-{n:05d}.json"
        try:
            markers.append((path.with_suffix(""), json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{path}: missing or unreadable (re-run `clipq embed`): {e}") from e
    digest = hashlib.sha256(raw)
    for _, m in markers:
        digest.update(json.dumps(m.get("sha256"), sort_keys=True).encode())
    summary = {**summary, "key": digest.hexdigest()[:16]}

    def reader(stem: Path, m: dict[str, Any]) -> Any:
        def read() -> tuple[list[str], Any, list[dict[str, Any]]]:
            import numpy as np

            for suffix in (".npy", ".jsonl"):
                f = Path(f"{stem}{suffix}")
                if not f.is_file() or sha256_file(f) != m["sha256"][suffix]:
                    raise ArtifactError(
                        f"{f}: missing or changed since it was written (re-run `clipq embed`)"
                    )
            v = np.load(f"{stem}.npy", allow_pickle=False)
            rows = [json.loads(line) for line in open(f"{stem}.jsonl", encoding="utf-8")]
            if len(rows) != v.shape[0] or v.shape[0] != m["count"]:
                raise ArtifactError(
                    f"{stem}: {v.shape[0]} vectors, {len(rows)} ids, marker says {m['count']}"
                )
            ids = [r["id"] for r in rows]
            return ids, v, [{"path": r["path"], **cap.get(r["id"], {})} for r in rows]

        return read

    return summary, [int(m["count"]) for _, m in markers], [reader(s, m) for s, m in markers]


def run_add(args: argparse.Namespace, url: str) -> int:
    from clipq.app.commands.index import _add_images, _report
    from clipq.runtime.errors import InvalidInputError

    if not args.images:
        raise InvalidInputError("give image folders/files to add")
    backend, encoder = cliutil.open_encoder(args)
    try:
        index = _open(url, args, encoder=encoder)
        rep = _add_images(index, encoder, args, ids=args.ids)
    finally:
        backend.close()
    _report("added", url, index, rep, args.json)
    return 0


def run_delete(args: argparse.Namespace, url: str) -> int:
    from clipq.runtime.errors import InvalidInputError

    if not args.ids:
        raise InvalidInputError("give the ids to delete")
    index = _open(url, args)
    n = index.delete(args.ids)
    if args.json:
        print_json({"action": "deleted", "index": url, **index.info(), "deleted": n, "awaiting_rebuild": 0})
    else:
        print(f"deleted: {url}: {n} items, {len(index)} left")
    return 0


def run_info(args: argparse.Namespace, url: str) -> int:
    def lines(info: dict[str, Any]) -> tuple[list[str], list[str]]:
        return [f"{url}: {info['count']} items in Milvus collection {info['collection']!r}",
                f"  dim {info['dim']}, space {info['space']}, index {json.dumps(info['index'])}, ef {info['ef']}"], []

    return report_info(args, url, _open(url, args), lines, "Milvus", "exact scan")


def report_info(args: argparse.Namespace, name: str, index: Any,
                lines: Callable[[dict[str, Any]], tuple[list[str], list[str]]], approx: str, exact: str) -> int:
    """``clipq index info`` of any store: its ``info()`` (and ``--recall``) as JSON or as text.

    Args:
        lines: info -> (the lines before the model line, the lines after it) that describe the store.
        approx / exact: what the recall line calls the store's search and the exact one.
    """
    info = {"index": name, **index.info()}
    if args.recall:
        info["recall"] = index.recall_check(k=args.k, n_queries=args.queries).to_dict()
    if args.json:
        print_json(info)
        return 0
    head, tail = lines(info)
    model = info["model_id"] or "unknown"
    print("\n".join([*head, f"  model {model[:16]}{'...' if len(model) > 16 else ''}", *tail]))
    if args.recall:
        r = info["recall"]
        print(
            f"  recall@{r['k']} {r['recall']:.4f} (min {r['min_recall']:.2f}) on {r['n_queries']} queries at "
            f"ef {r['ef']}; {approx} {r['hnsw_qps']:.0f} QPS vs {exact} {r['exact_qps']:.0f} QPS"
        )
    return 0
