"""The ``clipq`` Triton Python-based backend: one model file for every Python-run clipq model.

Installed once as ``<backend directory>/clipq/model.py`` (``clipq serve`` prepares it; the NGC image
copies it to ``/opt/tritonserver/backends/clipq``); every model whose ``config.pbtxt`` says
``backend: "clipq"`` runs it, and none has a ``model.py`` of its own. The ``clipq_role`` parameter
picks what an instance does:

- ``network``: one exported network, run through the engine registry (``clipq_engine``, default
  ``onnxruntime``: :class:`clipq.runtime.backends.ort.OrtBackend` with ``clipq_threads`` /
  ``clipq_spin`` / ``clipq_providers``; ``cpu-default``: the CPU default its manifest records,
  opened by :func:`clipq.runtime.engines.open_cpu_default` on this host, as in process); a dynamic
  batch runs as one engine call;
- ``fused``: ``preprocess_image`` or ``tokenize`` and then the network, in one instance (one
  Python-stub hop per request instead of an ensemble's two); a dynamic batch of requests is
  decoded or tokenised request by request (a bad one fails alone) and runs as one engine call;
- ``preprocess_image``: encoded image bytes -> ``pixel_values`` (decode, resize, crop, normalise);
- ``tokenize``: UTF-8 text -> ``input_ids`` / ``attention_mask`` (+ per-text ``truncated``);
- ``knn``: Model B over the repository's copy of the KNN database, the ensemble head and the
  nearest known prompts (the last steps of ``describe``, the same code as in process);
- ``info``: the repository's description for thin clients (``info.json``, hash-checked).

What a model loads is described by a small clipq manifest: the model's own ``1/manifest.json`` (a
network's spec and graph hash, the preprocessing settings), or the one named by ``clipq_manifest``
relative to the model directory (``../../tokenizers``: the repository's one copy of each
tokenizer). Loading goes through the same code and hash checks as the in-process runtime. Only
numpy and ``clipq.runtime`` (torch-free) are imported.

Each request gets exactly one response; a request that fails (a corrupt image, an empty text) gets
its own error response and never fails the others. Errors carry the clipq error class as a prefix
(``InvalidImageError: [item 2] ...``) so the remote client raises the same type as in-process.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from clipq.runtime.errors import ClipqError, InvalidInputError
from clipq.runtime.manifest import Manifest


def _error(exc: BaseException) -> Any:
    """An error response naming the clipq error class; input errors are INVALID_ARG (HTTP 400)."""
    code = pb_utils.TritonError.INVALID_ARG if isinstance(exc, InvalidInputError) else pb_utils.TritonError.INTERNAL
    name = type(exc).__name__ if isinstance(exc, ClipqError) else f"InferenceError: {type(exc).__name__}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{name}: {exc}", code))


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _bytes_items(request: Any, name: str) -> list[bytes]:
    """A ``TYPE_STRING`` input of dims [1] arrives as an object array [n, 1] of bytes."""
    arr = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    return [x if isinstance(x, bytes) else bytes(x) for x in arr.reshape(-1)]


def _per_request(requests: list[Any], run: Any) -> list[Any]:
    """One response per request from ``run(request) -> output tensors``; a failure answers that request only."""
    responses = []
    for r in requests:
        try:
            responses.append(pb_utils.InferenceResponse(output_tensors=run(r)))
        except Exception as e:  # noqa: BLE001 - answered on this request only
            responses.append(_error(e))
    return responses


def _log(message: str) -> None:
    """A line in the server's log (the stub's Logger where it has one)."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:  # pragma: no cover - stubs before 23.x
        print(message, file=sys.stderr, flush=True)


