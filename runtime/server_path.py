"""The thin remote client: what a clipq server says about itself, and the bytes-in path to its ensembles.

A repository rendered by clipq serves a small model, ``clipq_info``, that answers one JSON document:
the public part of the manifest it was rendered from (dims, answer vocabulary, the networks'
tensor specs and graph hashes, tokenizer lengths, preprocessing), the models it serves with their
batch limits, and the facts of Model B's KNN database. :func:`manifest_from_info` turns it into a
:class:`ServerManifest`, so ``connect(server=URL)`` needs no local artifact directory.

:class:`ServerPath` is how the task classes reach such a server: images go as encoded bytes and
texts as strings to the ensembles of :data:`PIPELINES`, which decode, preprocess and tokenise in
the server; ``describe`` runs Model A, Model B's neighbour search and the ensemble head there too.
Where the server lacks an ensemble and local artifacts are at hand, that one step runs on tensors
(:class:`~clipq.runtime.local_path.LocalPath`) instead.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import Call, Steps, chunked, gather_rows
from .errors import ArtifactError, InvalidImageError, SchemaVersionError
from .local_path import LocalPath
from .manifest import SCHEMA_VERSION, Manifest, ModelSpec
from .preprocess import decode_image, source_name  # source_name: the name an error gives an input
from .specs import CLIP_IMAGE, CLIP_TEXT, IMG2PROMPT_A, PROMPT_TEXT, READING_IMAGE, READING_TEXT, VQA

#: the model a clipq repository describes itself with, and its tensors
INFO_MODEL = "clipq_info"
INFO_INPUT, INFO_OUTPUT = "request", "info"
INFO_FORMAT, INFO_SCHEMA = "clipq.server_info", 1
#: Model B's python model (neighbour search, ensemble head, nearest prompts) and the ensemble over it
KNN_MODEL = "knn_prompts"
DESCRIBE = "describe"
#: per-text truncation flags, an output of every text-in ensemble
TRUNCATED = "truncated"


@dataclass(frozen=True)
class Pipeline:
    """A bytes-in (or text-in) ensemble as the client sees it: what it takes and which output is the result."""

    name: str
    inputs: tuple[str, ...]
    output: str


#: network -> the ensemble that gives its result from bytes or strings
PIPELINES: dict[str, Pipeline] = {
    CLIP_IMAGE: Pipeline("embed_image", ("image",), "image_embeds"),
    IMG2PROMPT_A: Pipeline("predict_prompt", ("image",), "prompt_embeds"),
    CLIP_TEXT: Pipeline("embed_text", ("text",), "text_embeds"),
    PROMPT_TEXT: Pipeline("embed_prompt", ("text",), "sentence_embeds"),
    VQA: Pipeline("ask_embeds", ("image_embeds", "question"), "probs"),
    READING_IMAGE: Pipeline("read_image", ("image",), "image_embeds"),
    READING_TEXT: Pipeline("read_text", ("text",), "text_embeds"),
}


# -- the server's own description ----------------------------------------------------------------
class ServerManifest(Manifest):
    """The manifest a thin client gets from the server: every fact, no files.

    ``resolve`` refuses with a clear reason: what needs a file (a tokenizer, a graph) runs in the
    server.
    """

    url: str = ""

    def resolve(self, rel: str | os.PathLike[str], *, verify: bool = True) -> Path:
        raise ArtifactError(
            f"{self.root}: {Path(rel).as_posix()} is not on this machine: a client of the server at {self.url} "
            "has no artifact files (the server holds them); pass the artifact directory to connect() to run locally")

    def resolve_dir(self, rel_dir: str | os.PathLike[str], *, verify: bool = True) -> Path:
        return self.resolve(rel_dir)


def parse_info(raw: Any, url: str) -> dict[str, Any]:
    """The JSON document ``clipq_info`` answered (``raw``: its output tensor).

    Raises:
        ArtifactError: not a clipq server description.
        SchemaVersionError: written by a clipq whose description this one cannot read.
    """
    item = np.asarray(raw, dtype=object).reshape(-1)[0] if np.size(raw) else b""
    try:
        info = json.loads(item.decode("utf-8") if isinstance(item, (bytes, bytearray)) else str(item))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"the server at {url} answered {INFO_MODEL} with something that is not JSON: {e}") from e
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT:
        raise ArtifactError(f"the server at {url}: {INFO_MODEL} is not a clipq server description")
    if info.get("schema_version") != INFO_SCHEMA:
        raise SchemaVersionError(f"the server at {url} describes itself with schema {info.get('schema_version')!r}; "
                                 f"this clipq reads {INFO_SCHEMA}")
    return info


def manifest_from_info(info: Mapping[str, Any], url: str, root: str) -> ServerManifest:
    """A :class:`ServerManifest` from a server description (see :func:`parse_info`).

    Raises:
        SchemaVersionError: the server's artifacts were written by another manifest schema.
    """
    d = info["manifest"]
    if d.get("schema_version") != SCHEMA_VERSION:
        raise SchemaVersionError(f"the server at {url} serves artifacts of manifest schema "
                                 f"{d.get('schema_version')!r}; this clipq reads {SCHEMA_VERSION}")
    m = ServerManifest(
        root=Path(root), created=d.get("created", ""), package_versions=dict(d.get("package_versions", {})),
        preprocessing=dict(d.get("preprocessing", {})), tokenizers=dict(d.get("tokenizers", {})),
        dims=dict(d.get("dims", {})), answer_vocab=list(d.get("answer_vocab", [])),
        models={k: ModelSpec.from_dict(v) for k, v in d.get("models", {}).items()},
        files=dict(d.get("files", {})), metrics={}, extra=dict(d.get("extra", {})))
    m.url = url
    return m


# -- inputs on the wire --------------------------------------------------------------------------
def image_bytes(x: Any, index: int, max_pixels: int | None) -> bytes:
    """One image as the encoded bytes the server decodes.

    Encoded bytes and files go as they are (decoded only in the server); PIL images and arrays
    are decoded here, as in process (EXIF, mode, pixel limit), and sent as lossless PNG, so the
    server sees the same pixels.

    Raises:
        InvalidImageError, DTypeError, ShapeError: as :func:`~clipq.runtime.preprocess.decode_image`.
    """
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise InvalidImageError("no such image file", index=index, source=os.fspath(x))
        data = path.read_bytes()
        if not data:
            raise InvalidImageError("image file is empty (0 bytes)", index=index, source=os.fspath(x))
        return data
    img = decode_image(x, index, max_pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _col(value: float | int, rows: int, dtype: Any) -> np.ndarray:
    return np.full((rows, 1), value, dtype=dtype)


# -- the path ------------------------------------------------------------------------------------
class ServerPath:
    """Bytes and strings to a clipq server's ensembles (see the module docstring).

    Args:
        backend: The remote backend (blocking or asyncio).
        info: The server's description (:func:`parse_info`).
        max_pixels: Pixel limit for the PIL images and arrays decoded here before sending.
        window: Calls per step.
        fallback: The tensor path over local artifacts, for ensembles the server does not serve.
    """

    remote = True

    def __init__(self, backend: Any, info: Mapping[str, Any], *, max_pixels: int | None, window: int = 1,
                 fallback: LocalPath | None = None) -> None:
        self.backend = backend
        self.manifest: Manifest = backend.manifest
        self.info = info
        self.max_pixels = max_pixels
        self.window = window
        self.fallback = fallback
        self.url = str(getattr(backend, "url", "the server"))

    def serves(self, model: str) -> bool:
        return model in (self.info.get("models") or {})

    def _local(self, model: str) -> LocalPath:
        if self.fallback is None:
            raise ArtifactError(
                f"the server at {self.url} serves no {model!r} and this client has no artifacts to do its work "
                "locally; render the repository with it (`clipq serve ARTIFACTS`) or pass the artifacts to connect()")
        return self.fallback

    @property
    def preprocessor(self) -> Any:
        """Images are preprocessed in the server; the local one exists only with local artifacts."""
        return self._local("preprocess_image").preprocessor

    def tokenizer(self, kind: str) -> Any:
        """Texts are tokenised in the server; the local tokenizer exists only with local artifacts."""
        return self._local(f"tokenize_{kind}").tokenizer(kind)

    def batch(self, network: str, requested: int) -> int:
        p = PIPELINES.get(network)
        if p is not None and self.serves(p.name):
            limit = int(self.info["models"][p.name].get("max_batch_size") or 0)
        else:
            limit = int(self.manifest.model(network).max_batch_size)
        return max(1, min(int(requested), limit or int(requested)))

    def _image_call(self, model: str, items: Sequence[Any], s: int, e: int, **extra: np.ndarray) -> Call:
        chunk = items[s:e]
        feeds = {"image": [image_bytes(x, s + i, self.max_pixels) for i, x in enumerate(chunk)], **extra}
        return Call(model, feeds, s, [source_name(x) for x in chunk])

    def _dim(self, network: str) -> int:
        return int(self.manifest.model(network).outputs[0].shape[-1])

    # -- steps
    def images(self, network: str, items: Sequence[Any], batch: int, progress: bool = False) -> Steps[np.ndarray]:
        p = PIPELINES[network]
        if not self.serves(p.name):
            return (yield from self._local(p.name).images(network, items, batch, progress))
        outs = yield from chunked(lambda s, e: self._image_call(p.name, items, s, e), len(items), batch, self.window,
                                  progress=progress, desc=p.name)
        return gather_rows(outs, p.output, len(items), self._dim(network))

    def texts(self, network: str, items: Sequence[str], batch: int,
              progress: bool = False) -> Steps[tuple[np.ndarray, list[bool]]]:
        p = PIPELINES[network]
        if not self.serves(p.name):
            return (yield from self._local(p.name).texts(network, items, batch, progress))
        outs = yield from chunked(lambda s, e: Call(p.name, {"text": list(items[s:e])}, s), len(items), batch,
                                  self.window, progress=progress, desc=p.name)
        return gather_rows(outs, p.output, len(items), self._dim(network)), _flags(outs)

    def vqa(self, image_embeds: np.ndarray, questions: Sequence[str],
            batch: int) -> Steps[tuple[np.ndarray, list[bool]]]:
        p = PIPELINES[VQA]
        if not self.serves(p.name):
            return (yield from self._local(p.name).vqa(image_embeds, questions, batch))

        def call(s: int, e: int) -> Call:
            return Call(p.name, {"image_embeds": np.ascontiguousarray(image_embeds[s:e]),
                                 "question": list(questions[s:e])}, s)

        outs = yield from chunked(call, len(questions), batch, self.window)
        return gather_rows(outs, p.output, len(questions), self._dim(VQA)), _flags(outs)

    def describe(self, items: Sequence[Any], alpha: float, n: int, batch: int) -> Steps[list[Any]]:
        """The ``describe`` ensemble: Model A, CLIP, Model B's neighbours and the head, all in the server.

        ``alpha`` and ``n`` are checked by the caller (:class:`~clipq.runtime.img2prompt.ImageToPrompt`).
        """
        from .fusion import PromptDescription

        limit = int(self.info["models"][DESCRIBE].get("max_batch_size") or batch)

        def call(s: int, e: int) -> Call:
            return self._image_call(DESCRIBE, items, s, e, alpha=_col(alpha, e - s, np.float32),
                                    n=_col(n, e - s, np.int32))

        outs = yield from chunked(call, len(items), max(1, min(batch, limit)), self.window)
        out = []
        for o in outs:
            for emb, raw in zip(np.asarray(o["prompt_embeds"], np.float32), np.asarray(o["description"]).reshape(-1)):
                d = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw))
                out.append(PromptDescription(
                    embedding=emb, closest=[(str(t), float(s)) for t, s in d["closest"]],
                    neighbours=[(str(t), float(s)) for t, s in d["neighbours"]], alpha=float(d["alpha"]),
                    k=int(d["k"])))
        return out


def _flags(outs: Sequence[Mapping[str, np.ndarray]]) -> list[bool]:
    return [bool(v) for o in outs for v in np.asarray(o[TRUNCATED]).reshape(-1)]


__all__ = ["DESCRIBE", "INFO_MODEL", "KNN_MODEL", "PIPELINES", "TRUNCATED", "Pipeline", "ServerManifest",
           "ServerPath", "image_bytes", "manifest_from_info", "parse_info"]
