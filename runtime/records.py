"""Typed records that one stage writes into the manifest and the next reads, each decided in one place.

A record is a frozen dataclass with ``of`` (read from where it lives in the manifest, or None) and
``store`` (write it back; the caller saves the manifest). The JSON they write is the manifest's
format, so a manifest written before these classes existed reads the same.

- :class:`CpuDefault`: the (engine, variant) measured fastest for a network on a CPU, with the
  machine it was measured on (``spec.meta["cpu_default"]``). Written by
  :func:`clipq.export.selection.select_network` (``clipq export`` / ``clipq tune-engines``); read by
  :func:`clipq.runtime.engines.cpu_routes` (in process), the OpenVINO backend and the Triton
  renderers through :meth:`CpuDefault.of`, the one reader.
- The image -> prompt settings are :class:`clipq.runtime.fusion.Img2PromptSettings`
  (``extra["img2prompt"]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .backends.common import ISA_FLAGS
from .manifest import ModelSpec

CPU_DEFAULT_KEY = "cpu_default"


@dataclass(frozen=True)
class CpuDefault:
    """The measured CPU default of one network.

    Attributes:
        engine: The engine's registry name (``onnxruntime``, ``openvino``).
        variant: The graph it runs (``fp32``, ``int8``, ``ov_int8`` ...).
        measured_on: The machine: ``cpu`` (model name), ``flags`` (ISA flags), ``threads``, versions.
        precision: The precision the engine ran (``f32``, ``bf16``), where it reports one.
        details: The rest of the measurement (per-candidate ms, method, when, how to re-measure).
    """

    engine: str
    variant: str
    measured_on: Mapping[str, Any] = field(default_factory=dict)
    precision: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CpuDefault | None:
        """The record of a stored dict, or None where it names no engine and variant."""
        if not isinstance(d, Mapping) or not d.get("engine") or not d.get("variant"):
            return None
        rest = {k: v for k, v in d.items() if k not in ("engine", "variant", "measured_on", "precision")}
        return cls(str(d["engine"]), str(d["variant"]), dict(d.get("measured_on") or {}), d.get("precision"), rest)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "variant": self.variant, "precision": self.precision, **self.details,
                "measured_on": dict(self.measured_on)}

    @classmethod
    def of(cls, spec: ModelSpec, *, engine: str | None = None) -> CpuDefault | None:
        """The record ``spec`` carries, if it names a graph the artifacts have (and ``engine``, if given).

        The one reader of the record: every consumer (in-process routing, the OpenVINO backend, the
        Triton renderers) asks here, so they agree on when a record applies.
        """
        rec = cls.from_dict(spec.meta.get(CPU_DEFAULT_KEY))
        if rec is None or not rec.has_graph(spec) or (engine is not None and rec.engine != engine):
            return None
        return rec

    def has_graph(self, spec: ModelSpec) -> bool:
        """Whether the artifacts hold the recorded variant's graph."""
        return self.variant == "fp32" or self.variant in spec.variants

    def store(self, spec: ModelSpec) -> None:
        """Put the record into ``spec.meta`` (the caller saves the manifest)."""
        spec.meta[CPU_DEFAULT_KEY] = self.to_dict()

    def measured_like(self, host_flags: Mapping[str, Any]) -> bool:
        """Whether the host has the same ISA flags (of :data:`ISA_FLAGS`) as the machine measured.

        False where the two share no known flag: a choice measured on other flags may be slower.
        """
        rec = self.measured_on.get("flags") or {}
        keys = [f for f in ISA_FLAGS if f in rec and f in host_flags]
        return bool(keys) and all(bool(rec[f]) == bool(host_flags[f]) for f in keys)


__all__ = ["CPU_DEFAULT_KEY", "CpuDefault"]
