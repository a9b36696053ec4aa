"""Errors as OpenAI's JSON shape, ``{"error": {"message", "type", "param", "code"}}``, never a traceback.

Every clipq error maps to a status through :data:`STATUS` (looked up along the exception's MRO, so a
subclass inherits its parent's row); anything else is a 500 whose message says only that the
server log has the details.
"""

from __future__ import annotations

import logging
from typing import Any

from clipq.runtime import errors as rt

log = logging.getLogger("clipq.app")

#: clipq error class -> (HTTP status, OpenAI-style ``code``)
STATUS: dict[type[BaseException], tuple[int, str]] = {
    rt.InvalidTextError: (400, "invalid_text"),
    rt.InvalidImageError: (400, "invalid_image"),
    rt.DimensionMismatchError: (400, "dimension_mismatch"),
    rt.InvalidInputError: (400, "invalid_input"),
    rt.UnknownIdError: (404, "unknown_id"),
    rt.MissingDependencyError: (501, "missing_dependency"),
    rt.InferenceError: (502, "inference_failed"),
    rt.AuthenticationError: (502, "backend_auth_failed"),  # the app's server key, not the caller's
    rt.BackendUnavailable: (503, "backend_unavailable"),
    rt.ArtifactError: (500, "artifacts"),
    rt.ClipqError: (500, "clipq_error"),
}

#: status -> OpenAI's error ``type``
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "rate_limit_error", 404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          501: "not_implemented", 502: "server_error", 503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    """An error the API answers with: a status and OpenAI's four fields.

    Args:
        status: HTTP status.
        message: What was wrong, for a person.
        param: The request field at fault (``input[3]``, ``model``), if any.
        code: A short machine-readable code (``too_many_inputs``).
        headers: Extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def from_clipq(e: BaseException, *, param: str | None = None) -> ApiError:
    """The :class:`ApiError` for a clipq error.

    Args:
        e: The error the runtime raised.
        param: The request field it concerns; an input error that names its index in the batch
            becomes ``param[index]`` (``input[2]``).
    """
    status, code = next((STATUS[c] for c in type(e).__mro__ if c in STATUS), (500, "internal_error"))
    index = getattr(e, "index", None)
    if param is not None and index is not None:
        param = f"{param}[{index}]"
    message = str(e)
    if isinstance(e, rt.InvalidInputError) and getattr(e, "reason", None):
        # the runtime's "[item 3, 'source'] reason" prefix restates param; the source may be kilobytes
        # of base64, so the reason alone is the message
        message = e.reason if param else message
    if status >= 500 and status not in (501, 502, 503):
        log.error("request failed: %s: %s", type(e).__name__, e)
    return ApiError(status, message, param=param, code=code)


def internal(e: BaseException) -> ApiError:
    """A 500 for an error nobody planned for: logged with its traceback, answered without it."""
    log.error("unhandled error in a request", exc_info=e)
    return ApiError(500, f"internal error ({type(e).__name__}); the server log has the details",
                    code="internal_error")
