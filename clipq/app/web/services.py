"""The runtime's task classes behind a bounded thread pool, with a deadline per call.

Every encoder, index, VQA and describe call blocks (onnxruntime, hnswlib, tritonclient), so none
runs on the event loop: :meth:`Services.call` hands it to a thread pool and waits at most
``timeout_s`` (504 after that; a call still queued is dropped, one already running finishes in its
thread). At most ``max_pending`` calls are admitted at once; beyond that a 503 with ``Retry-After``
answers at once, the overload signal infinity's batch handler gives. onnxruntime sessions and
hnswlib searches are thread-safe, and the index holds a readers-writer lock, so the pool's threads
share one encoder and one index.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipq.runtime.errors import ArtifactError, ClipqError, InvalidInputError
from clipq.runtime.tasks import ClipEncoder

from .errors import ApiError, from_clipq, internal
from .settings import IMAGE_MODEL, TEXT_MODEL, AppSettings

log = logging.getLogger("clipq.app")

#: metadata values listed per key for the page's filter menus (more: a free-text field)
_FIELD_VALUES = 40
#: items scanned for the filter menus (a large index: the first ones)
_FIELD_SCAN = 20_000


@dataclass(frozen=True)
class ModelInfo:
    """One name ``/v1/embeddings`` accepts: its modality and the encoder method it runs."""

    name: str
    modality: str
    method: str  # ClipEncoder method


#: the models of ``GET /v1/models``, by name (a table: a new tower is one row)
MODELS: dict[str, ModelInfo] = {
    TEXT_MODEL: ModelInfo(TEXT_MODEL, "text", "encode_texts"),
    IMAGE_MODEL: ModelInfo(IMAGE_MODEL, "image", "encode_images"),
}


class Services:
    """What the routes call: the encoder, the index and search, VQA and describe, loaded lazily.

    Args:
        backend: Any runtime backend (``clipq.runtime.connect(...)``); closed by :meth:`close`.
        settings: Limits and the pool's size.
        index: An :class:`~clipq.runtime.index.ImageIndex` built with this encoder's model, or None.
        encoder: The :class:`ClipEncoder` to use (default: one over ``backend``).
        source: Where the backend came from, for ``/healthz`` (artifact directory or server URL).
    """

    def __init__(self, backend: Any, settings: AppSettings, *, index: Any = None, encoder: Any = None,
                 source: str = "") -> None:
        from clipq.runtime.search import ImageSearch

        self.backend, self.settings, self.source = backend, settings, source
        self.encoder = encoder or ClipEncoder(backend, max_pixels=settings.max_image_pixels)
        self.index = index
        self.searcher = ImageSearch(index, self.encoder) if index is not None else None
        self.fields = _fields(index) if index is not None else {}
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="clipq-app")
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._lazy: dict[str, Any] = {}
        self._lazy_lock = threading.Lock()
        self.timeouts = 0
        self.on_timeout: Callable[[], None] | None = None

    # -- the pool ----------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def _done(self, _fut: Any) -> None:
        with self._pending_lock:
            self._pending -= 1

    async def call(self, fn: Callable[..., Any], *args: Any, param: str | None = None,
                   timeout_s: float | None = None, **kw: Any) -> Any:
        """Run a blocking ``fn(*args, **kw)`` in the pool, within the deadline.

        Raises:
            ApiError: 503 when ``max_pending`` calls are already admitted; 504 past the deadline;
                the status of a clipq error ``fn`` raised (``param`` names the request field).
        """
        with self._pending_lock:
            if self._pending >= self.settings.max_pending:
                raise ApiError(503, f"server overloaded: {self._pending} requests are already waiting for the "
                               "backend; retry shortly", code="overloaded", headers={"Retry-After": "1"})
            self._pending += 1
        try:
            # in a copy of this request's context: its id (set by RequestIds) follows the call into Triton
            cfut = self.pool.submit(contextvars.copy_context().run, functools.partial(fn, *args, **kw))
        except RuntimeError:  # the pool is shut down: the app is stopping
            self._done(None)
            raise ApiError(503, "server is shutting down", code="shutting_down") from None
        cfut.add_done_callback(self._done)
        deadline = self.settings.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(asyncio.wrap_future(cfut), deadline)
        except asyncio.TimeoutError:
            cfut.cancel()  # dropped if still queued; a running call finishes in its thread
            self.timeouts += 1
            if self.on_timeout is not None:
                self.on_timeout()
            raise ApiError(504, f"the backend did not answer within {deadline:g} s", code="backend_timeout") from None
        except ApiError:
            raise
        except ClipqError as e:
            raise from_clipq(e, param=param) from None
        except Exception as e:  # noqa: BLE001 - logged with its traceback, answered without it
            raise internal(e) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001 - closing must not mask the shutdown
            log.warning("closing the backend failed", exc_info=True)

    def warmup(self) -> None:
        """One text and one image through the encoder: sessions open before the first request."""
        self.encoder.encode_texts(["warm-up"])
        self.encoder.encode_images([np.full((32, 32, 3), 127, np.uint8)])

    # -- lazily loaded parts -------------------------------------------------------------------------
    def _get(self, name: str, build: Callable[[], Any], what: str) -> Any:
        with self._lazy_lock:
            if name not in self._lazy:
                try:
                    self._lazy[name] = build()
                except (ArtifactError, KeyError) as e:
                    raise ApiError(501, f"this server cannot {what}: {e}", code="not_available") from None
            return self._lazy[name]

    def vqa(self) -> Any:
        from clipq.runtime.tasks import VqaModel

        return self._get("vqa", lambda: VqaModel(self.backend, encoder=self.encoder), "answer questions (no VQA model)")

    def image_to_prompt(self) -> Any:
        """The image -> prompt task (:class:`~clipq.runtime.img2prompt.ImageToPrompt`): Models A, B, the head.

        Raises:
            ApiError: 501 where neither the artifacts (``knn/``) nor the server have a Model B.
        """
        m = self.backend.manifest
        has_local = any(k.startswith("knn/") for k in (m.files or {}))
        if not (has_local or getattr(self.encoder, "remote", False)):  # a thin client: the server's Model B
            raise ApiError(501, "this server cannot describe images: the artifacts have no Model B (knn/); "
                           "run `clipq train img2prompt`", code="not_available")

        def build() -> Any:
            from clipq.runtime.img2prompt import ImageToPrompt

            return ImageToPrompt(self.backend, max_pixels=self.settings.max_image_pixels, clip=self.encoder)

        return self._get("describe", build, "describe images")

    # -- the work (run in the pool) ------------------------------------------------------------------
    def embed(self, model: ModelInfo, items: list[Any], *, truncate: bool, single: bool) -> tuple[np.ndarray, int]:
        """Embeddings [N, D] and the prompt token count (0 for images, or without a local tokenizer)."""
        tokens = 0
        tok = self._tokenizer() if model.modality == "text" else None
        if tok is not None:  # a local tokenizer: count tokens, refuse overlong texts before inference
            enc = tok(items)
            tokens = int(enc.attention_mask.sum())
            _check_context(enc.truncated, truncate, single, tok.max_length)
        try:
            if model.modality == "text" and tok is None:  # the server tokenises: its flags, after the fact
                vecs, flags = self.encoder.encode_texts(items, batch_size=len(items), return_truncated=True)
                _check_context(flags, truncate, single, None)
            else:
                vecs = getattr(self.encoder, model.method)(items, batch_size=len(items))
        except InvalidInputError as e:
            err = from_clipq(e, param="input")  # input[i]: the item the runtime named
            if single:
                err.param = "input"
            raise err from None
        return np.asarray(vecs, np.float32), tokens

    def _tokenizer(self) -> Any:
        try:
            return self.encoder.tokenizer
        except (ArtifactError, AttributeError, OSError):  # a remote client may tokenize on the server
            return None

    def search_text(self, text: str, k: int, *, templates: str, filt: Any, exact: bool | None) -> list[Any]:
        return self._need_index().search(text, k, templates=templates, filter=filt, exact=exact)

    def search_image(self, image: bytes, k: int, *, filt: Any, exact: bool | None) -> list[Any]:
        return self._need_index().search_image(image, k, filter=filt, exact=exact)

    def search_id(self, item_id: str, k: int, *, filt: Any, exact: bool | None) -> list[Any]:
        self._need_index()
        vec = self.index.get_vectors([item_id])[0]
        hits = self.index.search(vec, k + 1, filter=filt, exact=exact)
        return [h for h in hits if h.id != item_id][:k]

    def ask(self, question: str, *, image: bytes | None, item_id: str | None, top_k: int) -> dict[str, Any]:
        vqa = self.vqa()
        if item_id is None:  # the task class's own path (a server's `ask` ensemble, when remote)
            a = vqa.ask([image], [question], top_k=top_k)[0]
            ranked = [{"answer": t, "prob": float(p)} for t, p in a.top]
            truncated = bool(a.truncated)
        else:  # an indexed image: its stored embedding, no decoding
            probs, flags = vqa.probs(self.index.get_vectors([item_id]), [question])
            row = np.asarray(probs, np.float32)[0]
            ranked = [{"answer": vqa.vocab[j], "prob": float(row[j])} for j in np.argsort(-row)[:top_k]]
            truncated = bool(flags[0])
        return {"question": question, "answer": ranked[0]["answer"], "prob": ranked[0]["prob"], "top": ranked,
                "truncated": truncated}

    def describe(self, image: bytes | str, *, n: int, alpha: float | None, embedding: bool) -> dict[str, Any]:
        d = self.image_to_prompt().describe([image], alpha=alpha, n=n)[0]
        out = d.to_dict()
        if not embedding:
            out.pop("embedding", None)
        return out

    def stored_path(self, item_id: str) -> str:
        """The stored image path of an indexed id (the only paths the app ever opens)."""
        path = self._need_index().index.metadata(item_id).get("path")
        if not path or not os.path.isfile(path):
            raise ApiError(404, f"indexed item {item_id!r} has no stored image file", param="id", code="no_image")
        return str(path)

    def thumbnail(self, item_id: str, size: int) -> bytes:
        path = self.stored_path(item_id)
        return _thumbnail(path, os.stat(path).st_mtime_ns, size, self.settings.max_image_pixels)

    def _need_index(self) -> Any:
        if self.searcher is None:
            raise ApiError(404, "no image index is loaded: start `clipq app` with --index DIR", code="no_index")
        return self.searcher

    def health(self) -> None:
        self.backend.health()


def _check_context(truncated: list[bool], allowed: bool, single: bool, max_length: int | None) -> None:
    """400 for the first text cut at the model's context, unless the request allows it."""
    bad = [i for i, t in enumerate(truncated) if t]
    if bad and not allowed:
        param = "input" if single else f"input[{bad[0]}]"
        ctx = f"the model's context of {max_length} tokens" if max_length else "the model's context"
        raise ApiError(400, f"'{param}' is longer than {ctx}; shorten it or set \"truncate\": true", param=param,
                       code="context_length_exceeded")


