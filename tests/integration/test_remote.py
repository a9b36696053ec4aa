"""The thin remote client, its async path and the deploy bundle, against a real tritonserver.

One server (module scope) serves the repository rendered from the deploy bundle of the tiny
artifacts (``Manifest.bundle``: no PyTorch checkpoints). The same ask, search and describe run in
process on the bundle, through the server with the bundle's manifest, and through a thin client
that has nothing but the URL; results agree within cosine 1e-5 and errors keep their type and the
item's index. At the end: the remote client's tests that need no server. Where no tritonserver or no
shared libpython can be found the server tests are skipped, or fail under ``make test`` (tests/_require.py).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
from _require import require_module, require_triton

from clipq.runtime.errors import (
    ArtifactError,
    BackendUnavailable,
    ClipqError,
    DTypeError,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    ShapeError,
)
from clipq.runtime.manifest import Manifest

pytestmark = [pytest.mark.timeout(300)]
require_module("tritonclient.grpc")
require_module("tritonclient.http")
triton = pytest.mark.triton
ATOL = 1e-5
MIN_COS = 1 - 1e-5
TEXTS = ["a red circle on the left", "two blue squares " * 30, "green"]  # the second is cut at max_length


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts) -> Path:
    return Path(tiny_artifacts)


@pytest.fixture(scope="module")
def bundle(artifacts, tmp_path_factory) -> Path:
    """The deploy bundle of the tiny artifacts: nothing deleted by hand, the checkpoints left out by design."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    Manifest.load(artifacts).bundle(out)
    return out


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    require_triton()
    # fp32, so that remote results can be compared with in-process fp32 at 1e-5
    repo = render_repository(bundle, tmp_path_factory.mktemp("repo") / "r", RenderOptions(variant="fp32"))
    with TritonServer(repo.path) as srv:
        yield srv


@pytest.fixture(scope="module")
def images(small_world) -> list[Path]:
    return sorted((Path(small_world) / "images" / "test").glob("*.png"))[:6]


@pytest.fixture(scope="module")
def local(bundle):
    from clipq.runtime import connect

    b = connect(bundle, variant="fp32")
    yield b
    b.close()


@pytest.fixture(scope="module")
def thin(server, tmp_path_factory):
    """A client with nothing but the URL (and a default artifact directory that does not exist)."""
    from clipq.runtime import connect

    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPQ_ARTIFACTS", str(tmp_path_factory.mktemp("none") / "missing"))
    b = connect(server=server.grpc_url)
    yield b
    b.close()
    mp.undo()


def _close(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, min row cosine) of two row-normalised batches; asserts both bounds."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    cos = float((a * b).sum(1).min()) if a.size else 1.0
    assert diff <= ATOL and cos >= MIN_COS, (diff, cos)
    return diff, cos


# -- the deploy bundle, in process and through the server ------------------------------------------
def test_the_bundle_has_no_checkpoints_but_everything_the_runtime_and_server_read(artifacts, bundle):
    full, b = Manifest.load(artifacts), Manifest.load(bundle)
    assert full.checkpoints and (artifacts / "checkpoints").is_dir()  # there was something to leave out
    assert not (bundle / "checkpoints").exists() and not b.checkpoints
    assert not any(k.startswith("checkpoints/") for k in b.files)
    assert set(b.files) == set(full.files_for("deploy")) and any(k.startswith("knn/") for k in b.files)
    b.verify_all()


