"""Python-backend model for every clipq model that Triton runs in Python.

The renderer copies this one file, unchanged, to ``<model>/1/model.py`` of each Python-backend
model; the ``clipq_role`` parameter in ``config.pbtxt`` picks what the instance does:

- ``onnx``: runs one exported network with onnxruntime (the ``cpu-python`` flavour, for the
  tritonserver build that has only the Python backend);
- ``preprocess_image``: encoded image bytes -> ``pixel_values`` (decode, resize, crop, normalise);
- ``tokenize``: UTF-8 text -> ``input_ids`` / ``attention_mask``.

Everything a model needs sits next to this file: ``1/manifest.json`` is a small clipq manifest
(the model's spec, preprocessing settings or tokenizer entry, and the sha256 of every file it
lists), so loading goes through the same code and the same hash checks as the in-process runtime.
Only numpy, onnxruntime and ``clipq.runtime`` (torch-free) are imported.

Dynamic batching hands ``execute`` several requests at once. Each request gets exactly one
response; a request that fails (a corrupt image, an empty text) gets its own error response and
never fails the others. Errors carry the clipq error class as a prefix (``InvalidImageError:
[item 2] ...``) so the remote client can raise the same type as the in-process runtime.
"""

from __future__ import annotations

import json
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


def _flag(params: dict[str, str], key: str, default: bool) -> bool:
    v = params.get(key)
    return default if v is None else v.strip().lower() in ("1", "true", "yes", "on")


def _bytes_items(request: Any, name: str) -> list[bytes]:
    """A ``TYPE_STRING`` input of dims [1] arrives as an object array [n, 1] of bytes."""
    arr = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    return [x if isinstance(x, bytes) else bytes(x) for x in arr.reshape(-1)]


class _OnnxRole:
    """One exported network on onnxruntime; a dynamic batch runs as one session call."""

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any]):
        import onnxruntime as ort

        spec = m.model(config["name"])
        path = m.resolve(spec.file)  # sha256 checked against the rendered manifest
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("clipq_intra_op_threads", "0"))
        so.inter_op_num_threads = int(params.get("clipq_inter_op_threads", "1"))
        so.log_severity_level = 3  # errors only: provider warnings would repeat in every server log
        # spinning workers share the cores with Triton's threads and the other stubs; a spinning
        # worker that is descheduled stalls the whole parallel section (see RenderOptions)
        so.add_session_config_entry("session.intra_op.allow_spinning",
                                    "1" if _flag(params, "clipq_allow_spinning", False) else "0")
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]

    def __call__(self, requests: list[Any]) -> list[Any]:
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names}
                 for r in requests]
        sizes = [len(f[self.input_names[0]]) for f in feeds]
        if len(feeds) == 1:
            batch = feeds[0]  # no concatenation: ORT reads the shared-memory views directly
        else:
            # the dynamic batcher only groups requests whose non-batch dims agree, so this is safe
            batch = {n: np.concatenate([f[n] for f in feeds]) for n in self.input_names}
        try:
            outs = self.session.run(self.output_names, batch)
        except Exception as e:  # noqa: BLE001 - every request of the batch gets the reason
            return [_error(e) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            # a row slice of a C-contiguous array is contiguous: this is a view, not a copy; the
            # one copy left is the stub's into shared memory. (Tensor.from_dlpack on numpy
            # arrays crashes the 2.51 stub: "PyCapsule_GetPointer called with incorrect name".)
            tensors = [pb_utils.Tensor(name, o[start:start + n]) for name, o in zip(self.output_names, outs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses


class _PreprocessRole:
    """Encoded image bytes -> float32 ``pixel_values`` [n, 3, S, S], one error per bad request."""

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any]):
        from clipq.runtime.preprocess import ImagePreprocessor

        overrides: dict[str, Any] = {}
        if "clipq_max_pixels" in params:
            overrides["max_pixels"] = int(params["clipq_max_pixels"]) or None
        self.pre = ImagePreprocessor.from_manifest(m, **overrides)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def __call__(self, requests: list[Any]) -> list[Any]:
        responses = []
        for r in requests:
            try:
                pixels = self.pre(_bytes_items(r, self.input_name))
            except Exception as e:  # noqa: BLE001 - answered on this request only
                responses.append(_error(e))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.output_name, pixels)]))
        return responses


class _TokenizeRole:
    """UTF-8 text -> int64 ``input_ids`` / ``attention_mask`` [n, L].

    L is the longest text of the request rounded up to a multiple of ``clipq_pad_multiple``
    (at most the tokenizer's ``max_length``; 0 pads every request to ``max_length``). The dynamic
    batcher of the text model downstream only groups requests of one shape: buckets let the usual
    short texts share a shape, and spare the model the compute of padding every caption to the full
    context. Masked positions do not change the embeddings.
    """

    def __init__(self, m: Manifest, params: dict[str, str], config: dict[str, Any]):
        from clipq.runtime.text import TextTokenizer

        self.tok = TextTokenizer.from_manifest(m, params["clipq_tokenizer"])
        self.multiple = int(params.get("clipq_pad_multiple", "16"))
        self.input_name = config["input"][0]["name"]

    def _length(self, longest: int) -> int:
        if self.multiple <= 0:
            return self.tok.max_length
        return min(self.tok.max_length, -(-longest // self.multiple) * self.multiple)

    def __call__(self, requests: list[Any]) -> list[Any]:
        responses = []
        for r in requests:
            try:
                enc = self.tok(_bytes_items(r, self.input_name))
            except Exception as e:  # noqa: BLE001 - answered on this request only
                responses.append(_error(e))
                continue
            ids, mask = enc.input_ids, enc.attention_mask
            pad = self._length(ids.shape[1]) - ids.shape[1]
            if pad > 0:
                ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=self.tok.pad_id)
                mask = np.pad(mask, ((0, 0), (0, pad)), constant_values=0)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("input_ids", ids), pb_utils.Tensor("attention_mask", mask)]))
        return responses


_ROLES = {"onnx": _OnnxRole, "preprocess_image": _PreprocessRole, "tokenize": _TokenizeRole}


class TritonPythonModel:
    """Entry point the Python backend instantiates once per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        role = params.get("clipq_role")
        if role not in _ROLES:
            raise pb_utils.TritonModelException(
                f"{config.get('name')}: parameter clipq_role is {role!r}; expected one of {sorted(_ROLES)}")
        # args["model_repository"] is this model's directory; its version directory holds the files
        version_dir = Path(args["model_repository"]) / args["model_version"]
        try:
            manifest = Manifest.load(version_dir)
            self.role = _ROLES[role](manifest, params, config)
        except ClipqError as e:  # a clear one-line reason in the server's load-failure table
            raise pb_utils.TritonModelException(f"{config.get('name')}: {type(e).__name__}: {e}") from e

    def execute(self, requests: list[Any]) -> list[Any]:
        return self.role(requests)

    def finalize(self) -> None:
        self.role = None
