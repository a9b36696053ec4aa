"""Adding images to the index through an encoder: folders, paths, bytes, PIL images, arrays."""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidInputError
from .validate import MetadataArg, check_ids_unique, check_metadata

if TYPE_CHECKING:
    from .store import ImageIndex

log = logging.getLogger(__name__)

#: encoder calls in flight while indexing (one decoding while one is in the engine)
AHEAD = 2
#: smallest encoder call when a folder is split so that decoding and the engine overlap
MIN_BATCH = 8

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@runtime_checkable
class ImageEncoder(Protocol):
    """What the index needs from an encoder (``clipq.runtime.ClipEncoder`` is one)."""

    dim: int
    model_id: str

    def encode_images(self, images: Sequence[Any], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Return float32 [N, dim] L2-normalised embeddings."""
        ...


@dataclass
class AddReport:
    """What :meth:`ImageIndex.add_images` did: ids added, and (source, reason) of items skipped."""

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by extension), sorted so that builds are reproducible.

    Raises:
        InvalidInputError: the folder does not exist or holds no images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInputError(f"not a folder: {root}")
    walk = root.rglob("*") if recursive else root.glob("*")
    paths = sorted(p for p in walk if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InvalidInputError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}")
    return paths


class IngestMixin:
    """The image half of :class:`~clipq.runtime.index.ImageIndex`: encode, then :meth:`add`."""

    # provided by ImageIndex
    model_id: str | None
    model_hash: str | None
    _id_to_label: dict[str, int]
    check_encoder: Callable[[Any], None]
    add: Callable[..., list[str]]

    @classmethod
    def from_images(
        cls,
        images: str | os.PathLike[str] | Sequence[Any],
        encoder: ImageEncoder,
        *,
        ids: Sequence[str] | None = None,
        metadata: MetadataArg = None,
        batch_size: int = 64,
        progress: bool = True,
        skip_invalid: bool = False,
        **kwargs: Any,
    ) -> ImageIndex:
        """Encode images with ``encoder`` (any backend) and index them.

        Args:
            images: a folder (searched recursively), or a list of paths, bytes, PIL images or
                uint8 arrays.
            encoder: an :class:`ImageEncoder`; its ``dim`` and ``model_id`` are recorded.
            ids, metadata, batch_size, progress, skip_invalid: see :meth:`add_images`.
            **kwargs: :class:`ImageIndex` parameters.

        Returns:
            The index.

        Raises:
            InvalidInputError: no images, or an unreadable one (unless ``skip_invalid``).
        """
        kwargs.setdefault("model_id", getattr(encoder, "model_id", None))
        kwargs.setdefault("model_hash", getattr(encoder, "model_hash", None))
        index = cls(int(encoder.dim), **kwargs)
        index.add_images(
            images, encoder, ids=ids, metadata=metadata, batch_size=batch_size, progress=progress,
            skip_invalid=skip_invalid,
        )
        return index

    def add_images(
        self,
        images: str | os.PathLike[str] | Sequence[Any],
        encoder: ImageEncoder,
        *,
        ids: Sequence[str] | None = None,
        metadata: MetadataArg = None,
        batch_size: int = 64,
        progress: bool = True,
        skip_invalid: bool = False,
    ) -> AddReport:
        """Encode images in batches and add them, with a progress bar.

        Default ids: a folder's files get their path relative to the folder without the extension
        (``test_000123`` for a flat folder); listed paths get the path as given; bytes, PIL images
        and arrays get ``item-<n>``. Paths put ``{"path": <absolute path>}`` into the metadata,
        merged under what ``metadata`` gives.

        Args:
            images: a folder, or a list of paths, bytes, PIL images or uint8 HWC arrays.
            encoder: an :class:`ImageEncoder` whose ``dim`` (and ``model_id``, if the index has
                one) match the index.
            ids: one unique string per image (overrides the defaults).
            metadata: a list aligned with the images, or a mapping id -> dict.
            batch_size: most images per encoder call (a small folder is split into at least four
                calls of ``MIN_BATCH`` or more, so that decoding overlaps the engine).
            progress: show a progress bar.
            skip_invalid: skip images the encoder rejects (logged and reported) instead of failing.

        Returns:
            An :class:`AddReport`: ids added and items skipped.

        Raises:
            DimensionMismatchError / ArtifactError: the encoder does not match the index.
            InvalidInputError: an image is unusable (unless ``skip_invalid``), or ids/metadata are.
            DuplicateIdError: an id is already in the index.
        """
        self.check_encoder(encoder)
        items, default_ids, base_meta = _expand_images(images)
        if ids is not None:
            if len(ids) != len(items):
                raise InvalidInputError(f"got {len(ids)} ids for {len(items)} images")
            default_ids = list(ids)
        id_list: list[str | None] = list(default_ids)
        check_ids_unique(id_list, self._id_to_label)
        user_meta = check_metadata(metadata, id_list)
        metas = [{**base, **dict(user)} for base, user in zip(base_meta, user_meta)]
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, not {batch_size}")

        from tqdm.auto import tqdm

        report = AddReport()
        with tqdm(total=len(items), unit="img", desc="indexing", disable=not progress) as bar:
            for batch, kept, vecs, skipped in encode_pipelined(encoder, items, id_list, batch_size, skip_invalid):
                report.skipped.extend(skipped)
                if kept:
                    report.added.extend(self.add(vecs, [id_list[i] for i in kept], [metas[i] for i in kept]))
                bar.update(len(batch))
        if self.model_id is None:
            self.model_id = getattr(encoder, "model_id", None)
            self.model_hash = getattr(encoder, "model_hash", None)
        return report


def _expand_images(images: Any) -> tuple[list[Any], list[str | None], list[dict[str, Any]]]:
    """(items for the encoder, default ids, base metadata) of what ``add_images`` was given."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        root = Path(images)
        paths = list_images(root)
        ids: list[str | None] = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
        return [str(p) for p in paths], ids, [{"path": str(p.resolve())} for p in paths]
    if isinstance(images, (str, os.PathLike, bytes)):
        images = [images]
    items = list(images)
    if not items:
        raise InvalidInputError("no images given")
    ids, metas = [], []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            ids.append(os.fspath(item))
            metas.append({"path": str(Path(item).resolve())})
        else:
            ids.append(None)
            metas.append({})
    return [os.fspath(i) if isinstance(i, os.PathLike) else i for i in items], ids, metas


def pipeline_batches(n: int, batch_size: int) -> list[range]:
    """The batches :func:`encode_pipelined` cuts ``n`` items into: at most ``batch_size``, and small
    enough that ``AHEAD`` calls overlap (at least ``MIN_BATCH`` each)."""
    step = min(batch_size, max(MIN_BATCH, -(-n // (2 * AHEAD))))
    return [range(s, min(s + step, n)) for s in range(0, n, step)]


def encode_pipelined(
    encoder: ImageEncoder,
    items: Sequence[Any],
    id_list: Sequence[str | None],
    batch_size: int,
    skip_invalid: bool,
) -> Iterator[tuple[list[int], list[int], np.ndarray, list[tuple[str, str]]]]:
    """Encode ``items`` in batches, ``AHEAD`` encoder calls in flight; yields in input order.

    One call decodes (in the runtime's decode pool) while the other is in the engine, so neither
    the cores nor the engine wait. A small input still gets a few calls of ``MIN_BATCH`` or more:
    there is nothing to overlap in one.

    Yields:
        (batch positions, positions kept, their embeddings, (name, reason) of the items skipped).

    Raises:
        InvalidInputError: an unusable image, unless ``skip_invalid`` (see :func:`encode_batch`).
    """
    batches = [list(r) for r in pipeline_batches(len(items), batch_size)]
    reports = [AddReport() for _ in batches]
    with ThreadPoolExecutor(AHEAD, thread_name_prefix="clipq-encode") as pool:
        running: deque[Future[tuple[list[int], np.ndarray]]] = deque()
        submitted = 0
        try:
            for k, batch in enumerate(batches):
                while submitted < len(batches) and len(running) < AHEAD:
                    running.append(pool.submit(encode_batch, encoder, items, id_list, batches[submitted],
                                               skip_invalid, reports[submitted]))
                    submitted += 1
                kept, vecs = running.popleft().result()
                yield batch, kept, vecs, reports[k].skipped
        finally:
            for f in running:
                f.cancel()


def encode_batch(
    encoder: ImageEncoder,
    items: Sequence[Any],
    id_list: Sequence[str | None],
    batch: list[int],
    skip_invalid: bool,
    report: AddReport,
) -> tuple[list[int], np.ndarray]:
    """(positions kept, their embeddings) of one batch; skipped items go into ``report``."""
    try:
        return batch, encoder.encode_images([items[i] for i in batch], batch_size=len(batch))
    except InvalidInputError as e:
        if not skip_invalid:
            # the encoder counts within its batch; the caller wants the position in the call
            pos = batch[e.index] if e.index is not None and e.index < len(batch) else None
            source = id_list[pos] if pos is not None else e.source
            raise type(e)(e.reason, index=pos, source=source) from e
    # one bad image spoils its batch: encode that batch one by one to find and skip it
    kept, vecs = [], []
    for i in batch:
        try:
            vecs.append(encoder.encode_images([items[i]], batch_size=1))
            kept.append(i)
        except InvalidInputError as e:
            name = id_list[i] or f"image {i}"
            log.warning("skipping %s: %s", name, e)
            report.skipped.append((name, str(e)))
    return kept, (np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32))
