"""The engine registry: every backend clipq can run a network on, by name, in one table.

``connect`` opens a backend from this table, the export asks it which graph variants an engine runs,
and the Triton python model opens its in-server engine through it. Adding an engine is one
:func:`register` call and a module that defines the backend class: no if/elif on engine names
anywhere else. Backend modules are imported lazily, so the registry itself costs nothing at import.

The CPU default of each network is measured (``clipq export --openvino``, ``clipq tune-engines``) and
recorded in the manifest as ``spec.meta["cpu_default"]`` with the machine it was measured on;
:func:`cpu_routes` honours it where this host has the same ISA flags, and :func:`open_cpu_default`
opens the matching backend (one engine, or a :class:`~clipq.runtime.backends.routed.RoutedBackend`
when the networks' choices differ).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ClipqError

__all__ = ["CPU_DEFAULT", "DEFAULT_ENGINE", "ENGINES", "Engine", "RETUNE_COMMAND", "UnknownEngineError", "cpu_routes", "engine",
           "engine_for_url", "engine_for_variant", "open_backend", "open_cpu_default", "open_for_variants", "register"]

log = logging.getLogger(__name__)
#: how a host re-measures the CPU default (named in the notice when the recorded one does not apply)
RETUNE_COMMAND = "clipq tune-engines {root}"


class UnknownEngineError(ClipqError, ValueError):
    """An engine name (or URL scheme) that no registered engine answers to."""


@dataclass(frozen=True, kw_only=True)
class Engine:
    """One registered engine.

    Attributes:
        name: registry key (``onnxruntime``, ``triton``, ...).
        backend: ``"module:Class"`` of the backend; constructed as ``Class(manifest, **kw)`` for a local
            engine and ``Class(url, manifest, **kw)`` for a remote one.
        description: one line for ``--help`` and the docs.
        variants: graph variants of the artifact this engine runs (empty: whatever the server holds).
        schemes: URL schemes that select this engine (remote engines only).
        extra: the pip extra that installs what it needs.
        requires: top-level modules it imports (checked before a recorded choice is honoured).
    """

    name: str
    backend: str
    description: str
    variants: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    extra: str = ""
    requires: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return bool(self.schemes)

    @property
    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.requires)

    def backend_class(self) -> type:
        mod, _, cls = self.backend.partition(":")
        return getattr(importlib.import_module(mod), cls)


ENGINES: dict[str, Engine] = {}
DEFAULT_ENGINE = "onnxruntime"
#: not an engine: what a served network's config names (``clipq_engine``) to run the recorded CPU
#: default of :func:`open_cpu_default` (checked against the serving host's CPU flags at load time)
CPU_DEFAULT = "cpu-default"


def register(e: Engine) -> Engine:
    """Add ``e`` to the table (a later registration of the same name replaces the earlier)."""
    ENGINES[e.name] = e
    return e


def engine(name: str) -> Engine:
    """The engine called ``name``.

    Raises:
        UnknownEngineError: no such engine (the message lists the registered ones).
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngineError(f"unknown engine {name!r}; registered: {', '.join(sorted(ENGINES))}") from None


