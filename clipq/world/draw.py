"""Drawing: scenes of coloured shapes and images of rendered words, 64x64 RGB.

:func:`render_scene` and :func:`render_word` draw one image from its own seeded stream
(:data:`~clipq.world.vocab._STREAM_IDS`); :func:`render_words` draws many in worker processes
(:mod:`.pool`). The generator (:mod:`.layout`) writes what these draw.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .pool import _NullBar, _ordered_map, _worker_pool
from .vocab import (
    _COLOR_NAMES,
    _STREAM_IDS,
    _WORD_QUESTIONS,
    BACKGROUND_KINDS,
    COLORS,
    KINDS,
    PLACES,
    STYLES,
    WORDS,
    Scene,
    Shape,
    _captions,
    _pick,
    _prompt,
    _questions,
)

IMAGE_SIZE = 64
_SS = 4  # supersampling factor for anti-aliased shape edges

# Each group's bounding box must lie inside its place's box (x0, y0, x1, y1) and its centre inside
# the anchor window (cx0, cy0, cx1, cy1); the boxes keep "left" visibly left of "center", etc.
_PLACE_BOX: dict[str, tuple[int, int, int, int]] = {
    "left": (1, 3, 22, 61),
    "right": (42, 3, 63, 61),
    "top": (3, 1, 61, 22),
    "bottom": (3, 42, 61, 63),
    "center": (18, 18, 46, 46),
}
_ANCHOR: dict[str, tuple[int, int, int, int]] = {
    "left": (0, 26, 15, 38),
    "right": (49, 26, 64, 38),
    "top": (26, 0, 38, 15),
    "bottom": (26, 49, 38, 64),
    "center": (29, 29, 35, 35),
}
_SIZE_RANGE = {1: (11, 16), 2: (10, 14), 3: (9, 12), 4: (9, 11)}  # shape size (px) by group count
_MIN_CONTRAST = 115.0  # minimum RGB distance between any shape colour and the background


@dataclass
class _WordItem:
    image_id: str
    word: str
    question: str


# -- scenes --------------------------------------------------------------------------------------


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, size: float,
                fill: tuple[int, int, int]) -> None:
    """Draw one shape of ``size`` px centred on (x, y), all in supersampled pixels."""
    r = size / 2
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif kind == "square":
        h = r * 0.86
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    elif kind == "star":
        pts = []
        for i in range(10):
            rad = r * 1.05 if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((x + rad * math.cos(a), y + r * 0.08 + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif kind == "cross":
        t = r * 0.34
        draw.rectangle((x - r, y - t, x + r, y + t), fill=fill)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=fill)
    elif kind == "heart":
        c = r * 0.5
        for cx in (x - r * 0.47, x + r * 0.47):
            draw.ellipse((cx - c, y - r * 0.75, cx + c, y - r * 0.75 + 2 * c), fill=fill)
        draw.polygon([(x - r * 0.96, y - r * 0.12), (x + r * 0.96, y - r * 0.12), (x, y + r * 0.95)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(x, y - r * 1.05), (x + r * 0.78, y), (x, y + r * 1.05), (x - r * 0.78, y)], fill=fill)
    elif kind == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=max(1, round(r * 0.4)))
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def _jitter_rgb(rng: np.random.Generator, color: str, amount: int = 14) -> tuple[int, int, int]:
    base = np.asarray(COLORS[color], dtype=np.int64) + rng.integers(-amount, amount + 1, size=3)
    r, g, b = (int(v) for v in np.clip(base, 0, 255))
    return r, g, b


def _background(rng: np.random.Generator, avoid: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, str]:
    """A 64x64 float background far (in RGB) from every colour in ``avoid``, and its description."""
    kind = _pick(rng, BACKGROUND_KINDS)
    avoid_arr = np.asarray(avoid, dtype=np.float64).reshape(-1, 3)

    def far_enough(c: np.ndarray, margin: float) -> bool:
        return bool(np.min(np.linalg.norm(avoid_arr - c, axis=1)) >= _MIN_CONTRAST + margin)

    def draw_colour(light: bool) -> np.ndarray:
        lum = rng.uniform(165, 230) if light else rng.uniform(25, 85)
        tint = rng.normal(0.0, 22.0, size=3)
        return np.clip(lum + tint - tint.mean(), 0, 255)

    spread = {"plain": 0.0, "gradient": 45.0, "textured": 16.0}[kind]
    margin = spread * (math.sqrt(3) if kind == "textured" else 1.0)
    light = bool(rng.random() < 0.5)
    base = None
    for attempt in range(24):
        if attempt == 12:
            light = not light
        c = draw_colour(light)
        if far_enough(c, margin):
            base = c
            break
    if base is None:  # both white and black present, or similar: a mid-grey keeps both visible
        base, spread, kind, light = np.full(3, 128.0), 0.0, "plain", bool(rng.random() < 0.5)
    n = IMAGE_SIZE
    if kind == "plain":
        img = np.broadcast_to(base, (n, n, 3)).astype(np.float64)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
        t = (np.cos(a) * xx + np.sin(a) * yy) / math.sqrt(0.5)  # in [-1, 1]
        direction = 1.0 + 0.35 * rng.normal(0.0, 1.0, size=3)
        img = base + t[..., None] * spread * direction / np.linalg.norm(direction)
    else:
        coarse = rng.uniform(-1.0, 1.0, size=(8, 8, 3)).astype(np.float32)
        smooth = np.stack(
            [np.asarray(Image.fromarray(coarse[..., k], mode="F").resize((n, n), Image.BICUBIC)) for k in range(3)],
            axis=-1,
        )
        img = base + np.clip(smooth, -1.0, 1.0) * spread
    desc = f"{'light' if light else 'dark'} {kind}"
    return np.clip(img, 0, 255), desc


def _group_offsets(count: int, place: str, step: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Shape centres relative to the group centre: a line along the region, a triangle or a 2x2 block."""
    if count == 1:
        return [(0.0, 0.0)]
    if place == "center":
        vertical = bool(rng.random() < 0.5)
        layout = "line" if count == 2 else ("triangle" if count == 3 else "grid")
    else:
        vertical = place in ("left", "right")
        layout = "line" if count == 2 else _pick(rng, ("line", "triangle" if count == 3 else "grid"))
    if layout == "line":
        offs = [((i - (count - 1) / 2) * step, 0.0) for i in range(count)]
        return [(y, x) for x, y in offs] if vertical else offs
    if layout == "triangle":
        h = step * 0.45
        offs = [(-step / 2, h), (step / 2, h), (0.0, -h)]
        if bool(rng.random() < 0.5):
            offs = [(x, -y) for x, y in offs]
        return offs
    return [(dx * step / 2, dy * step / 2) for dx in (-1, 1) for dy in (-1, 1)]


