"""Backends that implement :class:`clipq.runtime.contract.Backend`."""