@functools.lru_cache(maxsize=2048)
def _thumbnail(path: str, _mtime_ns: int, size: int, max_pixels: int) -> bytes:
    """A JPEG of the image at ``path`` fitted in ``size`` x ``size`` (cached by path, mtime and size)."""
    from PIL import Image

    from clipq.runtime.preprocess import REDUCING_GAP, decode_image

    # a JPEG is decoded at the smallest DCT scale that still covers the thumbnail (a 12 MP photo at
    # 1/8), and a large reduction box-reduces first, as the model's preprocessing does
    img = decode_image(path, max_pixels=max_pixels, draft_short=size)
    # small synthetic scenes stay crisp when enlarged: nearest-neighbour up, Lanczos down
    scale = size / max(img.size)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample,
                     reducing_gap=REDUCING_GAP if scale < 1 else None)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _fields(index: Any) -> dict[str, list[Any]]:
    """Metadata keys of the index with their distinct values (few) or [] (many), for the filter menus."""
    values: dict[str, set[Any]] = {}
    many: set[str] = set()
    ids = index.ids()[:_FIELD_SCAN]
    fetch = getattr(index, "metadata_many", None)  # a Milvus store: thousands of ids a call, not one
    metas = fetch(ids) if fetch is not None else {i: index.metadata(i) for i in ids}
    for item_id in ids:
        for key, v in metas[item_id].items():
            if key == "path" or key in many:
                continue
            if not isinstance(v, (str, int, float, bool)):
                many.add(key)
                continue
            s = values.setdefault(key, set())
            s.add(v)
            if len(s) > _FIELD_VALUES:
                many.add(key)
    return {k: ([] if k in many else sorted(v, key=str)) for k, v in sorted(values.items())}