def _place_group(rng: np.random.Generator, count: int, place: str, size_range: tuple[int, int],
                 taken: Sequence[tuple[float, float, float]]) -> tuple[int, list[tuple[float, float]]] | None:
    """Sample size and centres of a group inside ``place`` clear of ``taken`` (x, y, size) shapes."""
    lo, hi = size_range
    bx0, by0, bx1, by1 = _PLACE_BOX[place]
    ax0, ay0, ax1, ay1 = _ANCHOR[place]
    for attempt in range(40):
        size = int(rng.integers(lo, hi + 1)) if attempt < 20 else lo
        step = size + float(rng.integers(2, 5))
        offs = _group_offsets(count, place, step, rng)
        xs, ys = [o[0] for o in offs], [o[1] for o in offs]
        half = size / 2
        cx_lo, cx_hi = max(bx0 + half - min(xs), ax0), min(bx1 - half - max(xs), ax1)
        cy_lo, cy_hi = max(by0 + half - min(ys), ay0), min(by1 - half - max(ys), ay1)
        if cx_lo > cx_hi or cy_lo > cy_hi:
            continue
        cx, cy = rng.uniform(cx_lo, cx_hi), rng.uniform(cy_lo, cy_hi)
        pts = [(cx + dx + rng.uniform(-0.7, 0.7), cy + dy + rng.uniform(-0.7, 0.7)) for dx, dy in offs]
        clear = all(
            max(abs(px - tx), abs(py - ty)) >= (size + ts) / 2 + 3 for px, py in pts for tx, ty, ts in taken
        )
        if clear:
            return size, pts
    return None


