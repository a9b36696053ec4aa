"""The encodings ``/v1/embeddings`` answers in: OpenAI's ``float`` and ``base64``, infinity's integer ones.

=========== ======================================================== ===========================
format      one embedding in the JSON answer                         decode
=========== ======================================================== ===========================
float       ``dim`` JSON numbers                                     as is
base64      base64 of ``dim`` little-endian float32 (OpenAI's)       ``np.frombuffer(b64, "<f4")``
int8        ``dim`` integers in [-128, 127] (calibrated ranges)      :meth:`Int8Codec.decode`
uint8       ``dim`` integers in [0, 255] (the same ranges)           :meth:`Int8Codec.decode`
binary      ``ceil(dim / 8)`` integers in [-128, 127]: sign bits      :func:`unpack_binary`
            packed 8 a byte, first dimension in the high bit, -128
ubinary     the same bytes as integers in [0, 255]                   :func:`unpack_binary`
=========== ======================================================== ===========================

The integer layouts are sentence-transformers' ``quantize_embeddings``, which infinity serves.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .quant import BINARY_FORMATS, INT8_FORMATS, Int8Codec, pack_binary

__all__ = ["ENCODING_FORMATS", "encode_rows", "quantize"]

#: every ``encoding_format`` ``/v1/embeddings`` accepts
ENCODING_FORMATS = ("float", "base64", *INT8_FORMATS, *BINARY_FORMATS)


def quantize(vectors: np.ndarray, encoding_format: str, codec: Int8Codec | None = None) -> np.ndarray:
    """``vectors`` (float [N, dim]) as the array ``encoding_format`` names: float32, int8 or uint8.

    ``float`` and ``base64`` give float32 (base64 is only a transport); ``int8`` / ``uint8`` need the
    collection's ``codec``; ``binary`` / ``ubinary`` give ``ceil(dim / 8)`` bytes a row.

    Raises:
        InvalidInputError: an unknown format, or ``int8`` / ``uint8`` without a codec.
    """
    x = np.asarray(vectors, np.float32)
    if encoding_format in ("float", "base64"):
        return x
    if encoding_format in INT8_FORMATS:
        if codec is None:
            raise InvalidInputError(f"{encoding_format} needs ranges calibrated on a collection (an Int8Codec)")
        return codec.encode(x, unsigned=encoding_format == "uint8")
    if encoding_format in BINARY_FORMATS:
        return pack_binary(x, unsigned=encoding_format == "ubinary")
    raise InvalidInputError(f"encoding_format must be one of {', '.join(ENCODING_FORMATS)}, not {encoding_format!r}")


def encode_rows(vectors: np.ndarray, encoding_format: str, codec: Int8Codec | None = None) -> list[Any]:
    """One JSON value per row of ``vectors`` (float [N, dim]) in ``encoding_format`` (see :func:`quantize`).

    Raises:
        InvalidInputError: an unknown format, or ``int8`` / ``uint8`` without a codec.
    """
    arr = quantize(vectors, encoding_format, codec)
    if encoding_format == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in arr]
    return arr.tolist()
