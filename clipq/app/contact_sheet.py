"""A contact sheet: search queries and their results drawn into one PNG (Pillow only).

What ``clipq search --contact-sheet`` and the demo write, from the typed results of
:class:`~clipq.runtime.search.ImageSearch`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import InvalidInputError
from clipq.runtime.index import SearchResult
from clipq.runtime.manifest import atomic_write_bytes


def contact_sheet(
    queries: Sequence[Any],
    results: Sequence[Sequence[SearchResult]],
    out_png: str | os.PathLike[str],
    *,
    thumb: int = 96,
    path_key: str = "path",
) -> Path:
    """Draw each query next to its results, one row per query, into a PNG.

    Args:
        queries: per row, the query: a ``str`` is drawn as text; a ``Path``, bytes, PIL image or
            uint8 array is drawn as an image.
        results: per row, the results; each result's image is read from ``metadata[path_key]``
            (a grey tile with the id stands in when it is missing).
        out_png: output file (written atomically).
        thumb: tile size in pixels.
        path_key: metadata key holding the image path.

    Returns:
        The PNG's path.

    Raises:
        InvalidInputError: queries and results differ in length, or nothing to draw.
    """
    from PIL import Image, ImageDraw, ImageFont

    if len(queries) != len(results):
        raise InvalidInputError(f"{len(queries)} queries but {len(results)} result lists")
    if not queries:
        raise InvalidInputError("no queries to draw")
    font = ImageFont.load_default()
    cols = max((len(r) for r in results), default=0)
    label_h, pad = 28, 6
    qw = 2 * thumb  # the query column is wider: text needs room
    width = pad + qw + pad + cols * (thumb + pad)
    row_h = thumb + label_h + pad
    sheet = Image.new("RGB", (max(width, qw + 2 * pad), pad + len(queries) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (query, hits) in enumerate(zip(queries, results)):
        y = pad + r * row_h
        if isinstance(query, str):
            draw.rectangle([pad, y, pad + qw, y + thumb], fill=(235, 240, 250), outline=(120, 140, 200))
            lines = _wrap(draw, query, font, qw - 10)[: max(1, thumb // 14)]
            draw.multiline_text((pad + 5, y + 5), "\n".join(lines), fill="black", font=font, spacing=3)
        else:
            tile = _tile(_open_image(query), thumb)
            sheet.paste(tile, (pad + (qw - thumb) // 2, y))
            draw.rectangle([pad, y, pad + qw, y + thumb], outline=(120, 140, 200))
        draw.text((pad, y + thumb + 3), "query", fill=(80, 80, 80), font=font)
        for c, hit in enumerate(hits):
            x = pad + qw + pad + c * (thumb + pad)
            img = _open_image(hit.metadata.get(path_key)) if hit.metadata.get(path_key) else None
            if img is None:
                draw.rectangle([x, y, x + thumb, y + thumb], fill=(200, 200, 200))
            else:
                sheet.paste(_tile(img, thumb), (x, y))
            name = hit.id if len(hit.id) <= thumb // 6 else "..." + hit.id[-(thumb // 6 - 3) :]
            draw.text((x, y + thumb + 2), f"{c + 1}. {name}", fill="black", font=font)
            draw.text((x, y + thumb + 14), f"{hit.score:.3f}", fill=(60, 60, 60), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    out = Path(out_png)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a word longer than a line gets a line of its own)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    if line:
        lines.append(line)
    return lines


def _open_image(src: Any) -> Any:
    """A PIL RGB image from a path, bytes, PIL image or array; None when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(src, Image.Image):
            return src.convert("RGB")
        if isinstance(src, np.ndarray):
            return Image.fromarray(np.asarray(src, np.uint8)).convert("RGB")
        if isinstance(src, (bytes, bytearray)):
            with Image.open(io.BytesIO(src)) as im:
                return im.convert("RGB")
        if isinstance(src, (str, os.PathLike)):
            with Image.open(src) as im:
                return im.convert("RGB")
    except (OSError, ValueError, UnidentifiedImageError, TypeError):
        return None
    return None


def _tile(img: Any, size: int) -> Any:
    """``img`` fitted into a ``size`` square (nearest-neighbour when enlarging keeps small scenes crisp)."""
    from PIL import Image, ImageOps

    if img is None:
        return Image.new("RGB", (size, size), (200, 200, 200))
    resample = Image.Resampling.NEAREST if max(img.size) < size else Image.Resampling.LANCZOS
    fitted = ImageOps.contain(img, (size, size), method=resample)
    tile = Image.new("RGB", (size, size), "white")
    tile.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return tile