def _draw_scene(rng: np.random.Generator, image_id: str) -> tuple[Scene, Image.Image]:
    """Draw one scene (layout, colours, background, noise) and its labels."""
    kind = _pick(rng, KINDS)
    color = _pick(rng, _COLOR_NAMES)
    count = int(rng.integers(1, 5))
    place = _pick(rng, PLACES)
    placed = _place_group(rng, count, place, _SIZE_RANGE[count], ())
    if placed is None:  # the place boxes fit every group size; this guards edits to them
        raise RuntimeError(f"cannot fit {count} shapes at {place}: check _PLACE_BOX and _SIZE_RANGE")
    size, pts = placed
    rgb = _jitter_rgb(rng, color)
    shapes = [Shape(kind, color, rgb, x, y, size) for x, y in pts]

    distractor = None
    if count < 4 and rng.random() < 0.6:
        d_kind = _pick(rng, [k for k in KINDS if k != kind])
        d_color = _pick(rng, [c for c in _COLOR_NAMES if c != color])
        for d_place in rng.permutation([p for p in PLACES if p != place]):
            d = _place_group(rng, 1, str(d_place), (10, 15), [(s.x, s.y, s.size) for s in shapes])
            if d is not None:
                d_size, ((dx, dy),) = d
                shapes.append(Shape(d_kind, d_color, _jitter_rgb(rng, d_color), dx, dy, d_size))
                distractor = (d_kind, d_color, str(d_place))
                break

    bg, bg_desc = _background(rng, [s.rgb for s in shapes])
    big = Image.fromarray(bg.astype(np.uint8), "RGB").resize((IMAGE_SIZE * _SS,) * 2, Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for s in shapes:
        _draw_shape(draw, s.kind, s.x * _SS, s.y * _SS, s.size * _SS, s.rgb)
    img = np.asarray(big.reduce(_SS), dtype=np.float32)
    sigma = rng.uniform(2.0, 7.0)
    img = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    image = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")

    scene = Scene(image_id=image_id, kind=kind, color=color, count=count, place=place,
                  distractor=distractor, background=bg_desc, style=_pick(rng, STYLES), shapes=shapes)
    scene.captions = _captions(rng, scene)
    scene.questions = _questions(rng, scene)
    scene.prompt = _prompt(rng, scene)
    return scene, image


def render_scene(seed: int, stream: str, index: int, image_id: str | None = None) -> tuple[Scene, Image.Image]:
    """Draw scene ``index`` of ``stream`` ("train" or "test") for ``seed``, exactly as the generator does.

    Args:
        seed: world seed.
        stream: "train" (the train/val draw) or "test".
        index: position in the stream.
        image_id: id to record in the scene; defaults to ``f"{stream}_{index:06d}"``.

    Returns:
        The scene's labels and its 64x64 RGB image.
    """
    rng = np.random.default_rng([seed, _STREAM_IDS[stream], index])
    return _draw_scene(rng, image_id or f"{stream}_{index:06d}")


# -- words ---------------------------------------------------------------------------------------


_FONT_NAMES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansCondensed.ttf",
)  # fmt: skip


