"""Image preprocessing without torch: parity with CLIPImageProcessor on real photos, and bad input.

Tolerance: the runtime folds rescale and normalise into one float32 affine map, transformers
rescales in float64 then normalises in float32, so values may differ by float rounding only;
the test allows 1e-5 (observed: under 5e-7) on inputs whose range is about [-1.8, 2.1]. Exact
parity is with ``draft=False`` (full-resolution decoding); decoding at the size the model needs is
checked against it in test_draft.py.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from _require import require_module
from PIL import Image

from clipq.runtime.errors import DTypeError, InvalidImageError, ShapeError
from clipq.runtime.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor, decode_image

TOL = 1e-5


def _skimage_dir() -> Path:
    skimage = require_module("skimage")
    return Path(os.path.dirname(skimage.__file__)) / "data"


# colour, greyscale, RGBA, palette, JPEG, different sizes and aspect ratios (portrait and landscape)
PHOTOS = ["astronaut.png", "camera.png", "horse.png", "chelsea.png", "hubble_deep_field.jpg", "coins.png",
          "page.png", "logo.png", "microaneurysms.png", "no_time_for_that_tiny.gif", "rocket.jpg"]


@pytest.mark.parametrize("size", [224, 64])
def test_matches_clip_image_processor_on_real_photos(size):
    transformers = require_module("transformers")
    from transformers.image_utils import load_image

    proc = transformers.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pre = ImagePreprocessor(size, proc.image_mean, proc.image_std, draft=False)
    d = _skimage_dir()
    modes = set()
    for name in PHOTOS:
        path = d / name
        modes.add(Image.open(path).mode)
        want = proc(images=load_image(str(path)), return_tensors="np")["pixel_values"]
        got = pre([path])
        assert got.shape == want.shape == (1, 3, size, size) and got.dtype == np.float32
        assert np.abs(got - want).max() <= TOL, name
    assert {"RGB", "L", "RGBA", "P"} <= modes


def test_tiny_images_are_accepted_as_clip_image_processor_does():
    """A 1x1 PNG (and 1xN, Nx1) is a valid image: upsampled, as transformers does, not refused."""
    transformers = require_module("transformers")

    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pre = ImagePreprocessor(32, proc.image_mean, proc.image_std)
    rng = np.random.default_rng(0)
    for shape in ((1, 1, 3), (1, 7, 3), (5, 1, 3), (2, 3, 3)):
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        got = pre([buf.getvalue()])
        want = proc(images=Image.fromarray(arr), return_tensors="np", input_data_format="channels_last")["pixel_values"]
        assert got.shape == want.shape == (1, 3, 32, 32), shape
        assert np.abs(got - want).max() <= TOL, shape


def test_batch_and_input_forms_agree(tmp_path):
    pre = ImagePreprocessor(32)
    arr = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(arr).save(p)
    forms = [p, str(p), p.read_bytes(), bytearray(p.read_bytes()), Image.fromarray(arr), arr]
    out = pre(forms)
    assert out.shape == (len(forms), 3, 32, 32)
    assert np.abs(out - out[0]).max() == 0
    assert pre(np.stack([arr, arr])).shape == (2, 3, 32, 32)  # a uint8 [N, H, W, C] batch
    assert pre(p).shape == (1, 3, 32, 32)  # a single image


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    decoded = decode_image(p)
    assert decoded.size == (40, 80)  # displayed upright: portrait
    top = np.asarray(decoded)[:20].mean((0, 1))
    assert top[0] > 200 and top[2] < 60  # the red half is on top after rotating clockwise


def test_greyscale_cmyk_16bit_and_float_inputs(tmp_path):
    pre = ImagePreprocessor(16)
    g = np.random.default_rng(1).integers(0, 256, (20, 24), dtype=np.uint8)
    rgb = np.repeat(g[..., None], 3, axis=2)
    assert np.abs(pre([g])[0] - pre([rgb])[0]).max() == 0  # greyscale -> equal channels
    assert np.abs(pre([g[..., None]])[0] - pre([rgb])[0]).max() == 0
    # CMYK JPEG decodes to RGB
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    assert decode_image(buf.getvalue()).mode == "RGB"
    # 16-bit PNG: scaled to 8 bits, not clipped to white as PIL's convert("RGB") would
    g16 = g.astype(np.uint16) * 257
    p16 = tmp_path / "g16.png"
    Image.fromarray(g16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(decode_image(p16))[..., 0], g)
    np.testing.assert_array_equal(np.asarray(decode_image(g16))[..., 0], g)  # uint16 arrays too
    # float ("F") images in [0, 1]
    f = Image.fromarray(g.astype(np.float32) / 255.0, mode="F")
    assert np.abs(np.asarray(decode_image(f)).astype(int)[..., 0] - g).max() <= 1


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb) with no real pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bad_images_raise_typed_errors_naming_the_input(tmp_path):
    pre = ImagePreprocessor(16, CLIP_MEAN, CLIP_STD)
    good = np.zeros((20, 20, 3), np.uint8)
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(png, format="PNG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "trunc.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (tmp_path / "notes.txt").write_text("this is not an image\n")
    cases = [
        (tmp_path / "empty.jpg", InvalidImageError, "empty"),
        (tmp_path / "trunc.png", InvalidImageError, "truncated"),
        (tmp_path / "notes.txt", InvalidImageError, "not an image"),
        (tmp_path / "missing.png", InvalidImageError, "no such"),
        (b"", InvalidImageError, "empty"),
        (b"\x89PNG garbage", InvalidImageError, "not an image"),
        (_png_header_only(30000, 30000), InvalidImageError, "decompression bomb"),
        (_png_header_only(9000, 9000), InvalidImageError, "over the limit"),
        (np.zeros((20, 20, 3), np.float32), DTypeError, "uint8"),
        (np.zeros((20, 20, 2), np.uint8), ShapeError, "HxWx3"),
        (np.zeros((2, 20, 20, 3, 1), np.uint8), ShapeError, "HxW"),
        (12345, InvalidImageError, "unsupported image input type"),
    ]
    for bad, err, msg in cases:
        with pytest.raises(err, match=msg) as ei:
            pre([good, good, bad])
        assert ei.value.index == 2, bad if not isinstance(bad, bytes) else bad[:20]
        assert "item 2" in str(ei.value)
    with pytest.raises(InvalidImageError) as ei:
        pre([tmp_path / "notes.txt"])
    assert "notes.txt" in str(ei.value)  # the path is named


def test_pixel_limit_is_user_settable():
    big = np.zeros((600, 600, 3), np.uint8)
    assert ImagePreprocessor(16)([big]).shape == (1, 3, 16, 16)
    with pytest.raises(InvalidImageError, match="360,000 pixels"):
        ImagePreprocessor(16, max_pixels=100_000)([big])
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        decode_image(_png_header_only(4000, 4000), max_pixels=1_000_000)