@triton
def test_ask_search_describe_from_the_bundle_in_process_and_through_the_server(bundle, server, images, local):
    """The same three tasks in process on the bundle, through the server, and through a thin client."""
    from clipq.runtime import connect
    from clipq.runtime.img2prompt import ImageToPrompt
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch
    from clipq.runtime.tasks import ClipEncoder, VqaModel

    ids = [p.stem for p in images]
    runs = {"in-process": local, "server": connect(bundle, server=server.grpc_url),
            "thin": connect(server=server.http_url)}
    got = {}
    for name, backend in runs.items():
        enc = ClipEncoder(backend)
        assert enc.remote == (name != "in-process")
        answers = VqaModel(backend, encoder=enc).ask(images, "what color is the shape ?")
        index = ImageIndex.from_images(images, enc, ids=ids, progress=False)
        hits = ImageSearch(index, enc).search("a red circle on the left", k=3)
        got[name] = (answers, hits, ImageToPrompt(enc.backend).describe(images[:3], n=2), index)
    want_answers, want_hits, want_desc, want_index = got["in-process"]
    for name in ("server", "thin"):
        answers, hits, desc, index = got[name]
        assert [a.answer for a in answers] == [a.answer for a in want_answers], name
        np.testing.assert_allclose([a.prob for a in answers], [a.prob for a in want_answers], atol=ATOL)
        assert [h.id for h in hits] == [h.id for h in want_hits], name
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in want_hits], atol=ATOL)
        _close(index.get_vectors(ids), want_index.get_vectors(ids))
        _close(np.stack([d.embedding for d in desc]), np.stack([d.embedding for d in want_desc]))
        assert [d.closest[0][0] for d in desc] == [d.closest[0][0] for d in want_desc], name
        assert [[t for t, _ in d.neighbours] for d in desc] == [[t for t, _ in d.neighbours] for d in want_desc]
    # an index built in process is searched through the thin client: the model ids agree
    thin_hits = ImageSearch(want_index, ClipEncoder(runs["thin"])).search("a red circle on the left", k=3)
    assert [h.id for h in thin_hits] == [h.id for h in want_hits]
    for backend in runs.values():
        if backend is not local:
            backend.close()


# -- the thin client ---------------------------------------------------------------------------------
@triton
def test_the_thin_client_learns_what_it_must_know_from_the_server(thin, bundle, local):
    from clipq.runtime.server_path import ServerManifest
    from clipq.runtime.tasks import ClipEncoder, ReadingModel, VqaModel

    m, b = thin.manifest, Manifest.load(bundle)
    assert isinstance(m, ServerManifest) and thin.thin
    assert m.dims == b.dims and m.answer_vocab == b.answer_vocab and m.tokenizers == b.tokenizers
    assert m.models == b.models and m.preprocessing == b.preprocessing
    enc = ClipEncoder(thin)
    assert enc.remote and enc.dim == ClipEncoder(local).dim and enc.model_id == ClipEncoder(local).model_id
    assert VqaModel(thin).vocab == b.answer_vocab
    assert ReadingModel(thin).candidates == b.extra["reading"]["candidates"]
    knn = json.loads((bundle / "knn" / "knn.json").read_text())
    assert (thin.server_info() or {})["knn"]["count"] == knn["count"]
    from clipq.runtime.fusion import Img2PromptSettings

    assert Img2PromptSettings.from_manifest(m) == Img2PromptSettings.from_manifest(b)  # the record, from the server
    with pytest.raises(ArtifactError, match="not on this machine"):
        enc.tokenizer  # noqa: B018 - tokenisation runs in the server; no local file to read