def engine_for_url(url: str) -> Engine:
    """The remote engine that serves ``url`` (chosen by its scheme, e.g. ``grpc://``).

    Raises:
        UnknownEngineError: no registered engine takes that scheme.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    for e in ENGINES.values():
        if scheme in e.schemes:
            return e
    schemes = sorted(s for e in ENGINES.values() for s in e.schemes)
    raise UnknownEngineError(
        f"server must be a URL like grpc://127.0.0.1:8001 or http://127.0.0.1:8000 (schemes: {', '.join(schemes)}),"
        f" got {url!r}"
    )


def open_backend(name: str, manifest: Any, *args: Any, **kw: Any) -> Any:
    """Construct the backend of engine ``name`` over ``manifest`` (remote engines take the URL first)."""
    e = engine(name)
    cls = e.backend_class()
    return cls(*args, manifest, **kw) if e.remote else cls(manifest, *args, **kw)


def engine_for_variant(variant: str) -> Engine:
    """The in-process engine that runs graph ``variant`` (onnxruntime for any variant no engine lists)."""
    for e in ENGINES.values():
        if not e.remote and e.name != DEFAULT_ENGINE and variant in e.variants:
            return e
    return engine(DEFAULT_ENGINE)


def _one_or_routed(manifest: Any, routes: Mapping[str, tuple[str, str | None]], **kw: Any) -> Any:
    """One backend when every network with a graph goes to one engine, else a routing backend."""
    from .backends.common import accepted_kwargs

    with_graph = [n for n, s in manifest.models.items() if s.file]
    engines = {e for e, _ in routes.values()}
    if len(engines) == 1 and all(n in routes for n in with_graph):
        name = engines.pop()
        cls = engine(name).backend_class()
        variants = {n: v for n, (_, v) in routes.items() if v is not None}
        return cls(manifest, **accepted_kwargs(cls, {**kw, "variant": variants or None}))
    from .backends.routed import RoutedBackend

    return RoutedBackend(manifest, routes, default_engine=DEFAULT_ENGINE, **kw)


def open_for_variants(manifest: Any, variants: Mapping[str, str], **kw: Any) -> Any:
    """A backend running each network's given variant on the engine that runs it.

    ``{"clip_image": "ov_int8", "clip_text": "int8"}`` opens OpenVINO for the first and onnxruntime
    for the second (networks not named run onnxruntime's default). The task-metric gate measures a
    variant through this, whatever engine it belongs to.
    """
    routes = {n: (engine_for_variant(v).name, v) for n, v in variants.items()}
    if not routes:
        return open_backend(DEFAULT_ENGINE, manifest, **kw)
    return _one_or_routed(manifest, routes, **kw)


def _gpu_in_onnxruntime() -> bool:
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a base dependency
        return False
    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers()))


def cpu_routes(manifest: Any, host: Mapping[str, Any] | None = None) -> dict[str, tuple[str, str]]:
    """Per network, the recorded CPU default (engine, variant) where it holds on this host.

    A network is left out (it runs onnxruntime's default variant) when nothing was recorded, when
    the host's ISA flags differ from those it was measured on, when its engine is not installed, or
    when its variant is gone; each case but the first is logged as a warning that names both
    machines and the re-measure command.

    Args:
        manifest: The loaded manifest.
        host: This machine's facts (default :func:`clipq.runtime.backends.common.cpu_facts`).
    """
    from .backends.common import cpu_facts, flags_text
    from .records import CPU_DEFAULT_KEY, CpuDefault

    host = host or cpu_facts()
    hflags = host.get("flags") or {}
    routes: dict[str, tuple[str, str]] = {}
    other: dict[str, list[str]] = {}
    notices: list[str] = []
    for name, spec in manifest.models.items():
        rec = CpuDefault.from_dict(spec.meta.get(CPU_DEFAULT_KEY))
        if rec is None:
            continue
        eng, var = rec.engine, rec.variant
        if not rec.measured_like(hflags):
            key = f"{rec.measured_on.get('cpu', '?')} [{flags_text(rec.measured_on.get('flags') or {})}]"
            other.setdefault(key, []).append(f"{name} ({eng}/{var})")
            continue
        e = ENGINES.get(eng)
        if e is None or e.remote:
            notices.append(f"{name}: the recorded CPU default engine {eng!r} is not registered here")
        elif not e.installed:
            notices.append(f"{name}: the recorded CPU default {eng}/{var} needs {', '.join(e.requires)}, not installed"
                           f" here (pip install 'clipq[{e.extra}]')")
        elif not rec.has_graph(spec):
            notices.append(f"{name}: the recorded CPU default {eng}/{var} has no graph in the artifacts")
        else:
            routes[name] = (eng, var)
    retune = RETUNE_COMMAND.format(root=getattr(manifest, "root", "ARTIFACTS"))
    for measured, nets in other.items():
        log.warning(
            "the CPU defaults of %s were measured on %s; this host is %s [%s]: running onnxruntime's default variant "
            "for them instead (a choice measured on other CPU flags may be slower here). Re-measure on this host: %s",
            ", ".join(nets), measured, host.get("cpu", "?"), flags_text(hflags), retune,
        )
    for n in notices:
        log.warning("%s: running onnxruntime's default variant instead. Re-measure: %s", n, retune)
    return routes


def open_cpu_default(manifest: Any, *, cpu_only: bool = False, **kw: Any) -> Any:
    """The backend ``connect(artifacts)`` opens when no engine is named.

    The recorded per-network CPU default (see :func:`cpu_routes`) where it holds; onnxruntime's own
    choice (its manifest ``default_variant``) for the rest. An explicit ``variant`` or ``providers``,
    or a GPU in onnxruntime, means onnxruntime as before: the recorded choice is a CPU measurement.

    Args:
        manifest: The loaded manifest.
        cpu_only: The caller runs on the CPU whatever onnxruntime offers (a Triton ``KIND_CPU``
            instance): the recorded choice applies even where onnxruntime has a GPU provider, and
            onnxruntime runs on ``CPUExecutionProvider`` alone.
        **kw: Passed on to the backends (each takes the keywords it knows).
    """
    if "variant" in kw:
        return open_backend(DEFAULT_ENGINE, manifest, **kw)
    if cpu_only:
        kw = {**kw, "providers": ["CPUExecutionProvider"]}  # reaches onnxruntime only
    elif "providers" in kw or _gpu_in_onnxruntime():
        return open_backend(DEFAULT_ENGINE, manifest, **kw)
    routes = cpu_routes(manifest)
    if not routes:
        return open_backend(DEFAULT_ENGINE, manifest, **kw)
    return _one_or_routed(manifest, dict(routes), **kw)


register(Engine(
    name="onnxruntime", backend="clipq.runtime.backends.ort:OrtBackend",
    description="in-process onnxruntime (providers TensorRT > CUDA > CPU where present)",
    variants=("fp32", "int8", "fp16"), requires=("onnxruntime",),
))
register(Engine(
    name="openvino", backend="clipq.runtime.backends.openvino:OpenVinoBackend",
    description="in-process OpenVINO CPU plugin (IR or ONNX; bf16 where the CPU has it, NNCF int8)",
    variants=("ov_fp32", "ov_int8"), extra="openvino", requires=("openvino",),
))
register(Engine(
    name="triton", backend="clipq.runtime.backends.triton:TritonBackend",
    description="a Triton Inference Server over gRPC or HTTP (tritonclient)",
    schemes=("grpc", "grpcs", "http", "https"), extra="runtime",
))
