"""Typed errors shared by every clipq stage.

All errors derive from :class:`ClipqError`; input errors also derive from ``ValueError`` so that
callers who catch the builtin keep working. Each error names what was wrong (file, line, index in
the batch) so that a user never has to read a traceback from deep inside a library.
"""

from __future__ import annotations


class ClipqError(Exception):
    """Base class of every error clipq raises on purpose."""


class MissingDependencyError(ClipqError, ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" ({purpose})" if purpose else ""
        super().__init__(f"{package} is needed{what}: pip install 'clipq[{extra}]'")
        self.package, self.extra = package, extra


class InvalidInputError(ClipqError, ValueError):
    """A user-supplied input is unusable. ``index`` is its position in the batch, if any."""

    def __init__(self, message: str, *, index: int | None = None, source: str | None = None):
        where = []
        if index is not None:
            where.append(f"item {index}")
        if source is not None:
            where.append(repr(source) if len(source) < 200 else repr(source[:200] + "..."))
        prefix = f"[{', '.join(where)}] " if where else ""
        super().__init__(prefix + message)
        self.index, self.source, self.reason = index, source, message


class InvalidImageError(InvalidInputError):
    """An image could not be decoded, is too large, too small or of an unsupported kind."""


class InvalidTextError(InvalidInputError):
    """A text is empty, not valid UTF-8, or otherwise unusable."""


class ShapeError(InvalidInputError):
    """An array has the wrong shape (or rank)."""


class DTypeError(InvalidInputError):
    """An array has the wrong dtype."""


class DimensionMismatchError(ShapeError):
    """An embedding's dimension differs from the one expected (index, model)."""


class DataFormatError(ClipqError, ValueError):
    """A dataset file is malformed. Names the file and, where known, the line (1-based)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path, self.line = path, line


class ArtifactError(ClipqError):
    """An artifact directory is incomplete or inconsistent (missing file, hash mismatch)."""


class SchemaVersionError(ArtifactError):
    """A manifest or index sidecar was written by an incompatible schema version."""


class ParityError(ClipqError):
    """An exported graph does not reproduce its PyTorch original within tolerance."""


class BackendUnavailable(ClipqError):
    """The inference backend (a server, a session) cannot be reached or is not ready."""


class AuthenticationError(ClipqError):
    """A server refused the call for its key: none was sent, or a wrong one (the message says which)."""


class InferenceError(ClipqError):
    """The backend was reached but the inference itself failed."""


class IndexCorruptError(ArtifactError):
    """An index file or its sidecar is truncated, corrupt or does not match."""


class UnknownIdError(ClipqError, KeyError):
    """An id is not in the index."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(InvalidInputError):
    """An id is already in the index (or repeated within one call)."""


class ConcurrentWriteError(ClipqError):
    """Another writer changed (or is changing) the same index or artifact: nothing was overwritten."""


class ServerError(ClipqError):
    """tritonserver could not be found, failed to start or a model failed to load."""


class StoreError(ClipqError):
    """A vector store (``--store`` URL) is malformed, refused a call, or lacks the collection named."""


class StoreUnavailableError(StoreError, BackendUnavailable):
    """A vector store server (Milvus) cannot be reached within the timeout."""


__all__ = [n for n, v in dict(globals()).items() if isinstance(v, type) and issubclass(v, Exception)]
