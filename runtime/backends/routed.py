"""A backend that routes each network to its own engine and variant.

The CPU default is measured per network, so ``clip_image`` may be fastest on OpenVINO int8 while
``clip_text`` is fastest on onnxruntime int8. :class:`RoutedBackend` opens one backend per engine
(each with the variants of its networks) and sends every call to the backend of that network;
callers see one :class:`~clipq.runtime.contract.Backend` and never branch on engine names.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import BackendUnavailable
from ..manifest import Manifest, ModelSpec
from .common import accepted_kwargs

log = logging.getLogger(__name__)

#: network -> (engine name, variant or None for that engine's default)
Routes = Mapping[str, tuple[str, "str | None"]]


class RoutedBackend:
    """One backend per engine; each network goes to the engine its route names.

    Args:
        manifest: The loaded manifest.
        routes: network -> (engine, variant); networks not listed go to ``default_engine`` with
            that engine's default variant.
        default_engine: The engine of the networks without a route.
        **kw: Passed on to each engine's backend class, only the keywords that class takes
            (``threads`` reaches all; ``spin`` only onnxruntime; ``performance_hint`` only OpenVINO).

    Raises:
        UnknownEngineError, MissingDependencyError: as :func:`clipq.runtime.engines.open_backend`.
    """

    def __init__(self, manifest: Manifest, routes: Routes, *, default_engine: str = "onnxruntime", **kw: Any) -> None:
        from ..engines import engine

        self.manifest = manifest
        self.routes = {n: (e, v) for n, (e, v) in routes.items()}
        self.default_engine = default_engine
        by_engine: dict[str, dict[str, str]] = {default_engine: {}}
        for net, (eng, variant) in self.routes.items():
            by_engine.setdefault(eng, {})
            if variant is not None:
                by_engine[eng][net] = variant
        self.backends: dict[str, Any] = {}
        try:
            for name, variants in by_engine.items():
                cls = engine(name).backend_class()
                self.backends[name] = cls(manifest, **accepted_kwargs(cls, {**kw, "variant": variants or None}))
        except BaseException:
            self.close()
            raise

    def backend_for(self, model: str) -> Any:
        """The backend that runs ``model``."""
        return self.backends[self.routes.get(model, (self.default_engine, None))[0]]

    def engine_for(self, model: str) -> str:
        return self.routes.get(model, (self.default_engine, None))[0]

    # -- Backend protocol ------------------------------------------------------------------------
    def infer(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``model`` on the backend of its route (inputs checked there)."""
        return self.backend_for(model).infer(model, inputs)

    def spec(self, model: str) -> ModelSpec:
        return self.manifest.model(model)

    def health(self) -> None:
        """Raise ``BackendUnavailable`` unless every routed network's backend can serve it."""
        if not self.backends:
            raise BackendUnavailable("backend is closed")
        for name, spec in self.manifest.models.items():
            if not spec.file:
                continue
            b = self.backend_for(name)
            load = getattr(b, "session", None) or getattr(b, "compiled", None)  # in-process engines load lazily
            try:
                if load is not None:
                    load(name)
            except Exception as e:  # noqa: BLE001 - report any engine's failure the same way
                raise BackendUnavailable(f"{name} ({self.engine_for(name)}): {e}") from e

    def close(self) -> None:
        for b in self.backends.values():
            try:
                b.close()
            except Exception:  # noqa: BLE001 - close the others regardless
                log.debug("closing %r failed", b, exc_info=True)
        self.backends = {}

    def __enter__(self) -> RoutedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        routes = ", ".join(f"{n}={e}/{v or 'default'}" for n, (e, v) in sorted(self.routes.items()))
        return f"RoutedBackend({str(self.manifest.root)!r}, {routes})"
