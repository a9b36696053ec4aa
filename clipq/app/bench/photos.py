"""A folder of phone-shaped photos built from scikit-image's sample photos (no download).

Users index folders of phone photos, not the demo's 64 px PNGs: 4032 x 3024 JPEGs at quality 92
with sensor noise, some stored sideways with an EXIF orientation, and the odd image in another
form. :func:`phone_photos` writes such a folder from the real photos that ship inside
scikit-image (upscaled, so the content is a photo's and the size a phone's), plus one of each
other form the runtime must keep reading: a CMYK JPEG, a 16-bit greyscale PNG, an RGBA PNG, a
palette GIF and an animated GIF.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

#: colour photos bundled with scikit-image (files under ``skimage/data``)
SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
           "motorcycle_left.png", "retina.jpg", "ihc.png", "color.png")
PHONE = (4032, 3024)
#: EXIF orientation 6 and 8: stored landscape, shown portrait (rotated 90 degrees either way)
ORIENTATIONS = (1, 1, 6, 1, 8, 1)


def skimage_dir() -> Path:
    """Where scikit-image keeps its sample photos.

    Raises:
        ImportError: scikit-image is not installed (``pip install clipq[bench]``).
    """
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def phone_photo(source: str, seed: int, size: tuple[int, int] = PHONE) -> Image.Image:
    """One sample photo cropped to the aspect of ``size``, upscaled to it, with sensor noise (RGB)."""
    img = Image.open(skimage_dir() / source).convert("RGB")
    w, h = img.size
    aspect = size[0] / size[1]
    cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    left, top = (w - cw) // 2, (h - ch) // 2
    img = img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    a = np.asarray(img, dtype=np.int16)
    noise = rng.normal(0.0, 4.0, (size[1] // 4, size[0] // 4, 3)).astype(np.int16)
    a = a + np.repeat(np.repeat(noise, 4, 0), 4, 1)  # coarse grain, cheap to draw at 12 MP
    a += rng.integers(-3, 4, a.shape, dtype=np.int16)  # and per-pixel noise
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def phone_photos(folder: str | os.PathLike[str], n: int = 24, *, size: tuple[int, int] = PHONE,
                 others: bool = True, seed: int = 0) -> list[Path]:
    """Write ``n`` phone-shaped JPEGs (and, with ``others``, one image of each other form) into ``folder``.

    Args:
        folder: Created if missing; existing files of the same names are overwritten.
        n: Photos: ``SOURCES`` in turn, each with its own noise; one in three stored sideways
            (EXIF orientation 6 or 8, pixels rotated so the photo shows upright).
        size: Width x height of a photo as shown (landscape).
        others: Add a CMYK JPEG, a 16-bit greyscale PNG, an RGBA PNG, a palette GIF and a
            two-frame animated GIF, each smaller (1920 x 1080).
        seed: Noise seed.

    Returns:
        The files written, sorted.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = phone_photo(SOURCES[i % len(SOURCES)], seed + i, size)
        orientation = ORIENTATIONS[i % len(ORIENTATIONS)]
        exif = Image.Exif()
        if orientation != 1:
            # stored so that applying the orientation shows the photo as drawn
            img = img.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
            exif[0x0112] = orientation
        path = root / f"photo_{i:03d}.jpg"
        img.save(path, quality=92, exif=exif)
        out.append(path)
    if others:
        small = phone_photo(SOURCES[0], seed + n, (1920, 1080))
        small.convert("CMYK").save(root / "cmyk.jpg", quality=92)
        grey16 = (np.asarray(small.convert("L"), dtype=np.uint16) * 257)
        Image.fromarray(grey16).save(root / "grey16.png")
        rgba = small.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(small.size))
        rgba.save(root / "rgba.png")
        small.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.gif")
        frames = [small.convert("P", palette=Image.Palette.ADAPTIVE),
                  small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P", palette=Image.Palette.ADAPTIVE)]
        frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        out += [root / f for f in ("cmyk.jpg", "grey16.png", "rgba.png", "palette.gif", "animated.gif")]
    return sorted(out)
