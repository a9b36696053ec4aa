"""Checks of what requests carry: texts, images (base64 data URIs, bare base64, uploads), integers.

Each failure is an :class:`~.errors.ApiError` naming the field (``input[3]``) and the limit, raised
before any work reaches the thread pool. Images are checked from their header (format, width x
height) without decoding the pixels, so an image bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

from .errors import ApiError
from .settings import AppSettings

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.I)
_WS = re.compile(r"\s+")


def _items(value: Any, param: str, limit: int, what: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ApiError(400, f"'{param}' must be a string or a list of strings, not {type(value).__name__}",
                       param=param, code="invalid_type")
    if not value:
        raise ApiError(400, f"'{param}' is an empty list: give at least one {what}", param=param, code="empty_input")
    if len(value) > limit:
        raise ApiError(400, f"too many inputs: {len(value)} {what}s in one request, the limit is {limit}",
                       param=param, code="too_many_inputs")
    return value


def check_text(t: Any, settings: AppSettings, param: str) -> str:
    """One text: a non-empty string of at most ``max_text_chars`` characters."""
    if not isinstance(t, str):
        extra = " (token arrays are not supported: send text)" if isinstance(t, (int, list)) else ""
        raise ApiError(400, f"'{param}' must be a string, not {type(t).__name__}{extra}", param=param,
                       code="invalid_type")
    if not t.strip():
        raise ApiError(400, f"'{param}' is empty", param=param, code="empty_text")
    if len(t) > settings.max_text_chars:
        raise ApiError(400, f"'{param}' is too long: {len(t)} characters, the limit is {settings.max_text_chars}",
                       param=param, code="text_too_long")
    return t


def texts(value: Any, settings: AppSettings, param: str = "input") -> list[str]:
    """``input`` of a text model: one string or a list of them."""
    items = _items(value, param, settings.max_inputs, "text")
    single = isinstance(value, str)
    return [check_text(t, settings, param if single else f"{param}[{i}]") for i, t in enumerate(items)]


def images(value: Any, settings: AppSettings, param: str = "input") -> list[bytes]:
    """``input`` of the image model: base64 data URIs (or bare base64), one or a list."""
    items = _items(value, param, settings.max_images, "image")
    single = isinstance(value, str)
    return [decode_image(s, settings, param if single else f"{param}[{i}]") for i, s in enumerate(items)]


def decode_image(s: Any, settings: AppSettings, param: str) -> bytes:
    """Bytes of one image sent as a base64 data URI (``data:image/png;base64,...``) or bare base64.

    Raises:
        ApiError: not a string; a URL (the app fetches nothing); a data URI that is not base64 or
            not an image type; bad base64; over the byte or pixel limit; not a decodable image.
    """
    if not isinstance(s, str):
        raise ApiError(400, f"'{param}' must be a base64 string (a data URI), not {type(s).__name__}",
                       param=param, code="invalid_type")
    head = s[:256].lstrip()
    if head[:8].lower().startswith(("http://", "https://", "file:/")):
        raise ApiError(400, f"'{param}' is a URL: the app fetches no URLs; send the image as a base64 data "
                       "URI (data:image/png;base64,...)", param=param, code="image_url_not_supported")
    payload = s.strip()
    if head[:5].lower() == "data:":
        m = _DATA_URI.match(head)
        if not m:
            raise ApiError(400, f"'{param}' is not a valid data URI (expected data:image/<type>;base64,<data>)",
                           param=param, code="invalid_data_uri")
        mime = (m.group("mime") or "").lower()
        if mime and not mime.startswith("image/"):
            raise ApiError(400, f"'{param}' has media type {mime!r}; an image/* type is needed", param=param,
                           code="unsupported_media_type")
        if not m.group("b64"):
            raise ApiError(400, f"'{param}' is a data URI without ';base64': only base64 data is accepted",
                           param=param, code="invalid_data_uri")
        payload = s.lstrip()[m.end():]
    payload = _WS.sub("", payload)
    if not payload:
        raise ApiError(400, f"'{param}' holds no image data", param=param, code="empty_image")
    if len(payload) * 3 // 4 > settings.max_image_bytes:
        raise ApiError(413, f"'{param}' is too large: about {len(payload) * 3 // 4} bytes, the limit is "
                       f"{settings.max_image_bytes}", param=param, code="image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, f"'{param}' is not valid base64 ({e})", param=param, code="invalid_base64") from None
    return check_image_bytes(data, settings, param)


def check_image_bytes(data: bytes, settings: AppSettings, param: str) -> bytes:
    """``data`` if it is an image within the byte and pixel limits (read from its header only)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, f"'{param}' is empty (0 bytes)", param=param, code="empty_image")
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, f"'{param}' is too large: {len(data)} bytes, the limit is {settings.max_image_bytes}",
                       param=param, code="image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            fmt = im.format
    except Image.DecompressionBombError:
        raise ApiError(413, f"'{param}' has too many pixels (refused as a decompression bomb); the limit is "
                       f"{settings.max_image_pixels}", param=param, code="too_many_pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(400, f"'{param}' is not an image (or an unsupported format)", param=param,
                       code="invalid_image") from None
    if w * h > settings.max_image_pixels:
        raise ApiError(413, f"'{param}' is {w} x {h} = {w * h} pixels ({fmt}); the limit is "
                       f"{settings.max_image_pixels}", param=param, code="too_many_pixels")
    return data


def integer(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (a form field's "10" counts; a bool or 2.5 does not)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, not {value!r}", param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must lie in [{lo}, {hi}], got {value}", param=name, code="out_of_range")
    return value


def alpha(value: float | None) -> float | None:
    """The ensemble weight of Model A a request names, checked by the runtime's one alpha check."""
    if value is None:
        return None
    from clipq.runtime.errors import InvalidInputError
    from clipq.runtime.fusion import check_alpha

    try:
        return float(check_alpha(value))
    except InvalidInputError as e:
        raise ApiError(400, str(e), param="alpha", code="out_of_range") from None


def one_source(image: str | None, item_id: str | None, upload: bytes | None, *, text: str | None = None,
               allow_text: bool = False) -> str:
    """Which query source a request names; exactly one of text, image, id or an uploaded file."""
    given = [n for n, v in (("text", text), ("image", image), ("id", item_id), ("file", upload)) if v is not None]
    wanted = "'text', 'image' or 'id'" if allow_text else "'image' or 'id'"
    if len(given) != 1:
        what = "none" if not given else " and ".join(given)
        raise ApiError(400, f"give exactly one of {wanted} (got {what})", param=given[0] if given else None,
                       code="invalid_query")
    return given[0]