@functools.lru_cache(maxsize=1)
def find_fonts() -> tuple[str, ...]:
    """TrueType fonts available for the reading study, as absolute paths in a fixed order.

    Looks in ``$CLIPQ_FONT_DIR``, the system DejaVu directories and matplotlib's bundled fonts
    (located without importing matplotlib). Returns an empty tuple when none is found; callers then
    use Pillow's built-in scalable font.

    Returns:
        Paths of the DejaVu fonts found, each file name once.
    """
    import importlib.util

    dirs = [os.environ.get("CLIPQ_FONT_DIR", ""), "/usr/share/fonts/truetype/dejavu",
            "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF", "/Library/Fonts"]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        dirs.append(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"))
    found: dict[str, str] = {}
    for d in dirs:
        if not d or not Path(d).is_dir():
            continue
        for name in _FONT_NAMES:
            p = Path(d) / name
            if name not in found and p.is_file():
                found[name] = str(p)
    return tuple(found[n] for n in _FONT_NAMES if n in found)


@functools.lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def _contrasting(rng: np.random.Generator, other: np.ndarray) -> tuple[int, int, int]:
    """A colour whose luminance is far from ``other``'s."""
    lum = float(other @ np.array([0.299, 0.587, 0.114]))
    target = rng.uniform(10, 70) if lum > 128 else rng.uniform(190, 250)
    c = np.clip(target + rng.normal(0, 40, size=3), 0, 255)
    c = np.clip(c + (target - float(c @ np.array([0.299, 0.587, 0.114]))), 0, 255)
    r, g, b = (int(v) for v in np.rint(c))
    return r, g, b


def render_word(seed: int, index: int, words: Sequence[str] = WORDS) -> tuple[str, str, Image.Image]:
    """Word image ``index`` of the synthetic-word set for ``seed`` (stream ``words_synth``).

    The reading study's proposed remedy ("Can CLIP read?"): any number of extra rendered words, drawn
    as the world's word images are (fonts, case, colours, plates, noise), but never the same images
    as the world's splits.

    Returns:
        (word, question, 64x64 RGB image).
    """
    rng = np.random.default_rng([seed, _STREAM_IDS["words_synth"], index])
    item, image = _draw_word(rng, f"word_synth_{index:06d}", find_fonts(), words)
    return item.word, item.question, image


def _synth_word_job(job: tuple[int, int, tuple[str, ...], int]) -> tuple[str, str, np.ndarray]:
    seed, index, words, size = job
    word, question, image = render_word(seed, index, words)
    if image.size != (size, size):
        image = image.resize((size, size))
    return word, question, np.asarray(image.convert("RGB"))


def render_words(seed: int, n: int, words: Sequence[str] = WORDS, size: int = IMAGE_SIZE,
                 workers: int | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """Word images ``0 .. n-1`` of the synthetic-word set (:func:`render_word`), drawn in worker
    processes as the world is (one per core for a large set; identical for any number).

    Returns:
        (uint8 images [n, size, size, 3], words, questions).
    """
    pool = _worker_pool(n, workers)
    jobs = [(int(seed), i, tuple(words), int(size)) for i in range(n)]
    try:
        items = list(_ordered_map(_synth_word_job, jobs, _NullBar(), pool))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not items:
        return np.zeros((0, size, size, 3), np.uint8), [], []
    return np.stack([a for _, _, a in items]), [w for w, _, _ in items], [q for _, q, _ in items]


def _draw_word(rng: np.random.Generator, image_id: str, fonts: Sequence[str],
               words: Sequence[str] = WORDS) -> tuple[_WordItem, Image.Image]:
    """Draw one rendered-word image and its question."""
    word = _pick(rng, words)
    case = _pick(rng, ("lower", "upper", "title"))
    text = word.upper() if case == "upper" else word.title() if case == "title" else word
    font_path = _pick(rng, fonts) if fonts else ""
    n = IMAGE_SIZE

    bg_rgb = rng.uniform(0, 255, size=3)
    bg = np.broadcast_to(bg_rgb, (n, n, 3)).astype(np.float32)
    if rng.random() < 0.4:
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:n, 0:n] / (n - 1) - 0.5
        bg = bg + ((np.cos(a) * xx + np.sin(a) * yy)[..., None] * rng.normal(0, 40, size=3)).astype(np.float32)
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    size = int(rng.integers(13, 29))
    font = _font(font_path, size)
    while size > 8:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= n - 8 and bottom - top <= n - 8:
            break
        size -= 1
        font = _font(font_path, size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    x = int(rng.integers(4, max(5, n - 4 - w + 1))) - left
    y = int(rng.integers(4, max(5, n - 4 - h + 1))) - top

    plate = bg_rgb
    if rng.random() < 0.5:
        plate = rng.uniform(0, 255, size=3)
        pad = int(rng.integers(2, 5))
        box = (x + left - pad, y + top - pad, x + right + pad, y + bottom + pad)
        draw.rectangle(box, fill=tuple(int(v) for v in plate))
    draw.text((x, y), text, font=font, fill=_contrasting(rng, np.asarray(plate, dtype=np.float64)))

    arr = np.asarray(image, dtype=np.float32) + rng.normal(0.0, rng.uniform(1.0, 5.0), size=(n, n, 3))
    image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return _WordItem(image_id=image_id, word=word, question=_pick(rng, _WORD_QUESTIONS)), image