@triton
def test_the_thin_client_agrees_with_in_process(thin, local, images, record_property):
    from PIL import Image

    from clipq.runtime import ReadingModel
    from clipq.runtime.img2prompt import ImageToPrompt
    from clipq.runtime.tasks import ClipEncoder, EnsembleHead, PromptEncoder, PromptRegressor, VqaModel

    enc, ref = ClipEncoder(thin), ClipEncoder(local)
    # every accepted image form: a path, bytes, a PIL image, a uint8 array
    forms = [images[0], images[1].read_bytes(), Image.open(images[2]), np.asarray(Image.open(images[3]).convert("RGB"))]
    figures = {"image": _close(enc.encode_images([*forms, *images]), ref.encode_images([*forms, *images]))}
    (t_got, cut_got), (t_want, cut_want) = (e.encode_texts(TEXTS, return_truncated=True) for e in (enc, ref))
    assert cut_got == cut_want == [False, True, False]
    figures["text"] = _close(t_got, t_want)
    figures["prompt"] = _close(PromptEncoder(thin).encode(TEXTS), PromptEncoder(local).encode(TEXTS))
    a = PromptRegressor(thin).predict(images)
    figures["model_a"] = _close(a, PromptRegressor(local).predict(images))
    figures["head"] = _close(EnsembleHead(thin).fuse(a, a[::-1], 0.4), EnsembleHead(local).fuse(a, a[::-1], 0.4))
    got, want = (VqaModel(b).ask(images, "what color is the shape ?") for b in (thin, local))
    assert [g.answer for g in got] == [w.answer for w in want] and [g.top for g in got][0][0][0] == want[0].top[0][0]
    np.testing.assert_allclose([g.prob for g in got], [w.prob for w in want], atol=ATOL)
    p_got, _ = VqaModel(thin).probs(ref.encode_images(images), ["how many shapes ?"] * len(images))
    p_want, _ = VqaModel(local).probs(ref.encode_images(images), ["how many shapes ?"] * len(images))
    figures["ask"] = (float(np.abs(p_got - p_want).max()), 1.0)
    assert figures["ask"][0] <= ATOL
    r_got, r_want = (ReadingModel(b).read(images, "what word is written ?", top_k=5) for b in (thin, local))
    assert [g.answer for g in r_got] == [w.answer for w in r_want] and [len(g.top) for g in r_got] == [5] * len(images)
    s_got, s_want = (ReadingModel(b).scores(images, "what word is written ?") for b in (thin, local))
    figures["read"] = (float(np.abs(s_got - s_want).max()), 1.0)
    assert s_got.shape == (len(images), len(ReadingModel(local).candidates))
    assert figures["read"][0] <= ATOL
    d_got, d_want = (ImageToPrompt(e.backend).describe(images, alpha=0.25, n=3) for e in (enc, ref))
    figures["describe"] = _close(np.stack([d.embedding for d in d_got]), np.stack([d.embedding for d in d_want]))
    for g, w in zip(d_got, d_want):
        assert [t for t, _ in g.closest] == [t for t, _ in w.closest] and len(g.closest) == 3
        np.testing.assert_allclose([s for _, s in g.closest], [s for _, s in w.closest], atol=ATOL)
        assert [t for t, _ in g.neighbours] == [t for t, _ in w.neighbours]
        assert (g.alpha, g.k) == (w.alpha, w.k) == (0.25, w.k)
    record_property("agreement", figures)


@triton
def test_server_errors_arrive_typed_naming_the_item(thin, local, images, tmp_path):
    from clipq.runtime.img2prompt import ImageToPrompt
    from clipq.runtime.tasks import ClipEncoder, ReadingModel

    enc, ref = ClipEncoder(thin), ClipEncoder(local)
    batch = [p.read_bytes() for p in images] * 6 + [b"\x89PNG\r\n\x1a\n-truncated-"] + [images[0].read_bytes()] * 3
    bad = len(batch) - 4  # 36: in the second chunk of 32
    errors = []
    for e in (enc, ref):
        with pytest.raises(InvalidImageError) as info:
            e.encode_images(batch)
        errors.append(info.value)
    assert [x.index for x in errors] == [bad, bad] and str(errors[0]) == str(errors[1])
    for e in (enc, ref):
        with pytest.raises(InvalidImageError, match="no such image file") as info:
            e.encode_images([images[0], tmp_path / "missing.png"])
        assert info.value.index == 1 and info.value.source == str(tmp_path / "missing.png")
        with pytest.raises(DTypeError) as info:
            e.encode_images([images[0], np.zeros((8, 8, 3), np.float32)])
        assert info.value.index == 1
        with pytest.raises(InvalidTextError) as info:
            e.encode_texts(["fine", "fine", ""])
        assert info.value.index == 2
        with pytest.raises(InvalidInputError, match="alpha"):
            ImageToPrompt(e.backend).describe(images[:1], alpha=1.5)
    for backend in (thin, local):  # the reading model's errors, the same through the server
        reader = ReadingModel(backend)
        with pytest.raises(InvalidImageError) as info:
            reader.read([images[0], images[1], b"not an image"], "what word is written ?")
        assert info.value.index == 2
        with pytest.raises(InvalidTextError, match="longer than the reading model's context") as info:
            reader.read(images[:2], ["what word is written ?", "what word " * 60])
        assert info.value.index == 1
        with pytest.raises(InvalidInputError, match="candidate list is empty"):
            reader.read(images[:1], "what word is written ?", [])
        with pytest.raises(ShapeError, match="cannot be paired"):
            reader.read(images[:3], ["a ?", "b ?"])


