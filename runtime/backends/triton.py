"""Remote backend: the same tensors as :class:`OrtBackend`, run by a Triton server.

``TritonBackend`` (blocking) and ``AsyncTritonBackend`` (asyncio) speak Triton's HTTP or gRPC
protocol through ``tritonclient``; what differs between the two (clients, tensors on the wire,
per-call deadlines) is one adapter class per protocol in :mod:`.triton_protocol`, picked by the URL's
scheme, so neither backend asks which protocol it speaks. Both behave like the in-process backend
so that every task class and CLI command works unchanged with ``--server URL``:

- inputs are checked against the manifest's spec before anything is sent (same
  ``InvalidInputError`` / ``DTypeError`` / ``ShapeError`` as in-process);
- a batch larger than the model's ``max_batch_size`` (read from the server's configuration) is
  split into chunks and the outputs are joined again;
- an error the model raised for an input (a corrupt image in ``embed_image``) comes back as the
  same clipq error type with its index in the caller's batch; other server errors raise
  ``InferenceError`` with the server's reason; an unreachable server ``BackendUnavailable``
  naming the URL;
- connections are reused (one gRPC channel; one keep-alive HTTP connection per thread, since
  tritonclient's HTTP client is not thread-safe), every call has a timeout;
- a server started with ``clipq serve --api-key`` gets the key on every call (``api_key=`` or
  ``$CLIPQ_API_KEY``); a call it refuses for a missing or wrong key raises ``AuthenticationError``
  saying which, never retried; the current request's id (``triton_protocol.REQUEST_ID``, set by the
  app) goes as Triton's own request id and an ``x-request-id`` header;
- retries happen only where repeating is safe: the failure says the request did not run
  (connection refused, server unavailable or its queue full) and the model is stateless (no
  sequence batching, not decoupled). A timeout is never retried: the request may have run, and
  repeating it under overload makes the overload worse.

Models that are not networks in the manifest (the ensembles, the helpers) are described by the
server's own configuration. Without a local manifest the client is thin: it asks the server's
``clipq_info`` model for everything else it must know, and the task classes send bytes and strings
to the ensembles (:mod:`clipq.runtime.server_path`).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import server_path as remote
from ..errors import ArtifactError, BackendUnavailable, ClipqError, InferenceError
from ..manifest import Manifest, ModelSpec, TensorSpec
from .triton_protocol import (
    FROM_TRITON,
    PROTOCOLS,
    REQUEST_ID,
    WIRE,
    Protocol,
    as_array,
    auth_error,
    empty_outputs,
    is_connection_error,
    is_timeout,
    join_outputs,
    open_protocol,
    parse_url,
    refused,
    remote_error,
)
from .triton_protocol import message as _message

__all__ = ["PROTOCOLS", "AsyncTritonBackend", "TritonBackend", "parse_url"]

#: what the client asks ``clipq_info`` for
_INFO_REQUEST = {remote.INFO_INPUT: ["manifest"]}


class _TritonCommon:
    """What the blocking and the asyncio backends share: specs, checks, chunks, errors, retries."""

    def __init__(self, url: str, manifest: Manifest | str | os.PathLike[str] | None, protocol: str | None,
                 timeout_s: float, retries: int, backoff_s: float, verify: bool, aio: bool,
                 api_key: str | None = None, ca_file: str | None = None) -> None:
        self.url = url
        #: the adapter of the URL's protocol: everything that differs between gRPC and HTTP
        self.wire: Protocol = open_protocol(url, protocol, timeout_s, aio=aio, api_key=api_key, ca_file=ca_file)
        self.protocol, self.address, self.ssl = self.wire.name, self.wire.address, self.wire.ssl
        self._manifest: Manifest | None = (manifest if isinstance(manifest, Manifest) or manifest is None
                                           else Manifest.load(manifest))
        #: the server's own description (``clipq_info``): None until asked, False where it has none
        self._info: dict[str, Any] | bool | None = None
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self.verify = verify
        self._configs: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._verified: set[str] = set()

    # -- what the server says about itself -----------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        """The artifacts' manifest: the local one given, else the one the server described."""
        if self._manifest is None:
            raise ArtifactError(f"no manifest yet for the server at {self.url}: `await backend.open()` (or use "
                                "`async with`) before using an AsyncTritonBackend without local artifacts")
        return self._manifest

    @property
    def thin(self) -> bool:
        """Whether this client works from the server's description alone (no local artifact directory)."""
        return isinstance(self._manifest, remote.ServerManifest) or self._manifest is None

    def _adopt_info(self, raw: Any) -> dict[str, Any]:
        info = remote.parse_info(raw, self.url)
        self._info = info
        if self._manifest is None:
            self._manifest = remote.manifest_from_info(info, self.url, f"{self.protocol}:{self.address}")
        return info

    def _no_info(self, exc: BaseException) -> None:
        """The server has no ``clipq_info`` (a repository clipq did not render, or a partial one)."""
        if self._manifest is None:
            raise ArtifactError(
                f"the server at {self.url} does not describe itself ({remote.INFO_MODEL}: {exc}); it was not rendered "
                "by this clipq, or without that model: pass the artifact directory it was rendered from") from exc
        self._info = False

    def _make_path(self, info: dict[str, Any] | None, max_pixels: int | None, window: int) -> Any:
        """The task path (:func:`clipq.runtime.local_path.task_path`): the server's ensembles where it describes
        itself, tensors from the local artifacts for whatever it does not serve."""
        from ..local_path import LocalPath

        local = None if self.thin else LocalPath(self, max_pixels=max_pixels, window=window)
        if not info:
            assert local is not None  # a thin client always has the server's description
            return local
        return remote.ServerPath(self, info, max_pixels=max_pixels, window=window, fallback=local)

    # -- errors --------------------------------------------------------------------------------
    def _unavailable(self, exc: BaseException, what: str = "is not reachable") -> BackendUnavailable:
        return BackendUnavailable(
            f"Triton server at {self.url} {what} ({_message(exc).strip() or type(exc).__name__}); "
            "is it running? Start one with `clipq serve`")

    def _retryable(self, exc: BaseException, model: str | None) -> bool:
        """Safe to repeat: the request did not run, and running it twice would change nothing."""
        if is_timeout(exc) or refused(exc):
            return False
        if not is_connection_error(exc):
            return False
        cfg = self._configs.get(model or "")
        if cfg and (cfg.get("sequence_batching") or (cfg.get("model_transaction_policy") or {}).get("decoupled")):
            return False
        return True

    def _delay(self, attempt: int) -> float:
        # exponential backoff with full jitter: clients that failed together do not retry together
        return random.uniform(0, self.backoff_s * (2 ** attempt))

    def _error(self, exc: BaseException, model: str, start: int = 0) -> ClipqError:
        """Map a tritonclient (or socket) error to the clipq error a caller of ``model`` expects."""
        if isinstance(exc, ClipqError):
            return exc
        if refused(exc):  # before the connection check: Triton's gRPC answers UNAVAILABLE
            return auth_error(exc, self.url, repr(model), self.wire.api_key is not None)
        if is_timeout(exc):
            return BackendUnavailable(f"Triton server at {self.url} did not answer {model!r} within {self.timeout_s:g} s")
        if is_connection_error(exc) and "queue" not in _message(exc).lower():
            return self._unavailable(exc)
        msg = _message(exc)
        err = remote_error(msg, model, start)
        if err is not None:
            return err
        return InferenceError(f"{model} on {self.url}: {msg.strip()}")

    # -- specs ---------------------------------------------------------------------------------
    def _spec_from_config(self, cfg: Mapping[str, Any]) -> ModelSpec:
        mbs = int(cfg.get("max_batch_size", 0) or 0)

        def tensors(key: str) -> list[TensorSpec]:
            out = []
            for t in cfg.get(key, []):
                dims = tuple(int(d) for d in t.get("dims", []))
                out.append(TensorSpec(t["name"], FROM_TRITON.get(t["data_type"], t["data_type"]),
                                      ((-1,) + dims) if mbs > 0 else dims))
            return out

        return ModelSpec(name=cfg["name"], inputs=tensors("input"), outputs=tensors("output"),
                         max_batch_size=mbs, preferred_batch_sizes=[],
                         meta={"platform": cfg.get("platform") or cfg.get("backend", "")})

    def _accept_config(self, model: str, cfg: dict[str, Any]) -> None:
        self._configs[model] = cfg
        if self._manifest is None or model not in self._manifest.models:
            self._specs[model] = self._spec_from_config(cfg)
        elif self.verify:
            self._check_identity(model, cfg)

    def _check_identity(self, model: str, cfg: Mapping[str, Any]) -> None:
        """Refuse a server whose graph is not one the local manifest describes (sha256 check)."""
        served = ((cfg.get("parameters") or {}).get("clipq_sha256") or {}).get("string_value", "")
        if not served:
            return  # a repository clipq did not render: nothing to compare
        spec = self.manifest.models[model]
        files = [spec.file, *spec.variants.values()]
        known = {self.manifest.files.get(f, {}).get("sha256", "") for f in files if f}
        if served not in known:
            raise ArtifactError(
                f"the server at {self.url} runs a different {model!r} graph (sha256 {served[:12]}...) than the "
                f"artifacts in {self.manifest.root} describe; re-render its repository from these artifacts "
                "(`clipq serve ARTIFACTS`) or point --artifacts at the ones it serves")
        self._verified.add(model)

    def _local_spec(self, model: str) -> ModelSpec | None:
        if self._manifest is not None and model in self._manifest.models:
            return self._manifest.models[model]
        return self._specs.get(model)

    def _max_batch(self, model: str, spec: ModelSpec) -> int:
        cfg = self._configs.get(model)
        return int(cfg.get("max_batch_size", 0)) if cfg else int(spec.max_batch_size)

    def _check(self, model: str, spec: ModelSpec, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        from .ort import check_inputs

        arrays = {}
        for t in spec.inputs:
            if t.name in inputs:
                arrays[t.name] = as_array(inputs[t.name], t)
        extra = {k: v for k, v in inputs.items() if k not in arrays}
        return check_inputs(spec, {**arrays, **extra})

    def _chunks(self, model: str, spec: ModelSpec, feeds: Mapping[str, np.ndarray]) -> list[tuple[int, list[Any]]]:
        """Split along the batch axis by the server's max_batch_size; build tritonclient inputs."""
        mbs = self._max_batch(model, spec)
        n = int(next(iter(feeds.values())).shape[0]) if feeds else 0
        step = mbs if mbs > 0 else max(n, 1)
        out = []
        for start in range(0, max(n, 1), step):
            infer_inputs = []
            for t in spec.inputs:
                a = feeds[t.name][start:start + step] if mbs > 0 else feeds[t.name]
                infer_inputs.append(self.wire.infer_input(t.name, a, WIRE[t.dtype]))
            out.append((start, infer_inputs))
        return out

    @staticmethod
    def _request_id() -> dict[str, str]:
        rid = REQUEST_ID.get()
        return {"request_id": rid} if rid else {}

    def _outputs(self, spec: ModelSpec) -> list[Any]:
        return [self.wire.requested_output(t.name) for t in spec.outputs]


class TritonBackend(_TritonCommon):
    """Run models on a Triton server; implements :class:`~clipq.runtime.contract.Backend`.

    Args:
        url: ``grpc://host:port`` or ``http://host:port`` (``grpcs://``, ``https://`` for TLS).
        manifest: The artifact manifest (or directory) the server's repository was rendered from,
            or None: a thin client, which asks the server (``clipq_info``) for what it must know.
        protocol: ``"grpc"`` or ``"http"`` for a URL without scheme.
        timeout_s: Deadline of each call (connection and response), in seconds.
        retries: Extra attempts for requests that are safe to repeat (see the module docstring).
        backoff_s: Base of the exponential backoff between attempts.
        verify: Check, on first use of each network, that the server runs the graph the manifest
            describes (its sha256, recorded in the rendered config).
        api_key: The key of a server started with ``clipq serve --api-key`` (default:
            ``$CLIPQ_API_KEY``, else none).
        ca_file: For ``grpcs://`` (``clipq serve --tls-cert``): the PEM file of the CA its
            certificate is verified against (default: ``$CLIPQ_CA_FILE``, else the system's CAs).

    Raises:
        MissingDependencyError: tritonclient is not installed.
        ClipqError: an unusable URL.
        AuthenticationError: (thin client) the server refused the key, or wants one.
        BackendUnavailable, ArtifactError: (thin client) the server cannot be reached, or does not
            describe itself.
    """

    def __init__(self, url: str, manifest: Manifest | str | os.PathLike[str] | None = None,
                 protocol: str | None = None, *, timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.05,
                 verify: bool = True, api_key: str | None = None, ca_file: str | None = None) -> None:
        super().__init__(url, manifest, protocol, timeout_s, retries, backoff_s, verify, aio=False, api_key=api_key,
                         ca_file=ca_file)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._shared: Any = None  # the one client, where the protocol's client is thread-safe
        self._closed = False
        if self._manifest is None:
            try:
                self.server_info()
            except BaseException:
                self.close()
                raise

    def server_info(self) -> dict[str, Any] | None:
        """The server's description (``clipq_info``, asked once), or None where it has none."""
        if self._info is None:
            try:
                self._config(remote.INFO_MODEL)
            except InferenceError as e:
                self._no_info(e)
                return None
            self._adopt_info(self.infer(remote.INFO_MODEL, _INFO_REQUEST)[remote.INFO_OUTPUT])
        return self._info or None

    def task_path(self, *, max_pixels: int | None, window: int = 1) -> Any:
        """How the task classes reach this server: bytes and strings to its ensembles (see :mod:`.remote`)."""
        return self._make_path(self.server_info(), max_pixels, window)

    # -- connections ---------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._closed:
            raise BackendUnavailable(f"backend for {self.url} is closed")
        if self.wire.thread_safe:
            if self._shared is None:
                with self._lock:
                    if self._shared is None:
                        self._shared = self.wire.client()
                        self._clients.append(self._shared)
            return self._shared
        c = getattr(self._local, "client", None)
        if c is None:
            # one client (one keep-alive connection) per thread where the client is not thread-safe
            c = self.wire.client()
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def _call(self, model: str | None, fn: Any, *args: Any, **kw: Any) -> Any:
        """Call ``fn`` with the deadline, retrying what is safe to repeat."""
        kw = {**self.wire.call_options(), **kw}
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - classified below
                last = attempt == self.retries or time.monotonic() + self._delay(attempt) > deadline
                if last or not self._retryable(e, model):
                    raise
                time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def _config(self, model: str) -> dict[str, Any]:
        cfg = self._configs.get(model)
        if cfg is None:
            try:
                raw = self._call(model, self._client().get_model_config, model, **self.wire.json_options())
            except Exception as e:  # noqa: BLE001
                err = self._error(e, model)
                if isinstance(err, InferenceError):
                    raise InferenceError(f"the server at {self.url} has no model {model!r}: {_message(e)}") from e
                raise err from e
            cfg = raw.get("config", raw)
            self._accept_config(model, cfg)
        return cfg

    # -- Backend protocol ----------------------------------------------------------------------
    def spec(self, model: str) -> ModelSpec:
        """The model's tensor contract: the manifest's for networks, the server's otherwise.

        Raises:
            InferenceError: the server has no such model (and the manifest neither).
            BackendUnavailable: the server cannot be reached to ask.
        """
        spec = self._local_spec(model)
        if spec is not None:
            return spec
        self._config(model)
        return self._specs[model]

    def infer(self, model: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run ``model`` on the server; returns its named outputs as numpy arrays.

        Raises:
            InvalidInputError, DTypeError, ShapeError: inputs that do not match the spec (checked
                here), or an input the model refused (with its index in this batch).
            InferenceError: the server failed for another reason (its reason is in the message).
            BackendUnavailable: the server cannot be reached or did not answer in time.
            ArtifactError: the server runs another graph than the manifest describes.
        """
        self._config(model)  # max batch size, statefulness, identity check (cached)
        spec = self.spec(model)
        feeds = self._check(model, spec, inputs)
        if feeds and len(next(iter(feeds.values()))) == 0:
            return empty_outputs(spec)
        outputs = self._outputs(spec)
        results = []
        for start, infer_inputs in self._chunks(model, spec, feeds):
            try:
                results.append(self._call(model, self._client().infer, model, infer_inputs, outputs=outputs,
                                          **self._request_id()))
            except Exception as e:  # noqa: BLE001
                raise self._error(e, model, start) from e
        return join_outputs(spec, results)

    def health(self) -> None:
        """Raise ``BackendUnavailable`` unless the server is live and every model is ready."""
        try:
            c = self._client()
            live = self._call(None, c.is_server_live)
            ready = live and self._call(None, c.is_server_ready)
        except BackendUnavailable:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._unavailable(e) from e
        if not ready:
            raise BackendUnavailable(f"Triton server at {self.url} is {'live but not ready' if live else 'not live'}")

    def model_ready(self, model: str) -> bool:
        """Whether the server reports ``model`` ready."""
        try:
            return bool(self._call(model, self._client().is_model_ready, model))
        except Exception as e:  # noqa: BLE001
            raise self._unavailable(e) from e

    def statistics(self, model: str = "") -> dict[str, Any]:
        """The server's inference statistics (``model``: one model, default all), as JSON."""
        c = self._client()
        try:
            return self._call(None, c.get_inference_statistics, model, **self.wire.json_options())
        except Exception as e:  # noqa: BLE001
            raise self._error(e, model or "statistics") from e

    def close(self) -> None:
        """Close every connection (from any thread). Later calls raise ``BackendUnavailable``."""
        with self._lock:
            self._closed = True
            clients, self._clients, self._shared = self._clients, [], None
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001,S110 - closing a dead connection is not an error
                pass

    def __enter__(self) -> TritonBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TritonBackend({self.url!r}, protocol={self.protocol!r}, timeout_s={self.timeout_s:g})"


class AsyncTritonBackend(_TritonCommon):
    """The asyncio twin of :class:`TritonBackend` (``await backend.infer(...)``).

    Chunks of a large batch are sent concurrently (at most ``max_in_flight`` at a time), so the
    server's dynamic batcher and instances see them together. Arguments as :class:`TritonBackend`,
    plus ``max_in_flight``. The task classes take it too (their methods then return awaitables);
    ``await backend.open()`` first, or use ``async with``: the client asks the server what it serves
    (and, without ``manifest``, everything else it must know) there.
    """

    def __init__(self, url: str, manifest: Manifest | str | os.PathLike[str] | None = None,
                 protocol: str | None = None, *, timeout_s: float = 30.0, retries: int = 2, backoff_s: float = 0.05,
                 verify: bool = True, max_in_flight: int = 8, api_key: str | None = None,
                 ca_file: str | None = None) -> None:
        super().__init__(url, manifest, protocol, timeout_s, retries, backoff_s, verify, aio=True, api_key=api_key,
                         ca_file=ca_file)
        self.max_in_flight = max(1, int(max_in_flight))
        self._c: Any = None
        self._closed = False

    async def open(self) -> AsyncTritonBackend:
        """Ask the server for its description (``clipq_info``) once; returns this backend.

        Raises:
            BackendUnavailable: the server cannot be reached.
            ArtifactError: (no local manifest) the server does not describe itself.
        """
        await self.server_info()
        return self

    async def server_info(self) -> dict[str, Any] | None:
        """As :meth:`TritonBackend.server_info`."""
        if self._info is None:
            try:
                await self._config(remote.INFO_MODEL)
            except InferenceError as e:
                self._no_info(e)
                return None
            self._adopt_info((await self.infer(remote.INFO_MODEL, _INFO_REQUEST))[remote.INFO_OUTPUT])
        return self._info or None

    def task_path(self, *, max_pixels: int | None, window: int = 1) -> Any:
        """As :meth:`TritonBackend.task_path`, from what :meth:`open` learnt.

        Raises:
            ArtifactError: :meth:`open` has not run.
        """
        if self._info is None:
            raise ArtifactError(f"`await backend.open()` (or use `async with`) before building task classes on an "
                                f"AsyncTritonBackend: the client asks the server at {self.url} what it serves")
        return self._make_path(self._info or None, max_pixels, window)

    def _client(self) -> Any:
        if self._closed:
            raise BackendUnavailable(f"backend for {self.url} is closed")
        if self._c is None:
            self._c = self.wire.aio_client(self.max_in_flight)
        return self._c

    async def _call(self, model: str | None, fn: Any, *args: Any, **kw: Any) -> Any:
        kw = {**self.wire.call_options(), **kw}
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(self.retries + 1):
            try:
                return await fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - classified below
                last = attempt == self.retries or time.monotonic() + self._delay(attempt) > deadline
                if last or not self._retryable(e, model):
                    raise
                await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    async def _config(self, model: str) -> dict[str, Any]:
        cfg = self._configs.get(model)
        if cfg is None:
            try:
                raw = await self._call(model, self._client().get_model_config, model, **self.wire.json_options())
            except Exception as e:  # noqa: BLE001
                err = self._error(e, model)
                if isinstance(err, InferenceError):
                    raise InferenceError(f"the server at {self.url} has no model {model!r}: {_message(e)}") from e
                raise err from e
            cfg = raw.get("config", raw)
            self._accept_config(model, cfg)
        return cfg

    async def spec(self, model: str) -> ModelSpec:
        """As :meth:`TritonBackend.spec`."""
        spec = self._local_spec(model)
        if spec is not None:
            return spec
        await self._config(model)
        return self._specs[model]

    async def infer(self, model: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """As :meth:`TritonBackend.infer`; chunks run concurrently."""
        await self._config(model)
        spec = await self.spec(model)
        feeds = self._check(model, spec, inputs)
        if feeds and len(next(iter(feeds.values()))) == 0:
            return empty_outputs(spec)
        outputs = self._outputs(spec)
        sem = asyncio.Semaphore(self.max_in_flight)
        client = self._client()

        async def one(start: int, infer_inputs: list[Any]) -> Any:
            async with sem:
                try:
                    return await self._call(model, client.infer, model, infer_inputs, outputs=outputs,
                                            **self._request_id())
                except Exception as e:  # noqa: BLE001
                    raise self._error(e, model, start) from e

        results = await asyncio.gather(*(one(s, ii) for s, ii in self._chunks(model, spec, feeds)))
        return join_outputs(spec, results)

    async def health(self) -> None:
        """As :meth:`TritonBackend.health`."""
        try:
            c = self._client()
            live = await self._call(None, c.is_server_live)
            ready = live and await self._call(None, c.is_server_ready)
        except BackendUnavailable:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._unavailable(e) from e
        if not ready:
            raise BackendUnavailable(f"Triton server at {self.url} is {'live but not ready' if live else 'not live'}")

    async def close(self) -> None:
        self._closed = True
        c, self._c = self._c, None
        if c is not None:
            try:
                await c.close()
            except Exception:  # noqa: BLE001,S110 - closing a dead connection is not an error
                pass

    async def __aenter__(self) -> AsyncTritonBackend:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
