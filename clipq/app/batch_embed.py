"""Batch embedding of large image collections: sharded, resumable, in process, on Ray Data, or via Triton.

``clipq embed IMAGES --out DIR`` lists the images (sorted, so a re-run sees the same shards), cuts
them into shards of ``shard_size`` and encodes each shard with :class:`ShardEncoder`, writing

    DIR/shards/shard-00000.npy     float32 [n, D], L2-normalised embeddings
    DIR/shards/shard-00000.jsonl   one {"id", "path"} per row, in the .npy's order
    DIR/shards/shard-00000.json    the commit marker: count, sha256 of both files, the input ids' hash
    DIR/skipped.jsonl              every unreadable image with the reason (never fatal to the job)
    DIR/embed.json                 the summary: model id, dim, totals, throughput, mode

A shard is done when its marker exists and matches its inputs: a restart skips it. The marker is
written last (atomically), so an interrupted shard is redone, never half-read. The encoding itself is
one code path, :meth:`ShardEncoder.encode_shard`: called in a loop in process, as Ray Data
``map_batches`` actors with ``--ray`` (local Ray or a cluster address), and against a Triton server
with ``--server`` (the encoder then sends image bytes to the server's ``embed_image`` ensemble).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import ArtifactError, InvalidInputError
from clipq.runtime.manifest import atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
SUMMARY = "embed.json"
SKIPPED = "skipped.jsonl"
FORMAT = "clipq.embeddings"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Shard:
    """One unit of work: a slice of the sorted image list."""

    number: int
    ids: tuple[str, ...]
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.number:05d}"

    @property
    def inputs_hash(self) -> str:
        return hashlib.sha256("\n".join(f"{i}\t{p}" for i, p in zip(self.ids, self.paths)).encode()).hexdigest()

    def to_row(self) -> dict[str, Any]:
        return {"number": self.number, "ids": list(self.ids), "paths": list(self.paths)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Shard:
        return cls(int(row["number"]), tuple(row["ids"]), tuple(row["paths"]))


def collect(images: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[str]]:
    """(ids, absolute paths) of every image in the folders/files given, sorted by id.

    Ids are as ``clipq index build`` gives them: a folder's files by their path relative to the
    folder without the extension; a listed file by its stem.

    Raises:
        InvalidInputError: a path does not exist, no images at all, or two images share an id.
    """
    from clipq.runtime.index import list_images

    pairs: list[tuple[str, str]] = []
    for src in images:
        p = Path(src)
        if p.is_dir():
            pairs += [(f.relative_to(p).with_suffix("").as_posix(), str(f.resolve())) for f in list_images(p)]
        elif p.is_file():
            pairs.append((p.stem, str(p.resolve())))
        else:
            raise InvalidInputError(f"no such file or folder: {src}")
    pairs.sort()
    ids = [i for i, _ in pairs]
    dup = next((a for a, b in zip(ids, ids[1:]) if a == b), None)
    if dup is not None:
        raise InvalidInputError(f"two images have the id {dup!r}: embed one folder per collection")
    return ids, [p for _, p in pairs]


def plan_shards(ids: Sequence[str], paths: Sequence[str], shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise InvalidInputError(f"shard_size must be >= 1, not {shard_size}")
    return [Shard(n, tuple(ids[i:i + shard_size]), tuple(paths[i:i + shard_size]))
            for n, i in enumerate(range(0, len(ids), shard_size))]


def shard_done(out: Path, shard: Shard) -> bool:
    """Whether ``shard``'s committed files exist, match its inputs and their recorded hashes."""
    marker = out / SHARD_DIR / f"{shard.name}.json"
    try:
        m = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if m.get("inputs") != shard.inputs_hash:
        return False
    for suffix in (".npy", ".jsonl"):
        f = out / SHARD_DIR / f"{shard.name}{suffix}"
        if not f.is_file() or sha256_file(f) != m.get("sha256", {}).get(suffix):
            return False
    return True


@dataclass
class ShardResult:
    number: int
    count: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


