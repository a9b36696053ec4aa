"""Decoding at the size the model needs: draft against full decoding on phone-shaped photos.

The corpus is clipq.app.bench.photos's: scikit-image's photos upscaled to 4032 x 3024 JPEG with
noise, two stored sideways (EXIF orientation 6 and 8), and a CMYK JPEG, a 16-bit PNG, an RGBA PNG,
a palette GIF and an animated GIF. Bounds (measured on 12 such photos at 224 px: max 17, mean
0.50 in 8-bit units; 1 - cosine under 3e-6 on a random ViT-B/32) leave room for other Pillow and
libjpeg-turbo builds.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from _require import require_module
from PIL import Image

from clipq.runtime.errors import InvalidImageError
from clipq.runtime.preprocess import CLIP_STD, ImagePreprocessor, decode_image

STD = np.asarray(CLIP_STD, np.float32).reshape(1, 3, 1, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    require_module("skimage")
    from clipq.app.bench.photos import phone_photos

    return phone_photos(tmp_path_factory.mktemp("phones"), n=5)


def _err255(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel difference of two normalised batches, in 8-bit units."""
    return np.abs(a - b) * STD * 255


def test_draft_matches_full_decoding_on_phone_photos(photos):
    names = {p.name for p in photos}
    assert {"cmyk.jpg", "grey16.png", "rgba.png", "palette.gif", "animated.gif"} <= names
    for size in (224, 64):
        fast, full = ImagePreprocessor(size), ImagePreprocessor(size, draft=False)
        assert fast.draft and not full.draft
        a, b = fast(photos), full(photos)
        assert a.shape == b.shape == (len(photos), 3, size, size)
        err = _err255(a, b)
        assert err.max() <= 32 and err.mean() <= 1.5, (size, err.max(), err.mean())
        for p, e in zip(photos, err):
            assert e.mean() <= 2.0, p.name


def test_draft_decodes_small_and_keeps_orientation(photos):
    sideways = [p for p in photos if Image.open(p).getexif().get(0x0112) in (6, 8)]
    assert len(sideways) == 2
    for p in sideways:
        full = decode_image(p)
        small = decode_image(p, draft_short=224)
        assert Image.open(p).size == (3024, 4032) and full.size == (4032, 3024)  # stored portrait, shown landscape
        assert small.size[0] > small.size[1] and min(small.size) >= 224 and min(small.size) < 448
        # the same picture: the drafted image, scaled up, matches the full one
        up = np.asarray(small.resize(full.size, Image.Resampling.BILINEAR), np.float32)
        assert np.abs(up - np.asarray(full, np.float32)).mean() < 6
    # the first frame of an animated GIF, as without drafting
    gif = next(p for p in photos if p.name == "animated.gif")
    np.testing.assert_array_equal(np.asarray(decode_image(gif, draft_short=64)), np.asarray(decode_image(gif)))


def test_draft_keeps_embeddings(photos, tiny_artifacts):
    """Cosine of the shared test model's image embeddings, draft against full decoding."""
    from clipq.runtime import connect
    from clipq.runtime.manifest import Manifest

    m = Manifest.load(tiny_artifacts)
    backend = connect(tiny_artifacts, threads=1, variant="fp32")
    try:
        out = backend.spec("clip_image").outputs[0].name
        emb = [backend.infer("clip_image", {"pixel_values": ImagePreprocessor.from_manifest(m, draft=d)(photos)})[out]
               for d in (True, False)]
    finally:
        backend.close()
    a, b = (e / np.linalg.norm(e, axis=1, keepdims=True) for e in emb)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.999, dict(zip((p.name for p in photos), cos.round(5)))


def test_small_images_decode_exactly_as_without_draft():
    """An image under twice the target is never drafted or reduced (under three times, never reduced):
    CLIPImageProcessor's pixels."""
    arr = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    for x in (buf.getvalue(), arr):
        np.testing.assert_array_equal(ImagePreprocessor(224)([x]), ImagePreprocessor(224, draft=False)([x]))


def test_pixel_limit_applies_to_the_full_image():
    """The bomb check reads the header's size: a drafted decode would be small, the limit still holds."""
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(buf, format="JPEG")
    with pytest.raises(InvalidImageError, match="12,000,000 pixels"):
        ImagePreprocessor(224, max_pixels=10_000_000)([buf.getvalue()])
    assert ImagePreprocessor(224, max_pixels=12_000_000)([buf.getvalue()]).shape == (1, 3, 224, 224)


def test_manifest_switches_draft_off_for_client_and_server(tiny_artifacts):
    from clipq.runtime.manifest import Manifest

    m = Manifest.load(tiny_artifacts)
    assert ImagePreprocessor.from_manifest(m).draft
    m.preprocessing = {**m.preprocessing, "draft": False}
    assert not ImagePreprocessor.from_manifest(m).draft


def test_app_thumbnails_decode_at_their_size(photos):
    """The app's thumbnails of phone photos: drafted and box-reduced, the same picture as from full decoding."""
    import io

    from clipq.app.web.services import _thumbnail

    for p in photos:
        with Image.open(p) as im:
            full_size = im.size
        got = Image.open(io.BytesIO(_thumbnail(str(p), 0, 160, 100_000_000)))
        ref = decode_image(p, max_pixels=100_000_000)  # full resolution, oriented, then one Lanczos resize
        scale = 160 / max(ref.size)
        ref = ref.resize((max(1, round(ref.width * scale)), max(1, round(ref.height * scale))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        ref.save(buf, format="JPEG", quality=88)  # as the thumbnail is served
        ref = Image.open(buf)
        assert got.size == ref.size and max(got.size) == 160, (p.name, full_size)
        diff = np.abs(np.asarray(got.convert("RGB"), np.float32) - np.asarray(ref.convert("RGB"), np.float32))
        assert diff.mean() <= 3.0, (p.name, float(diff.mean()))  # measured 0.8-1.7 on these (JPEG q88 both)