# -- the async path ----------------------------------------------------------------------------------
@triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_task_classes_on_the_async_backend(server, thin, images, bundle, protocol):
    from clipq.runtime import ReadingModel
    from clipq.runtime.backends.triton import AsyncTritonBackend
    from clipq.runtime.img2prompt import ImageToPrompt
    from clipq.runtime.tasks import ClipEncoder, EnsembleHead, PromptEncoder, PromptRegressor, VqaModel

    url = server.grpc_url if protocol == "grpc" else server.http_url
    many = [p.read_bytes() for p in images] * 7  # 42 images in chunks of 4: several steps of 4 calls at once

    async def main():
        async with AsyncTritonBackend(url, max_in_flight=4) as b:  # thin: no manifest given
            enc = ClipEncoder(b)
            out = {"images": await enc.encode_images(many, batch_size=4),
                   "texts": await enc.encode_texts(TEXTS, return_truncated=True),
                   "answers": await VqaModel(b, encoder=enc).ask(images, "what color is the shape ?"),
                   "a": await PromptRegressor(b).predict(images), "prompts": await PromptEncoder(b).encode(TEXTS),
                   "describe": await ImageToPrompt(enc.backend).describe(images, n=2),
                   "read": await ReadingModel(b).read(images, "what word is written ?")}
            out["head"] = await EnsembleHead(b).fuse(out["a"], out["a"][::-1], 0.5)
            with pytest.raises(InvalidImageError) as info:
                await enc.encode_images([*many[:9], b"not an image"], batch_size=2)
            out["bad_index"] = info.value.index
        async with AsyncTritonBackend(url, bundle) as b:  # with local artifacts: the same path
            out["with_manifest"] = await ClipEncoder(b).encode_images(images)
        b = AsyncTritonBackend(url, bundle)
        with pytest.raises(ArtifactError, match="open"):
            await ClipEncoder(b).encode_images(images)  # the client has not asked the server yet
        await b.close()
        return out

    out = asyncio.run(main())
    enc = ClipEncoder(thin)
    np.testing.assert_allclose(out["images"], enc.encode_images(many), atol=1e-6)
    np.testing.assert_allclose(out["with_manifest"], enc.encode_images(images), atol=1e-6)
    emb, cut = enc.encode_texts(TEXTS, return_truncated=True)
    np.testing.assert_allclose(out["texts"][0], emb, atol=1e-6)
    assert out["texts"][1] == cut
    want = VqaModel(thin).ask(images, "what color is the shape ?")
    assert [a.answer for a in out["answers"]] == [a.answer for a in want]
    np.testing.assert_allclose(out["a"], PromptRegressor(thin).predict(images), atol=1e-6)
    np.testing.assert_allclose(out["prompts"], PromptEncoder(thin).encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(out["head"], EnsembleHead(thin).fuse(out["a"], out["a"][::-1], 0.5), atol=1e-6)
    d = ImageToPrompt(enc.backend).describe(images, n=2)
    np.testing.assert_allclose(np.stack([x.embedding for x in out["describe"]]), np.stack([x.embedding for x in d]),
                               atol=1e-6)
    assert [x.closest for x in out["describe"]] == [x.closest for x in d]
    assert out["bad_index"] == 9
    want_read = ReadingModel(thin).read(images, "what word is written ?")
    assert [r.answer for r in out["read"]] == [r.answer for r in want_read]
    np.testing.assert_allclose([r.score for r in out["read"]], [r.score for r in want_read], atol=1e-6)


# -- a server that does not describe itself ------------------------------------------------------------
@triton
def test_a_server_without_its_description_gets_tensors_from_a_client_with_artifacts(bundle, images, local,
                                                                                    tmp_path):
    from clipq.runtime import connect
    from clipq.runtime.tasks import ClipEncoder
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    repo = render_repository(bundle, tmp_path / "r", RenderOptions(variant="fp32", warmup=False),
                             models=["clip_image"])
    with TritonServer(repo.path) as srv:
        with connect(bundle, server=srv.grpc_url) as b:
            enc = ClipEncoder(b)
            assert not enc.remote  # preprocessing here, pixels to clip_image
            _close(enc.encode_images(images), ClipEncoder(local).encode_images(images))
        with pytest.raises(ArtifactError, match="does not describe itself"):
            connect(server=srv.grpc_url)


# -- the remote client, without a server -------------------------------------------------------------
def test_parse_url():
    from clipq.runtime.backends.triton import parse_url

    assert parse_url("grpc://127.0.0.1:8001") == ("grpc", "127.0.0.1:8001", False)
    assert parse_url("http://localhost") == ("http", "localhost:8000", False)
    assert parse_url("https://h:443") == ("http", "h:443", True)
    assert parse_url("h:9", protocol="grpc") == ("grpc", "h:9", False)
    for bad in ("h:9", "ftp://h:1"):
        with pytest.raises(ClipqError):
            parse_url(bad)
    with pytest.raises(ClipqError, match="contradicts"):
        parse_url("http://h:1", protocol="grpc")


def test_one_protocol_adapter_per_scheme():
    from clipq.runtime.backends.triton import PROTOCOLS, TritonBackend
    from clipq.runtime.backends.triton_protocol import GrpcProtocol, HttpProtocol, open_protocol

    assert PROTOCOLS == {"grpc": GrpcProtocol, "http": HttpProtocol}
    g, h = open_protocol("grpc://h:1", None, 7.0), open_protocol("https://h:2", None, 7.0)
    assert isinstance(g, GrpcProtocol) and g.thread_safe and g.call_options() == {"client_timeout": 7.0}
    assert g.json_options() == {"as_json": True}
    assert isinstance(h, HttpProtocol) and h.ssl and not h.thread_safe and h.call_options() == {} == h.json_options()
    x = np.zeros((2, 3), np.float32)
    assert h.infer_input("x", x, "FP32")._get_binary_data() is not None  # binary, not a JSON list
    assert g.infer_input("x", x, "FP32").name() == "x" and g.requested_output("y").name() == "y"
    for url, cls in (("grpc://127.0.0.1:1", GrpcProtocol), ("http://127.0.0.1:1", HttpProtocol)):
        b = TritonBackend(url, Manifest(root=Path(".")))
        assert type(b.wire) is cls and b.protocol == cls.name
        b.close()


@pytest.fixture
def client(artifacts):
    from clipq.runtime.backends.triton import TritonBackend

    b = TritonBackend("grpc://127.0.0.1:1", artifacts, retries=0)
    yield b
    b.close()


def _count_calls(backend, name: str) -> list[BaseException | None]:
    """Record each attempt of the backend's client method ``name`` (None: it returned; else what it raised)."""
    client = backend._client()
    real = getattr(client, name)
    seen: list[BaseException | None] = []

    def counted(*a, **kw):
        try:
            out = real(*a, **kw)
        except Exception as e:
            seen.append(e)
            raise
        seen.append(None)
        return out

    setattr(client, name, counted)
    return seen


@triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_remote_input_errors_keep_their_type_and_global_index(server, bundle, images, protocol):
    """The server's own errors: typed, at the item's index in the whole batch (past the first chunk), not retried."""
    from clipq.runtime.backends.triton import TritonBackend
    from clipq.runtime.contract import Call

    url = server.grpc_url if protocol == "grpc" else server.http_url
    good = images[0].read_bytes()
    with TritonBackend(url, bundle, retries=3) as b:
        assert b._max_batch("embed_image", b.spec("embed_image")) < 40  # the batch below crosses chunks
        batch = [good] * 40
        batch[35] = b"\x89PNG\r\n\x1a\n-truncated-"
        seen = _count_calls(b, "infer")
        with pytest.raises(InvalidImageError) as info:
            b.infer("embed_image", {"image": batch})
        assert info.value.index == 35 and "item 35" in str(info.value)
        assert seen[-1] is not None and len([e for e in seen if e is not None]) == 1  # an input error: never repeated
        with pytest.raises(InvalidTextError) as info:
            b.infer("embed_text", {"text": ["fine", "   "]})
        e = info.value
        assert e.index == 1 and "empty" in str(e)
        with pytest.raises(InferenceError, match="no model 'no_such_model'"):
            b.infer("no_such_model", {"x": np.zeros((1, 2), np.float32)})
    # a task's call moves the index into the caller's batch and names the item as the caller gave it
    moved = Call("embed_text", {}, start=64, sources=[None, "a.txt"]).relocate(e)
    assert type(moved) is InvalidTextError and moved.index == 65 and str(moved).startswith("[item 65, 'a.txt']")


@triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_deadline_the_server_cannot_meet_is_backend_unavailable_and_not_retried(server, bundle, protocol):
    """A tiny timeout against the real server: BackendUnavailable naming the model and the deadline, at once."""
    import time

    from PIL import Image

    from clipq.runtime.backends.triton import TritonBackend

    url = server.grpc_url if protocol == "grpc" else server.http_url
    rng = np.random.default_rng(0)
    noise = []  # incompressible 512 x 512 PNGs: decoding and resizing 16 of them takes the server far over 10 ms
    for _ in range(16):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buf, format="PNG")
        noise.append(buf.getvalue())
    with TritonBackend(url, bundle, timeout_s=30) as b:
        t0 = time.monotonic()
        assert b.infer("embed_image", {"image": noise})["image_embeds"].shape[0] == 16
        needed = time.monotonic() - t0
    assert needed > 0.05, needed  # the premise: one call takes longer than the deadline below
    with TritonBackend(url, bundle, timeout_s=0.01, retries=5, backoff_s=1.0) as b:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"did not answer 'embed_image' within 0.01 s"):
            b.infer("embed_image", {"image": noise})
        assert time.monotonic() - t0 < min(1.0, needed)  # given up at the deadline, not retried


@triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_that_goes_away_is_retried_then_backend_unavailable(bundle, tmp_path, protocol):
    """Stop a real tritonserver under a connected client: every attempt is made, then the typed error."""
    from clipq.runtime.backends.triton import TritonBackend
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    require_triton()
    repo = render_repository(bundle, tmp_path / "r", RenderOptions(variant="fp32", warmup=False), models=["clip_text"])
    feeds = {"input_ids": np.full((1, 7), 1000, np.int64), "attention_mask": np.ones((1, 7), np.int64)}
    srv = TritonServer(repo.path).start()
    try:
        url = srv.grpc_url if protocol == "grpc" else srv.http_url
        b = TritonBackend(url, bundle, retries=3, backoff_s=0.01, timeout_s=20)
        assert next(iter(b.infer("clip_text", feeds).values())).shape[0] == 1  # connected, config cached
    finally:
        srv.stop()
    try:
        seen = _count_calls(b, "infer")
        with pytest.raises(BackendUnavailable, match=r"is not reachable.*clipq serve") as info:
            b.infer("clip_text", feeds)
        assert url.split("://")[1] in str(info.value)
        assert len(seen) == 4 and all(e is not None for e in seen), seen  # the first try and three retries
        # the same failure on a stateful model is not repeated: the request might have moved its state
        b._configs["stateful"] = {"name": "stateful", "sequence_batching": {"max_sequence_idle_microseconds": 1}}
        assert b._retryable(seen[0], "clip_text") and not b._retryable(seen[0], "stateful")
        with pytest.raises(BackendUnavailable):
            b.health()
    finally:
        b.close()