class ShardEncoder:
    """Encode shards and write their files: the one encoding path of every mode.

    Opens its backend lazily (once per process or Ray actor): ``connect(artifacts, threads=...)`` in
    process, ``connect(server=URL)`` for Triton. Constructed from plain values so Ray can ship it.
    """

    def __init__(self, out: str, artifacts: str | None = None, server: str | None = None,
                 threads: int | None = None, batch_size: int = 64, variant: str | None = None) -> None:
        self.out, self.artifacts, self.server = Path(out), artifacts, server
        self.threads, self.batch_size, self.variant = threads, batch_size, variant
        self._backend: Any = None
        self._encoder: Any = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            import clipq.runtime as rt

            # in process the engine does not busy-wait: the decode pool needs the cores (docs/export.md)
            kw = {} if self.server else {"threads": self.threads, "variant": self.variant, "spin": False}
            self._backend = rt.connect(self.artifacts, server=self.server, **kw)
            self._encoder = rt.ClipEncoder(self._backend)
        return self._encoder

    def encode_shard(self, shard: Shard) -> ShardResult:
        """Encode one shard (unreadable images skipped and reported) and commit its files."""
        from clipq.runtime.index import AddReport
        from clipq.runtime.index.ingest import encode_pipelined

        t0 = time.perf_counter()
        enc = self.encoder
        report = AddReport()
        kept_rows: list[int] = []
        vecs: list[np.ndarray] = []
        # the index build's pipeline: one batch decodes while the other is in the engine
        for _, kept, v, skipped in encode_pipelined(enc, shard.paths, shard.ids, self.batch_size, True):
            report.skipped.extend(skipped)
            kept_rows += kept
            if kept:
                vecs.append(np.asarray(v, np.float32))
        emb = np.concatenate(vecs) if vecs else np.zeros((0, int(enc.dim)), np.float32)
        self._commit(shard, emb, kept_rows, report.skipped)
        return ShardResult(shard.number, len(kept_rows), report.skipped, time.perf_counter() - t0)

    def _commit(self, shard: Shard, emb: np.ndarray, rows: list[int], skipped: list[tuple[str, str]]) -> None:
        import io

        d = self.out / SHARD_DIR
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, emb.astype(np.float32), allow_pickle=False)
        atomic_write_bytes(d / f"{shard.name}.npy", buf.getvalue())
        lines = "".join(json.dumps({"id": shard.ids[i], "path": shard.paths[i]}) + "\n" for i in rows)
        atomic_write_bytes(d / f"{shard.name}.jsonl", lines.encode())
        atomic_write_json(d / f"{shard.name}.json", {
            "shard": shard.number, "count": len(rows), "inputs": shard.inputs_hash,
            "sha256": {s: sha256_file(d / f"{shard.name}{s}") for s in (".npy", ".jsonl")},
            "model_id": getattr(self.encoder, "model_id", None), "dim": int(emb.shape[1]) if emb.size else None,
            "skipped": [list(x) for x in skipped],
        })

    # -- Ray Data: map_batches calls the actor with a batch of shard rows ------------------------
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [self.encode_shard(Shard.from_row(json.loads(r))) for r in batch["shard"]]
        return {"result": np.array([json.dumps(_result_row(r)) for r in results], dtype=object)}

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def _result_row(r: ShardResult) -> dict[str, Any]:
    return {"number": r.number, "count": r.count, "skipped": r.skipped, "seconds": r.seconds}


@dataclass
class EmbedSummary:
    out: Path
    mode: str
    shards: int
    shards_done_before: int
    images: int
    embedded: int
    skipped: int
    seconds: float
    model_id: str | None = None
    dim: int | None = None
    encoded_now: int = 0  # images this run encoded (skipped ones included)
    startup_s: float = 0.0  # of ``seconds``: starting Ray
    shard_s: float = 0.0  # seconds the workers spent in shards, summed over workers
    workers: int = 1

    @property
    def images_per_s(self) -> float:
        """This run's throughput, startup excluded (0 when every shard was already done)."""
        busy = self.seconds - self.startup_s
        return self.encoded_now / busy if self.encoded_now and busy > 0 else 0.0

    @property
    def encode_images_per_s(self) -> float:
        """What the workers sustain once running: images over their in-shard time, times the workers."""
        return self.encoded_now / self.shard_s * self.workers if self.encoded_now and self.shard_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "out": str(self.out), "mode": self.mode,
                "shards": self.shards, "shards_done_before": self.shards_done_before, "images": self.images,
                "embedded": self.embedded, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "startup_s": round(self.startup_s, 3), "encoded_now": self.encoded_now,
                "images_per_s": round(self.images_per_s, 2), "shard_s": round(self.shard_s, 3),
                "encode_images_per_s": round(self.encode_images_per_s, 2), "workers": self.workers,
                "model_id": self.model_id, "dim": self.dim}