class _ServerLog(logging.Handler):
    """clipq's warnings (e.g. a CPU default measured on other CPU flags) into the server's log."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = getattr(pb_utils, "Logger", None)
        msg = self.format(record)
        if logger is not None:
            (logger.log_warn if record.levelno >= logging.WARNING else logger.log_info)(msg)
        else:  # pragma: no cover
            print(msg, file=sys.stderr, flush=True)


def _cpu_instances(config: dict[str, Any] | None) -> int:
    """Instances of this model on the CPU (its ``instance_group`` counts; 1 without one)."""
    groups = (config or {}).get("instance_group") or []
    n = sum(int(g.get("count", 1)) for g in groups if str(g.get("kind", "KIND_CPU")) in ("KIND_CPU", "1"))
    return max(1, n)


def engine_threads(params: dict[str, str], instances: int, cores: int) -> int | None:
    """Engine threads per instance: ``clipq_threads`` when set, else the server's cores split between its instances.

    One instance keeps the engine's default (every core; the decode pool shares them as the work
    comes). With several, each instance's engine gets ``cores // instances`` threads (at least 1),
    not every core each: measured on 12 MP photos through the fused ``embed_image`` on a 2-core
    EPYC under load, two instances of one thread each ran 1.02-1.21x two instances of two threads
    (docs/serving.md, "Phone photos through Triton").
    """
    explicit = int(params.get("clipq_threads") or 0)
    if explicit > 0:
        return explicit
    return max(1, cores // instances) if instances > 1 else None


def _open_engine(m: Manifest, params: dict[str, str], models: list[str],
                 config: dict[str, Any] | None = None) -> Any:
    """The engine ``clipq_engine`` names over ``m``, its sessions for ``models`` created (and verified) now."""
    from clipq.runtime.engines import CPU_DEFAULT, open_backend, open_cpu_default
    from clipq.runtime.feed import usable_cores

    kw: dict[str, Any] = {"models": models}
    instances, cores = _cpu_instances(config), usable_cores()
    threads = engine_threads(params, instances, cores)
    if threads is not None:
        kw["threads"] = threads
    if instances > 1 and not int(params.get("clipq_threads") or 0):
        _log(f"{models[0]}: {instances} instances on {cores} cores: {threads} engine thread(s) each")
    if params.get("clipq_spin"):
        kw["spin"] = _flag(params["clipq_spin"])
    name = params.get("clipq_engine") or "onnxruntime"
    if name == CPU_DEFAULT:
        # the recorded choice where this host's CPU flags match it, onnxruntime's default (with a
        # notice in the log) where not: the same decision as connect(artifacts) in process
        return open_cpu_default(m, cpu_only=True, **kw)
    if params.get("clipq_providers"):
        kw["providers"] = [p for p in params["clipq_providers"].split(",") if p]
    return open_backend(name, m, **kw)


def _engine_label(backend: Any, model: str) -> str:
    """``engine/variant`` a backend runs ``model`` on (for the log)."""
    inner = backend.backend_for(model) if hasattr(backend, "backend_for") else backend
    info = getattr(inner, "engine_info", None)
    if info is not None:
        d = info(model)
        return f"{d.get('engine')}/{d.get('variant')} ({d.get('precision')})"
    variant = inner.variant_for(model) if hasattr(inner, "variant_for") else "?"
    return f"{type(inner).__name__}/{variant}"


def _split(outs: dict[str, np.ndarray], names: list[str], sizes: list[int]) -> list[list[Any]]:
    """Per request, its rows of every output as tensors (row slices: views, no copy)."""
    tensors, start = [], 0
    for n in sizes:
        # a row slice of a C-contiguous array is contiguous: this is a view, not a copy; the
        # one copy left is the stub's into shared memory. (Tensor.from_dlpack on numpy
        # arrays crashes the 2.51 stub: "PyCapsule_GetPointer called with incorrect name".)
        tensors.append([pb_utils.Tensor(k, outs[k][start:start + n]) for k in names])
        start += n
    return tensors


class _NetworkRole:
    """One exported network on an engine of the registry; a dynamic batch runs as one engine call."""

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any], model_dir: Path):
        self.name = config["name"]
        self.backend = _open_engine(m, params, [self.name], config)
        _log(f"{self.name}: runs {_engine_label(self.backend, self.name)}")
        spec = m.model(self.name)
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]

    def __call__(self, requests: list[Any]) -> list[Any]:
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names}
                 for r in requests]
        sizes = [len(f[self.input_names[0]]) for f in feeds]
        if len(feeds) == 1:
            batch = feeds[0]  # no concatenation: the engine reads the shared-memory views directly
        else:
            # the dynamic batcher only groups requests whose non-batch dims agree, so this is safe
            batch = {n: np.concatenate([f[n] for f in feeds]) for n in self.input_names}
        try:
            outs = self.backend.infer(self.name, batch)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the reason
            return [_error(e) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=t) for t in _split(outs, self.output_names, sizes)]

    def close(self) -> None:
        self.backend.close()


class _FusedRole:
    """A helper and a network in one instance: ``embed_image`` / ``embed_text`` in one Python-stub hop.

    ``clipq_helper`` ``preprocess_image``: ``image`` bytes -> ``pixel_values`` -> the network;
    ``tokenize``: ``text`` -> ids and mask (padded to the longest text of the whole batch: no
    batcher downstream needs length buckets) -> the network, plus per-text ``truncated``. Each
    request is decoded or tokenised alone (its error answers it alone); the rest run as one
    engine call, and each response gets row views of the outputs.
    """

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any], model_dir: Path):
        self.name = config["name"]
        self.network = params["clipq_network"]
        self.helper = params["clipq_helper"]
        self.input_name = config["input"][0]["name"]
        spec = m.model(self.network)
        self.output_names = [t.name for t in spec.outputs]
        if self.helper == "preprocess_image":
            from clipq.runtime.preprocess import ImagePreprocessor

            overrides: dict[str, Any] = {}
            if "clipq_max_pixels" in params:
                overrides["max_pixels"] = int(params["clipq_max_pixels"]) or None
            self.pre = ImagePreprocessor.from_manifest(m, **overrides)
            self.prepare = self._pixels
        elif self.helper == "tokenize":
            from clipq.runtime.text import TextTokenizer

            shared = Manifest.load((model_dir / params["clipq_tokenizers"]).resolve())
            self.tok = TextTokenizer.from_manifest(shared, params["clipq_tokenizer"])
            self.prepare = self._ids
        else:
            raise InvalidInputError(f"{self.name}: clipq_helper is {self.helper!r}; expected preprocess_image or tokenize")
        self.backend = _open_engine(m, params, [self.network], config)
        _log(f"{self.name}: {self.helper} + {self.network} in one model, {self.network} runs "
             f"{_engine_label(self.backend, self.network)}")

    def _pixels(self, request: Any) -> tuple[dict[str, np.ndarray], list[Any]]:
        return self._pixels_of(_bytes_items(request, self.input_name))

    def _pixels_of(self, items: list[Any]) -> tuple[dict[str, np.ndarray], list[Any]]:
        return {"pixel_values": self.pre(items)}, []

    def _prepare_all(self, requests: list[Any]) -> list[Any]:
        """Each request's (feeds, extra), or the exception that answers it alone.

        The images of a dynamic batch's requests decode at once in the runtime's decode pool (as in
        process: Pillow releases the GIL); the request tensors are read on this thread.
        """
        def attempt(fn: Any, arg: Any) -> Any:
            try:
                return fn(arg)
            except Exception as e:  # noqa: BLE001 - answered on this request only
                return e

        if self.helper != "preprocess_image" or len(requests) < 2:
            return [attempt(self.prepare, r) for r in requests]
        from clipq.runtime.feed import decode_pool

        items = [attempt(lambda r: _bytes_items(r, self.input_name), r) for r in requests]
        return list(decode_pool().map(
            lambda x: x if isinstance(x, Exception) else attempt(self._pixels_of, x),
            items))

    def _ids(self, request: Any) -> tuple[dict[str, np.ndarray], list[Any]]:
        enc = self.tok(_bytes_items(request, self.input_name))
        truncated = np.asarray(enc.truncated, dtype=bool).reshape(-1, 1)
        return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}, [
            pb_utils.Tensor("truncated", truncated)]

    def _join(self, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if len(feeds) == 1:
            return feeds[0]
        if self.helper == "tokenize":
            width = max(f["input_ids"].shape[1] for f in feeds)
            pad = {"input_ids": self.tok.pad_id, "attention_mask": 0}
            return {k: np.concatenate([np.pad(f[k], ((0, 0), (0, width - f[k].shape[1])), constant_values=v)
                                       for f in feeds]) for k, v in pad.items()}
        return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}

    def __call__(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        ready: list[tuple[int, dict[str, np.ndarray], list[Any]]] = []
        for i, got in enumerate(self._prepare_all(requests)):
            if isinstance(got, Exception):
                responses[i] = _error(got)
            else:
                ready.append((i, *got))
        if ready:
            sizes = [len(next(iter(f.values()))) for _, f, _ in ready]
            try:
                outs = self.backend.infer(self.network, self._join([f for _, f, _ in ready]))
            except Exception as e:  # noqa: BLE001 - every request of the batch gets the reason
                for i, _, _ in ready:
                    responses[i] = _error(e)
                return responses
            for (i, _, extra), tensors in zip(ready, _split(outs, self.output_names, sizes)):
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors + extra)
        return responses

    def close(self) -> None:
        self.backend.close()


class _PreprocessRole:
    """Encoded image bytes -> float32 ``pixel_values`` [n, 3, S, S], one error per bad request."""

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any], model_dir: Path):
        from clipq.runtime.preprocess import ImagePreprocessor

        overrides: dict[str, Any] = {}
        if "clipq_max_pixels" in params:
            overrides["max_pixels"] = int(params["clipq_max_pixels"]) or None
        self.pre = ImagePreprocessor.from_manifest(m, **overrides)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def __call__(self, requests: list[Any]) -> list[Any]:
        return _per_request(requests, lambda r: [
            pb_utils.Tensor(self.output_name, self.pre(_bytes_items(r, self.input_name)))])

    def close(self) -> None:
        pass


class _TokenizeRole:
    """UTF-8 text -> int64 ``input_ids`` / ``attention_mask`` [n, L].

    L is the longest text of the request rounded up to a multiple of ``clipq_pad_multiple``
    (at most the tokenizer's ``max_length``; 0 pads every request to ``max_length``). The dynamic
    batcher of the text model downstream only groups requests of one shape: buckets let the usual
    short texts share a shape, and spare the model the compute of padding every caption to the full
    context. Masked positions do not change the embeddings.
    """

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any], model_dir: Path):
        from clipq.runtime.text import TextTokenizer

        self.tok = TextTokenizer.from_manifest(m, params["clipq_tokenizer"])
        self.multiple = int(params.get("clipq_pad_multiple", "16"))
        self.input_name = config["input"][0]["name"]

    def _length(self, longest: int) -> int:
        if self.multiple <= 0:
            return self.tok.max_length
        return min(self.tok.max_length, -(-longest // self.multiple) * self.multiple)

    def _run(self, request: Any) -> list[Any]:
        enc = self.tok(_bytes_items(request, self.input_name))
        ids, mask = enc.input_ids, enc.attention_mask
        pad = self._length(ids.shape[1]) - ids.shape[1]
        if pad > 0:
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=self.tok.pad_id)
            mask = np.pad(mask, ((0, 0), (0, pad)), constant_values=0)
        truncated = np.asarray(enc.truncated, dtype=bool).reshape(-1, 1)
        return [pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask),
                pb_utils.Tensor("truncated", truncated)]

    def __call__(self, requests: list[Any]) -> list[Any]:
        return _per_request(requests, self._run)

    def close(self) -> None:
        pass


class _KnnRole:
    """Model B, the ensemble head and the nearest prompts: ``describe`` after the networks, per request.

    In: ``image_embeds`` [n, D], Model A's ``a_embeds`` [n, P], ``alpha`` [n, 1], ``n`` [n, 1]
    (prompts per image). Out: the fused ``prompt_embeds`` [n, P], Model B's ``b_embeds`` [n, P] and
    per image a JSON ``description`` (closest prompts, neighbours' prompts, alpha, K).
    """

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any], model_dir: Path):
        from clipq.runtime.fusion import Img2PromptSettings, KnnPromptFusion
        from clipq.runtime.specs import ENSEMBLE_HEAD
        from clipq.runtime.tasks import EnsembleHead

        # the settings' one home: the manifest's record, copied into this model's manifest at rendering
        self.fusion = KnnPromptFusion.load(m.resolve_dir("knn"), settings=Img2PromptSettings.from_manifest(m))
        self.engine = _open_engine(m, params, [ENSEMBLE_HEAD]) if ENSEMBLE_HEAD in m.models else None
        self.head = EnsembleHead(self.engine) if self.engine is not None else None

    def _run(self, request: Any) -> list[Any]:
        from clipq.runtime.fusion import describe_embeds, ensemble
        from clipq.runtime.vectors import l2_normalize

        def get(name: str, dtype: Any) -> np.ndarray:
            return np.asarray(pb_utils.get_input_tensor_by_name(request, name).as_numpy(), dtype)

        # normalised as the task classes normalise them in process: Model B's inverse-distance
        # weights amplify a last-bit difference in a near-duplicate's distance
        image_embeds, a = l2_normalize(get("image_embeds", np.float32)), l2_normalize(get("a_embeds", np.float32))
        alpha, n = get("alpha", np.float32).reshape(-1), get("n", np.int64).reshape(-1)
        b = self.fusion.predict(image_embeds)
        fused = ensemble(a, b, alpha) if self.head is None else self.head.fuse(a, b, alpha)
        descs = describe_embeds(self.fusion, image_embeds, fused, alpha, [int(v) for v in n])
        text = [json.dumps({"closest": d.closest, "neighbours": d.neighbours, "alpha": d.alpha, "k": d.k}).encode()
                for d in descs]
        return [pb_utils.Tensor("prompt_embeds", np.ascontiguousarray(fused, np.float32)),
                pb_utils.Tensor("b_embeds", np.ascontiguousarray(b, np.float32)),
                pb_utils.Tensor("description", np.asarray(text, dtype=object).reshape(-1, 1))]

    def __call__(self, requests: list[Any]) -> list[Any]:
        return _per_request(requests, self._run)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


class _InfoRole:
    """The repository's description (``info.json``, rendered from the manifest) for every row asked."""

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any], model_dir: Path):
        self.info = m.resolve("info.json").read_bytes()
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def __call__(self, requests: list[Any]) -> list[Any]:
        return _per_request(requests, lambda r: [pb_utils.Tensor(
            self.output_name, np.asarray([self.info] * len(_bytes_items(r, self.input_name)), object).reshape(-1, 1))])

    def close(self) -> None:
        pass


