"""Compact copies of a ``clipq embed`` output: ``clipq embed ... --codes int8,ubinary [--projection P]``.

After the float shards are done (they stay as they are: ``clipq index build --from-embeddings`` reads
them), the collection's embeddings are written again, smaller, for a store that holds codes (a vector
database's int8 or binary field, a memory-mapped rescoring file):

    DIR/compact/projection.npz   the projection used (``--projection``), copied
    DIR/compact/float32.npy      the projected float vectors (only with ``--projection``: for rescoring)
    DIR/compact/int8.npz         int8 ranges calibrated on this collection (``int8`` / ``uint8``)
    DIR/compact/<code>.npy       one array per code, rows in ``ids.jsonl``'s order
    DIR/compact/ids.jsonl        one id a line (a JSON string)
    DIR/compact/compact.json     what was written: written last, the commit point

Every file is written atomically; a re-run replaces them.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

COMPACT_DIR = "compact"
COMPACT_SUMMARY = "compact.json"


def parse_codes(value: str | None) -> list[str]:
    """``"int8,ubinary"`` -> ``["int8", "ubinary"]``, each checked against the known encodings.

    Raises:
        InvalidInputError: an unknown code.
    """
    from clipq.runtime.compact import BINARY_FORMATS, INT8_FORMATS
    from clipq.runtime.errors import InvalidInputError

    codes = [c.strip() for c in (value or "").split(",") if c.strip()]
    known = (*INT8_FORMATS, *BINARY_FORMATS)
    for c in codes:
        if c not in known:
            raise InvalidInputError(f"--codes: unknown code {c!r}; choose from {', '.join(known)}")
    return list(dict.fromkeys(codes))


def load_projection(path: str | os.PathLike[str]) -> Any:
    """A projection from a ``projection.npz`` file or an index directory holding one.

    Raises:
        ArtifactError: no projection there, or an unreadable one.
    """
    from clipq.runtime.compact import PROJECTION_NAME, Projection
    from clipq.runtime.errors import ArtifactError

    p = Path(path)
    if p.is_dir():
        if not (p / PROJECTION_NAME).is_file():
            raise ArtifactError(f"{p} holds no {PROJECTION_NAME}: make one with `clipq index project`")
        p = p / PROJECTION_NAME
    return Projection.load(p)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    from clipq.runtime.manifest import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def write_compact(out: str | os.PathLike[str], codes: Sequence[str], projection: str | os.PathLike[str] | None = None
                  ) -> dict[str, Any]:
    """Write ``DIR/compact/`` (see the module docstring) from the finished embeddings at ``out``.

    Returns:
        The summary written to ``compact.json``.

    Raises:
        ArtifactError: ``out`` is not a finished ``clipq embed`` output, or the projection was fitted
            on another model's embeddings.
        InvalidInputError: nothing to write.
    """
    from clipq.app.batch_embed import read_embeddings
    from clipq.runtime.compact import INT8_FORMATS, INT8_NAME, PROJECTION_NAME, Int8Codec, quantize
    from clipq.runtime.errors import ArtifactError, InvalidInputError
    from clipq.runtime.manifest import atomic_write_bytes, atomic_write_json

    if not codes and projection is None:
        raise InvalidInputError("nothing to write: give --codes and/or --projection")
    vecs, ids, _, summary = read_embeddings(out)
    dest = Path(out) / COMPACT_DIR
    dest.mkdir(parents=True, exist_ok=True)
    (dest / COMPACT_SUMMARY).unlink(missing_ok=True)  # the commit point goes first, comes back last
    model_id = summary.get("model_id")
    files: dict[str, Any] = {}
    if projection is not None:
        proj = load_projection(projection)
        if proj.model_id and model_id and proj.model_id != model_id:
            raise ArtifactError(f"the projection was fitted on model {proj.model_id!r}, these embeddings are "
                                f"{model_id!r}")
        vecs = proj.apply(vecs)
        proj.save(dest / PROJECTION_NAME)
        _save_npy(dest / "float32.npy", vecs)
        files["float32"] = {"file": "float32.npy", "dtype": "float32", "shape": list(vecs.shape)}
        model_id = proj.projected_id(model_id)
    codec = None
    if any(c in INT8_FORMATS for c in codes):
        codec = Int8Codec.fit(vecs)
        codec.save(dest / INT8_NAME)
    for code in codes:
        arr = quantize(vecs, code, codec)
        _save_npy(dest / f"{code}.npy", arr)
        files[code] = {"file": f"{code}.npy", "dtype": str(arr.dtype), "shape": list(arr.shape)}
    atomic_write_bytes(dest / "ids.jsonl", "".join(json.dumps(i) + "\n" for i in ids).encode())
    result = {"format": "clipq.compact_embeddings", "count": len(ids), "dim": int(vecs.shape[1]),
              "model_id": model_id, "projection": PROJECTION_NAME if projection is not None else None,
              "int8_ranges": INT8_NAME if codec is not None else None, "files": files, "ids": "ids.jsonl"}
    atomic_write_json(dest / COMPACT_SUMMARY, result)
    return result