def embed_collection(images: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                     artifacts: str | None = None, server: str | None = None, ray: str | bool | None = None,
                     workers: int = 2, shard_size: int = 1024, batch_size: int = 64, threads: int | None = None,
                     variant: str | None = None, progress: bool = True) -> EmbedSummary:
    """Embed every image under ``images`` into sharded files at ``out`` (see the module docstring).

    Args:
        images: folders (searched recursively) and/or image files.
        out: output directory; shards already committed there for the same inputs are skipped.
        artifacts: the artifact directory (in process and Ray workers).
        server: a Triton URL: workers send the images there instead of running the model.
        ray: ``None``/``False``: in process; ``True``: a local Ray; a string: a Ray cluster address.
        workers: Ray actors (each one backend; in process: ignored).
        shard_size: images per shard (the unit of resume).
        batch_size: images per encoder call.
        threads: onnxruntime threads per worker (default: cores / workers under Ray).
        variant: the graph variant in process ("fp32", "int8"; default: the manifest's choice).
        progress: a progress bar over shards.

    Raises:
        InvalidInputError: no images, or bad sizes. ArtifactError: ``out`` holds embeddings of another model.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    ids, paths = collect(images)
    shards = plan_shards(ids, paths, shard_size)
    todo = [s for s in shards if not shard_done(out, s)]
    done_before = len(shards) - len(todo)
    mode = "triton" if server else ("ray" if ray else "in-process")
    t0 = time.perf_counter()
    results: list[ShardResult] = []
    startup = 0.0
    if todo:
        if ray:
            results, startup = _run_ray(todo, out, artifacts, server, ray, workers, batch_size, threads, variant,
                                        progress)
        else:
            enc = ShardEncoder(str(out), artifacts, server, threads, batch_size, variant)
            try:
                for s in tqdm(todo, unit="shard", desc="embedding", disable=not progress):
                    results.append(enc.encode_shard(s))
            finally:
                enc.close()
    seconds = time.perf_counter() - t0
    markers = [json.loads((out / SHARD_DIR / f"{s.name}.json").read_text()) for s in shards]
    skipped = [(name, reason) for m in markers for name, reason in m.get("skipped", [])]
    atomic_write_bytes(out / SKIPPED, "".join(json.dumps({"image": n, "reason": r}) + "\n" for n, r in skipped).encode())
    model_id, dim = _check_model(out, markers)
    summary = EmbedSummary(out, mode, len(shards), done_before, len(ids), sum(int(m["count"]) for m in markers),
                           len(skipped), seconds, model_id, dim,
                           encoded_now=sum(r.count + len(r.skipped) for r in results), startup_s=startup,
                           shard_s=sum(r.seconds for r in results), workers=min(workers, len(todo)) if ray else 1)
    atomic_write_json(out / SUMMARY, {**summary.to_dict(), "run": {
        "shards_encoded": len(results),
        "ray": ray if isinstance(ray, str) else bool(ray), "server": server}})
    return summary


#: local Ray starts tried: its raylet must register within a fixed 30 s, which a loaded 2-core
#: machine can miss once (seen while a benchmark ran beside the tests)
RAY_START_TRIES = 2


def _start_ray(ray: Any, ray_arg: str | bool) -> None:
    """``ray.init`` (a cluster at ``ray_arg``, else a local Ray on every core), retried once locally.

    Raises:
        BackendUnavailable: Ray did not start (its own message and the address named).
    """
    from clipq.runtime.errors import BackendUnavailable

    kw: dict[str, Any] = {"address": ray_arg} if isinstance(ray_arg, str) else {"num_cpus": os.cpu_count() or 2}
    tries = 1 if isinstance(ray_arg, str) else RAY_START_TRIES
    for attempt in range(1, tries + 1):
        try:
            ray.init(**kw, include_dashboard=False, log_to_driver=False, configure_logging=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises bare Exceptions on start-up failures
            ray.shutdown()
            where = f"the Ray cluster at {ray_arg}" if isinstance(ray_arg, str) else "a local Ray"
            if attempt == tries:
                raise BackendUnavailable(f"{where} did not start ({e}); tried {tries} time(s)") from e
            log.warning("%s did not start (%s); trying again", where, e)


def _run_ray(todo: list[Shard], out: Path, artifacts: str | None, server: str | None, ray_arg: str | bool,
             workers: int, batch_size: int, threads: int | None, variant: str | None,
             progress: bool) -> tuple[list[ShardResult], float]:
    """Encode ``todo`` on Ray Data actors; returns the results and the seconds spent starting Ray."""
    try:
        import ray
    except ImportError as e:
        from clipq.runtime.errors import MissingDependencyError

        raise MissingDependencyError("ray[data]", "scale", "--ray") from e
    t0 = time.perf_counter()
    started = not ray.is_initialized()
    if started:
        _start_ray(ray, ray_arg)
    try:
        per_worker = threads or max(1, (os.cpu_count() or 2) // max(1, workers))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        ds = ray.data.from_items([{"shard": json.dumps(s.to_row())} for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            ShardEncoder, fn_constructor_kwargs={"out": str(out), "artifacts": artifacts, "server": server,
                                                 "threads": per_worker, "batch_size": batch_size,
                                                 "variant": variant},
            batch_size=1, concurrency=workers, num_cpus=per_worker if not server else 0.5,
        )
        startup = time.perf_counter() - t0  # ray.init; the actors start inside take_all (counted as work)
        rows = [json.loads(r["result"]) for r in ds.take_all()]
    finally:
        if started:
            ray.shutdown()
    return [ShardResult(r["number"], r["count"], [tuple(x) for x in r["skipped"]], r["seconds"]) for r in rows], startup


def _check_model(out: Path, markers: Sequence[dict[str, Any]]) -> tuple[str | None, int | None]:
    """The one model id and dim of every shard (they must agree: one collection, one embedding space)."""
    ids = {m.get("model_id") for m in markers}
    dims = {m.get("dim") for m in markers} - {None}
    if len(ids) > 1 or len(dims) > 1:
        raise ArtifactError(f"{out}: shards were embedded by different models ({sorted(map(str, ids))}); "
                            "embed into a fresh directory")
    return next(iter(ids), None), next(iter(dims), None)


def read_embeddings(out: str | os.PathLike[str]) -> tuple[np.ndarray, list[str], list[dict[str, Any]], dict[str, Any]]:
    """(embeddings [N, D], ids, metadata, summary) of a finished ``clipq embed`` directory.

    Raises:
        ArtifactError: no summary, or a shard missing, changed or inconsistent with its marker.
    """
    out = Path(out)
    try:
        summary = json.loads((out / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{out}: not a `clipq embed` output ({SUMMARY}: {e})") from e
    vecs, ids, metas = [], [], []
    for n in range(int(summary["shards"])):  # this run's shards (a longer earlier run's extra ones are not)
        marker_path = out / SHARD_DIR / f"shard-{n:05d}.json"
        try:
            m = json.loads(marker_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{marker_path}: missing or unreadable (re-run `clipq embed`): {e}") from e
        stem = marker_path.with_suffix("")
        for suffix in (".npy", ".jsonl"):
            f = Path(f"{stem}{suffix}")
            if not f.is_file() or sha256_file(f) != m["sha256"][suffix]:
                raise ArtifactError(f"{f}: missing or changed since it was written (re-run `clipq embed`)")
        v = np.load(f"{stem}.npy", allow_pickle=False)
        rows = [json.loads(line) for line in open(f"{stem}.jsonl", encoding="utf-8")]
        if len(rows) != v.shape[0] or v.shape[0] != m["count"]:
            raise ArtifactError(f"{stem}: {v.shape[0]} vectors, {len(rows)} ids, marker says {m['count']}")
        if v.shape[0]:
            vecs.append(v)
        ids += [r["id"] for r in rows]
        metas += [{"path": r["path"]} for r in rows]
    if not vecs:
        raise ArtifactError(f"{out}: no embeddings in the shards")
    return np.concatenate(vecs), ids, metas, summary