_ROLES = {"network": _NetworkRole, "fused": _FusedRole, "preprocess_image": _PreprocessRole,
          "tokenize": _TokenizeRole, "knn": _KnnRole, "info": _InfoRole}


class TritonPythonModel:
    """Entry point the Python backend instantiates once per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        role = params.get("clipq_role")
        if role not in _ROLES:
            raise pb_utils.TritonModelException(
                f"{config.get('name')}: parameter clipq_role is {role!r}; expected one of {sorted(_ROLES)}")
        # args["model_repository"] is this model's directory: its files sit in the version directory,
        # shared ones (the tokenizers) where clipq_manifest says
        model_dir = Path(args["model_repository"])
        where = model_dir / (params.get("clipq_manifest") or args["model_version"])
        clipq_log = logging.getLogger("clipq")
        if not any(isinstance(h, _ServerLog) for h in clipq_log.handlers):
            clipq_log.addHandler(_ServerLog())
        try:
            manifest = Manifest.load(where.resolve())
            self.role = _ROLES[role](manifest, params, config, model_dir)
        except ClipqError as e:  # a clear one-line reason in the server's load-failure table
            raise pb_utils.TritonModelException(f"{config.get('name')}: {type(e).__name__}: {e}") from e

    def execute(self, requests: list[Any]) -> list[Any]:
        return self.role(requests)

    def finalize(self) -> None:
        role, self.role = getattr(self, "role", None), None
        if role is not None:
            role.close()
