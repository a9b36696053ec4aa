"""``/v1/embeddings`` with ``dimensions`` and the compact encodings, on the real app (uvicorn on loopback).

Real artifacts (the shared ``tiny_artifacts``), a real index of generated images projected by
``clipq index project``'s code, the official ``openai`` SDK for float and base64 (its default), and
httpx for infinity's integer encodings: every answer must decode to what the in-process encoder and
the index's own projection and int8 ranges give, and every misuse must be a 400 naming the field.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from _require import require_module

require_module("fastapi")
httpx = require_module("httpx")

pytestmark = pytest.mark.timeout(300)

TEXTS = ["two red circles", "a blue square at the top", "a green triangle"]


def _png(rgb: tuple[int, int, int], shape: str, size: int = 48) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    box = (size // 6, size // 5, size * 4 // 5, size * 5 // 6)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=rgb)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def encoder(tiny_artifacts):
    import clipq.runtime as rt

    backend = rt.connect(tiny_artifacts)
    yield rt.ClipEncoder(backend)
    backend.close()


@pytest.fixture(scope="module")
def indexes(encoder, tmp_path_factory):
    """(plain index dir, projected index dir, the projection's dimension)."""
    from clipq.runtime.compact import project_index
    from clipq.runtime.index import ImageIndex

    root = tmp_path_factory.mktemp("compact_api")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
        (folder / f"img_{i:02d}.png").write_bytes(_png(rgb, ("circle", "square")[i % 2]))
    ImageIndex.from_images(folder, encoder, progress=False).save(root / "plain")
    dims = min(encoder.dim // 2, 16)
    project_index(root / "plain", root / "short", dims)
    return root / "plain", root / "short", dims


def _serve(tiny_artifacts, index):
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings

    svc = open_services(AppSettings(timeout_s=60.0), artifacts=str(tiny_artifacts), index=str(index) if index else None)
    return serve_in_thread(create_app(svc))


@pytest.fixture(scope="module")
def short_url(tiny_artifacts, indexes):
    with _serve(tiny_artifacts, indexes[1]) as url:
        yield url


@pytest.fixture(scope="module")
def bare_url(tiny_artifacts):
    with _serve(tiny_artifacts, None) as url:
        yield url


def _post(url: str, **body):
    return httpx.post(url + "/v1/embeddings", json={"model": "clip-text", "input": TEXTS, **body}, timeout=60)


def _rows(r, dtype) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype)


def _error(r, param: str, *words: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_value", err
    for w in words:
        assert w.lower() in err["message"].lower(), err


def test_openai_sdk_gets_the_projected_dimensions(short_url, encoder, indexes) -> None:
    openai = require_module("openai")
    from clipq.runtime.compact import Projection

    _, short, dims = indexes
    proj = Projection.load(short / "projection.npz")
    want = proj.apply(encoder.encode_texts(TEXTS))
    client = openai.OpenAI(api_key="none", base_url=short_url + "/v1", max_retries=0, timeout=60)
    for fmt in ("float", "base64", None):  # None: the SDK's default, base64 decoded by the SDK
        kw = {} if fmt is None else {"encoding_format": fmt}
        got = client.embeddings.create(model="clip-text", input=TEXTS, dimensions=dims, **kw)
        if fmt == "base64":  # asked for explicitly, the SDK hands the strings over as they came
            vecs = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in got.data])
        else:
            vecs = np.array([d.embedding for d in got.data], np.float32)
        assert vecs.shape == (3, dims)
        np.testing.assert_allclose(vecs, want, atol=2e-5)
    full = client.embeddings.create(model="clip-text", input=TEXTS)  # no dimensions: the model's own
    np.testing.assert_allclose(np.array([d.embedding for d in full.data]), encoder.encode_texts(TEXTS), atol=2e-5)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="clip-text", input=TEXTS, dimensions=dims + 1)
    assert err.value.code == "invalid_value" and "clipq index project" in str(err.value)


def test_integer_encodings_decode_to_the_embeddings(short_url, encoder, indexes) -> None:
    from clipq.runtime.compact import Projection, collection_codec, unpack_binary
    from clipq.runtime.index import ImageIndex

    _, short, dims = indexes
    want = Projection.load(short / "projection.npz").apply(encoder.encode_texts(TEXTS))
    codec = collection_codec(ImageIndex.load(short))  # the same ranges: fitted on the same index's vectors
    i8 = _rows(_post(short_url, dimensions=dims, encoding_format="int8"), np.int8)
    u8 = _rows(_post(short_url, dimensions=dims, encoding_format="uint8"), np.uint8)
    assert i8.shape == u8.shape == (3, dims)
    np.testing.assert_array_equal(i8.astype(np.int16) + 128, u8)
    assert np.abs(i8.astype(np.int16) - codec.encode(want)).max() <= 1  # a float's last bit may cross a step
    inside = (want >= codec.lo) & (want <= codec.hi)
    assert np.abs(codec.decode(i8) - want)[inside].max() <= float(codec.step.max()) * 1.5
    for fmt, dtype in (("binary", np.int8), ("ubinary", np.uint8)):
        packed = _rows(_post(short_url, dimensions=dims, encoding_format=fmt), dtype)
        assert packed.shape == (3, -(-dims // 8))
        signs = unpack_binary(packed, dims)
        sure = np.abs(want) > 1e-4  # a value at zero may fall either side between two processes
        np.testing.assert_array_equal(signs[sure], np.where(want > 0, 1.0, -1.0)[sure])
    img = httpx.post(short_url + "/v1/embeddings", timeout=60, json={
        "model": "clip-image", "dimensions": dims, "encoding_format": "ubinary",
        "input": ["data:image/png;base64," + base64.b64encode(_png((200, 30, 30), "circle")).decode()]})
    assert _rows(img, np.uint8).shape == (1, -(-dims // 8))


def test_dimensions_and_encoding_errors_say_what_is_needed(short_url, bare_url, encoder, indexes) -> None:
    dims = indexes[2]
    _error(_post(short_url, dimensions=encoder.dim + 1), "dimensions", f"between 1 and {encoder.dim}")
    _error(_post(short_url, dimensions=0), "dimensions", "between 1")
    _error(_post(short_url, dimensions=dims - 1), "dimensions", f"{dims}-d projection", "clipq index project")
    _error(_post(bare_url, dimensions=dims), "dimensions", "this server has none", "--dimensions")
    _error(_post(short_url, encoding_format="int4"), "encoding_format", "int8", "ubinary")
    # int8 needs ranges of the answer's dimension: the projected index has none for the full model
    _error(_post(short_url, encoding_format="int8"), "encoding_format", f"{encoder.dim}-d", f"{dims}-d")
    _error(_post(bare_url, encoding_format="uint8"), "encoding_format", "no image index", "--index")
    # what needs no collection works everywhere
    assert _rows(_post(bare_url, encoding_format="ubinary"), np.uint8).shape == (3, -(-encoder.dim // 8))
    assert _rows(_post(bare_url, dimensions=encoder.dim), np.float32).shape == (3, encoder.dim)


def test_the_plain_index_serves_int8_at_the_models_dimension(tiny_artifacts, indexes, encoder) -> None:
    from clipq.runtime.compact import collection_codec
    from clipq.runtime.index import ImageIndex

    with _serve(tiny_artifacts, indexes[0]) as url:
        got = _rows(_post(url, encoding_format="int8"), np.int8)
    want = collection_codec(ImageIndex.load(indexes[0])).encode(encoder.encode_texts(TEXTS))
    assert got.shape == (3, encoder.dim) and np.abs(got.astype(np.int16) - want).max() <= 1