def test_unreachable_server_raises_backend_unavailable_quickly(artifacts):
    from clipq.runtime import connect
    from clipq.runtime.backends.triton import TritonBackend

    for url in ("grpc://127.0.0.1:9", "http://127.0.0.1:9"):
        with TritonBackend(url, artifacts, retries=1, timeout_s=5) as b:
            with pytest.raises(BackendUnavailable, match="127.0.0.1:9"):
                b.health()
            with pytest.raises(BackendUnavailable, match="clipq serve"):
                b.infer("clip_image", {"pixel_values": np.zeros((1, 3, 32, 32), np.float32)})
        with pytest.raises(BackendUnavailable, match="127.0.0.1:9"):
            connect(server=url, retries=0, timeout_s=5)  # a thin client asks at once


def test_identity_check_refuses_another_graph(client):
    client._accept_config("clip_text", {"name": "clip_text", "parameters": {}})  # foreign repo: no check
    with pytest.raises(ArtifactError, match="different 'clip_image' graph"):
        client._accept_config("clip_image", {"name": "clip_image",
                                             "parameters": {"clipq_sha256": {"string_value": "0" * 64}}})


def test_pil_images_and_arrays_go_as_lossless_png(images):
    from PIL import Image

    from clipq.runtime.preprocess import decode_image
    from clipq.runtime.server_path import image_bytes

    img = Image.open(images[0])
    for x in (img, np.asarray(img.convert("RGB"))):
        sent = image_bytes(x, 0, None)
        assert sent.startswith(b"\x89PNG")
        assert np.array_equal(np.asarray(decode_image(sent)), np.asarray(decode_image(img)))
    assert image_bytes(images[0], 0, None) == images[0].read_bytes()  # files go as they are
    with pytest.raises(InvalidImageError, match="pixels, over the limit"):
        image_bytes(np.zeros((64, 64, 3), np.uint8), 4, max_pixels=100)
