"""Backends that implement :class:`clipq.runtime.backend.Backend`."""
