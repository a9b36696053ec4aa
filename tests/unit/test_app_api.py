"""``clipq app``'s REST API through httpx against the real app on a real uvicorn (loopback, free port).

Real artifacts (the shared ``tiny_artifacts``) and a real index built here over generated images:
embeddings must equal the in-process ``ClipEncoder``'s, search / ask / describe the task classes',
and every limit and error must answer a 4xx/5xx in OpenAI's error shape, never a traceback.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from _require import require_module, require_triton

require_module("fastapi")
httpx = require_module("httpx")
require_module("prometheus_client")

pytestmark = pytest.mark.timeout(300)

SHAPES = [("red", "circle"), ("blue", "square"), ("green", "circle"), ("red", "square"), ("yellow", "circle"),
          ("blue", "circle")]
RGB = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 30)}
#: OpenAI's error ``type`` for each status the API answers with (written out here, not read from the app)
ERROR_TYPES = {**dict.fromkeys((400, 404, 405, 413, 415, 422), "invalid_request_error"), 500: "server_error",
               501: "not_implemented", 502: "server_error", 503: "service_unavailable", 504: "timeout"}
LIMITS = dict(max_inputs=8, max_images=4, max_text_chars=400, max_request_bytes=2_000_000,
              max_image_bytes=1_000_000, max_image_pixels=400 * 400, timeout_s=60.0)


def _png(colour: str, shape: str, size: int = 64, fmt: str = "PNG") -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=RGB[colour])
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def runtime(tiny_artifacts):
    import clipq.runtime as rt

    backend = rt.connect(tiny_artifacts)
    yield backend, rt.ClipEncoder(backend)
    backend.close()


@pytest.fixture(scope="module")
def index_dir(runtime, tmp_path_factory):
    from clipq.runtime.index import ImageIndex

    root = tmp_path_factory.mktemp("app_images")
    folder = root / "images"
    folder.mkdir()
    meta = {}
    for i, (colour, shape) in enumerate(SHAPES):
        (folder / f"img_{i}.png").write_bytes(_png(colour, shape))
        meta[f"img_{i}"] = {"caption": f"a {colour} {shape}", "colour": colour, "shape": shape}
    index = ImageIndex.from_images(folder, runtime[1], metadata=meta, progress=False)
    return index.save(root / "index").parent


def _start(tiny_artifacts, index=None, backend=None, **overrides):
    from clipq.app.web.server import create_app, open_services
    from clipq.app.web.settings import AppSettings

    settings = AppSettings(**{**LIMITS, **overrides})
    svc = open_services(settings, artifacts=str(tiny_artifacts), index=str(index) if index else None,
                        backend=backend)
    return create_app(svc)


@pytest.fixture(scope="module")
def client(tiny_artifacts, index_dir):
    from clipq.app.web.server import serve_in_thread

    with serve_in_thread(_start(tiny_artifacts, index_dir)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _error(r, status: int, code: str | None = None, param: str | None = None, words: str = ""):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    assert words.lower() in err["message"].lower(), err
    assert err["type"] == ERROR_TYPES[status], err
    return err


# -- embeddings -------------------------------------------------------------------------------------------
def test_text_embeddings_equal_the_in_process_encoder(client, runtime):
    texts = ["two red circles", "a blue square at the top", "a green triangle"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": "clip-text"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "clip-text"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    want = runtime[1].encode_texts(texts)
    assert got.shape == want.shape == (3, runtime[1].dim)
    assert _cos(got, want).min() > 0.99999
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 3

    one = client.post("/v1/embeddings", json={"input": texts[0], "model": "clip-text", "encoding_format": "base64"})
    row = np.frombuffer(base64.b64decode(one.json()["data"][0]["embedding"]), "<f4")
    # alone, not in the batch of three: dynamic int8 graphs quantise with the batch's own ranges
    assert len(one.json()["data"]) == 1 and _cos(row, runtime[1].encode_texts([texts[0]])[0]) > 0.99999


def test_image_embeddings_from_data_uris_and_bare_base64(client, runtime):
    png, jpg = _png("red", "circle"), _png("blue", "square", 80, "JPEG")
    r = client.post("/v1/embeddings", json={"input": [_uri(png), base64.b64encode(jpg).decode(),
                                                       _uri(jpg, "image/jpeg")], "model": "clip-image"})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    want = runtime[1].encode_images([png, jpg, jpg])
    assert _cos(got, want).min() > 0.99999
    assert r.json()["usage"]["prompt_tokens"] == 0


def test_models_list_both_towers(client, runtime):
    data = client.get("/v1/models").json()["data"]
    assert {m["id"]: m["modality"] for m in data} == {"clip-text": "text", "clip-image": "image"}
    assert all(m["dimensions"] == runtime[1].dim and m["object"] == "model" for m in data)
    assert client.get("/v1/models/clip-image").json()["id"] == "clip-image"
    _error(client.get("/v1/models/gpt-4"), 404, "model_not_found", "model")


@pytest.mark.parametrize("body,status,code,param,words", [
    ({"input": "x", "model": "text-embedding-3-small"}, 404, "model_not_found", "model", "clip-text, clip-image"),
    ({"input": "x"}, 400, "missing_field", "model", "field required"),
    ({"input": "", "model": "clip-text"}, 400, "empty_text", "input", "empty"),
    ({"input": ["ok", "  "], "model": "clip-text"}, 400, "empty_text", "input[1]", "empty"),
    ({"input": [], "model": "clip-text"}, 400, "empty_input", "input", "empty list"),
    ({"input": "x" * 401, "model": "clip-text"}, 400, "text_too_long", "input", "401 characters, the limit is 400"),
    ({"input": ["a"] * 9, "model": "clip-text"}, 400, "too_many_inputs", "input", "9 texts in one request, the limit is 8"),
    ({"input": [[101, 102]], "model": "clip-text"}, 400, "invalid_type", "input[0]", "token arrays"),
    ({"input": 3, "model": "clip-text"}, 400, "invalid_type", "input", "string or a list"),
    ({"input": "red " * 60, "model": "clip-text"}, 400, "context_length_exceeded", "input", "context of"),
    ({"input": "x", "model": "clip-text", "dimensions": 7}, 400, "invalid_value", "dimensions", "must be"),
    ({"input": "x", "model": "clip-text", "modality": "image"}, 400, "invalid_value", "modality", "does not match"),
    ({"input": "x", "model": "clip-text", "encoding_format": "int4"}, 400, "invalid_value", "encoding_format", "ubinary"),
    ({"input": "data:image/png;base64,@@@not-base64", "model": "clip-image"}, 400, "invalid_base64", "input", "base64"),
    ({"input": ["data:text/plain;base64,aGVsbG8="], "model": "clip-image"}, 400, "unsupported_media_type", "input[0]",
     "text/plain"),
    ({"input": "data:image/png,rawbytes", "model": "clip-image"}, 400, "invalid_data_uri", "input", "base64"),
    ({"input": "https://example.com/cat.jpg", "model": "clip-image"}, 400, "image_url_not_supported", "input", "URL"),
    ({"input": [base64.b64encode(b"hello world").decode()], "model": "clip-image"}, 400, "invalid_image", "input[0]",
     "not an image"),
    ({"input": [_uri(_png("red", "circle", 401))], "model": "clip-image"}, 413, "too_many_pixels", "input[0]",
     "401 x 401 = 160801 pixels"),
    ({"input": [_uri(_png("red", "circle"))] * 5, "model": "clip-image"}, 400, "too_many_inputs", "input", "limit is 4"),
    ({"input": [1], "model": "clip-image"}, 400, "invalid_type", "input[0]", "base64 string"),
])
def test_embedding_errors_name_the_problem(client, body, status, code, param, words):
    _error(client.post("/v1/embeddings", json=body), status, code, param, words)


def test_overlong_text_is_cut_only_on_request(client, runtime):
    r = client.post("/v1/embeddings", json={"input": "red " * 60, "model": "clip-text", "truncate": True})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == runtime[1].dim


def test_body_errors_and_size_limits(client):
    _error(client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}),
           400, "invalid_json", None, "not valid JSON")
    big = b'{"model": "clip-text", "input": "' + b"a" * 2_100_000 + b'"}'
    _error(client.post("/v1/embeddings", content=big, headers={"content-type": "application/json"}),
           413, "request_too_large", None, "the limit is 2000000")

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "clip-text", "input": "'
        for _ in range(25):
            yield b"a" * 100_000
        yield b'"}'

    _error(client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}),
           413, "request_too_large")
    _error(client.get("/v1/nothing"), 404, "not_found", None, "no such endpoint")
    _error(client.get("/v1/embeddings"), 405, "method_not_allowed")
    _error(client.post("/v1/search", content=b"k=3", headers={"content-type": "text/plain"}), 415,
           "unsupported_media_type")


# -- search -----------------------------------------------------------------------------------------------
def test_text_search_matches_image_search_in_process(client, runtime, index_dir):
    from clipq.runtime.index import ImageIndex
    from clipq.runtime.search import ImageSearch

    r = client.post("/v1/search", json={"text": "a red circle", "k": 4})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    want = ImageSearch(ImageIndex.load(index_dir, encoder=runtime[1]), runtime[1]).search("a red circle", 4)
    assert [h["id"] for h in hits] == [w.id for w in want]
    assert np.allclose([h["score"] for h in hits], [w.score for w in want], atol=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    for h in hits:
        assert h["caption"] == h["metadata"]["caption"] and "path" not in h["metadata"]
        t = client.get(h["thumbnail"])
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg" and t.content[:2] == b"\xff\xd8"


def test_search_filters_templates_ids_and_uploads(client):
    r = client.post("/v1/search", json={"text": "a shape", "k": 10, "filter": {"colour": "red"}, "templates": "none"})
    assert {h["metadata"]["colour"] for h in r.json()["results"]} == {"red"} and len(r.json()["results"]) == 2
    r = client.post("/v1/search", json={"text": "shape", "filter": {"shape": ["square"]}, "templates": "a drawing of {}"})
    assert {h["metadata"]["shape"] for h in r.json()["results"]} == {"square"}
    like = client.post("/v1/search", json={"id": "img_0", "k": 3}).json()["results"]
    assert len(like) == 3 and "img_0" not in [h["id"] for h in like]
    up = client.post("/v1/search", files={"image": ("q.png", _png("red", "circle"), "image/png")},
                     data={"k": "2", "filter": '{"shape": "circle"}'})
    assert up.status_code == 200, up.text
    assert up.json()["results"][0]["id"] == "img_0" and up.json()["results"][0]["score"] > 0.999
    js = client.post("/v1/search", json={"image": _uri(_png("red", "circle")), "k": 1}).json()
    assert js["results"][0]["id"] == "img_0"


@pytest.mark.parametrize("body,status,code,param,words", [
    ({"k": 3}, 400, "invalid_query", None, "exactly one of 'text', 'image' or 'id' (got none)"),
    ({"text": "a", "id": "img_0"}, 400, "invalid_query", "text", "got text and id"),
    ({"text": "a", "k": 0}, 400, "out_of_range", "k", "[1, 100]"),
    ({"text": "a", "k": "many"}, 400, "invalid_type", "k", "integer"),
    ({"text": "a", "templates": "no placeholder"}, 400, "invalid_templates", "templates", ""),
    ({"text": "a", "filter": {"colour": {"$ne": 1}}}, 400, "invalid_filter", "filter.colour", ""),
    ({"text": "a", "filter": "red"}, 400, "invalid_value", "filter", ""),
    ({"text": ""}, 400, "empty_text", "text", "empty"),
    ({"id": "nope"}, 404, "unknown_id", "id", "nope"),
    ({"image": "bm90IGFuIGltYWdl"}, 400, "invalid_image", "image", "not an image"),
])
def test_search_errors(client, body, status, code, param, words):
    _error(client.post("/v1/search", json=body), status, code, param, words)


def test_thumbnails_only_by_indexed_id(client):
    _error(client.get("/thumbs/nope"), 404, "unknown_id")
    _error(client.get("/thumbs/../../etc/passwd"), 404)
    _error(client.get("/thumbs/%2Fetc%2Fpasswd"), 404, "unknown_id")
    assert client.get("/thumbs/img_1?size=32").status_code == 200
    _error(client.get("/thumbs/img_1?size=5000"), 400, "invalid_value", "size")


# -- ask / describe ---------------------------------------------------------------------------------------
def test_ask_by_id_and_upload_equals_vqa_in_process(client, runtime, index_dir):
    import clipq.runtime as rt
    from clipq.runtime.index import ImageIndex

    vqa = rt.VqaModel(runtime[0])
    png = _png("blue", "square")
    q = "what color is the square?"
    want_png = vqa.ask([png], [q], top_k=3)[0]
    # by id, the app answers from the index's stored embedding (encoded in the index's batches: the
    # dynamic int8 graph scales per batch, so it is compared with VQA on that same vector)
    stored = ImageIndex.load(index_dir).get_vectors(["img_1"])
    want_id = vqa.ask_embeds(stored, [q], top_k=3)[0]
    for kw, want in (({"json": {"image": _uri(png), "question": q, "top_k": 3}}, want_png),
                     ({"data": {"question": q, "top_k": "3"}, "files": {"image": ("s.png", png, "image/png")}},
                      want_png),
                     ({"json": {"id": "img_1", "question": q, "top_k": 3}}, want_id)):
        r = client.post("/v1/ask", **kw)
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["answer"] == want.answer and abs(a["prob"] - want.prob) < 1e-4
        assert [t["answer"] for t in a["top"]] == [t for t, _ in want.top]
        assert [t["prob"] for t in a["top"]] == sorted((t["prob"] for t in a["top"]), reverse=True)
    _error(client.post("/v1/ask", json={"id": "img_1"}), 400, "missing_field", "question")
    _error(client.post("/v1/ask", json={"question": "what?"}), 400, "invalid_query")
    _error(client.post("/v1/ask", json={"id": "img_1", "question": "q" * 401}), 400, "text_too_long", "question")
    _error(client.post("/v1/ask", json={"id": "img_1", "question": "why", "top_k": 99}), 400, "out_of_range", "top_k")


def test_describe_equals_describe_in_process(client, runtime, tiny_artifacts):
    import clipq.runtime as rt

    task = rt.ImageToPrompt(runtime[0])
    alpha = task.settings.alpha
    png = _png("green", "circle")
    want = task.describe([png], n=3)[0]
    r = client.post("/v1/describe", json={"image": _uri(png), "n": 3, "embedding": True})
    assert r.status_code == 200, r.text
    d = r.json()
    assert [c["prompt"] for c in d["closest"]] == [t for t, _ in want.closest]
    assert _cos(d["embedding"], want.embedding) > 0.99999 and d["alpha"] == pytest.approx(alpha)
    by_id = client.post("/v1/describe", json={"id": "img_2", "n": 2}).json()
    assert len(by_id["closest"]) == 2 and "embedding" not in by_id
    _error(client.post("/v1/describe", json={"id": "img_2", "n": 0}), 400, "out_of_range", "n")
    _error(client.post("/v1/describe", json={"id": "img_2", "alpha": 1.5}), 400, "out_of_range", "alpha", "[0, 1]")


# -- health, metrics, the page ------------------------------------------------------------------------------
def test_health_metrics_and_page(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["index_items"] == len(SHAPES)
    client.post("/v1/embeddings", json={"input": "x", "model": "clip-text"})
    text = client.get("/metrics").text
    assert 'clipq_app_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
    assert 'clipq_app_embedding_inputs_total{model="clip-text"}' in text
    assert "clipq_app_request_duration_seconds_bucket" in text and 'clipq_app_errors_total{code="model_not_found"}' in text
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    info = client.get("/v1/info").json()
    assert info["index"]["fields"]["colour"] == ["blue", "green", "red", "yellow"]
    assert info["limits"]["max_inputs"] == 8
    assert client.get("/openapi.json").json()["paths"]["/v1/embeddings"]


# -- a slow, failing or absent backend ----------------------------------------------------------------------
class _Wrapped:
    """A real backend with a knob: sleep or raise in ``infer`` / ``health``."""

    def __init__(self, backend):
        self._b, self.delay, self.fail = backend, 0.0, None

    def __getattr__(self, name):
        return getattr(self._b, name)

    def infer(self, model, inputs):
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return self._b.infer(model, inputs)

    def health(self):
        if self.fail is not None:
            raise self.fail
        return self._b.health()

    def close(self):
        pass


def test_slow_failing_and_overloaded_backends(tiny_artifacts, runtime):
    from clipq.app.web.server import serve_in_thread
    from clipq.runtime.errors import BackendUnavailable

    wrapped = _Wrapped(runtime[0])
    app = _start(tiny_artifacts, backend=wrapped, timeout_s=0.4, max_pending=1, workers=2)
    body = {"input": "a red circle", "model": "clip-text"}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/v1/embeddings", json=body).status_code == 200
        _error(c.post("/v1/search", json={"text": "x"}), 404, "no_index", None, "--index")

        wrapped.delay = 1.0
        _error(c.post("/v1/embeddings", json=body), 504, "backend_timeout", None, "within 0.4 s")
        time.sleep(1.2)  # the timed-out call finishes in its thread and leaves the pool

        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", c.post("/v1/embeddings", json=body)))
        t.start()
        t0 = time.monotonic()  # wait until that call holds the one slot (/metrics does not take one)
        while "clipq_app_backend_pending 1.0" not in c.get("/metrics").text and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        busy = c.post("/v1/embeddings", json=body)
        t.join()
        _error(busy, 503, "overloaded", None, "retry")
        assert busy.headers["retry-after"] == "1" and out["r"].status_code == 504
        time.sleep(1.2)

        wrapped.delay, wrapped.fail = 0.0, BackendUnavailable("Triton server at grpc://x is not reachable")
        _error(c.post("/v1/embeddings", json=body), 503, "backend_unavailable", None, "not reachable")
        h = c.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"

        wrapped.fail = RuntimeError("secret internals /home/x/y.py line 3")
        err = _error(c.post("/v1/embeddings", json=body), 500, "internal_error", None, "server log")
        assert "secret" not in err["message"]
        assert "clipq_app_backend_timeouts_total 2.0" in c.get("/metrics").text


def test_cli_registers_the_app_command():
    from clipq.app.cli import build_parser
    from clipq.app.commands.app import settings_from

    args = build_parser().parse_args(["app", "--artifacts", "a", "--port", "0", "--max-inputs", "3"])
    s = settings_from(args)
    assert s.host == "127.0.0.1" and s.port == 0 and s.max_inputs == 3
    with pytest.raises(ValueError, match="max_inputs"):
        settings_from(build_parser().parse_args(["app", "--max-inputs", "0"]))


def test_bench_app_fails_when_triton_does_not_start(tiny_artifacts, tmp_path, monkeypatch):
    """No silent "skipped" Triton column: a server that cannot start is the benchmark's error, with its reason."""
    import contextlib

    import clipq.serving.server as server_module
    from clipq.app.bench import app as bench_app
    from clipq.runtime.errors import ServerError
    from clipq.runtime.manifest import Manifest

    class Broken:
        def __init__(self, *a, **kw):
            raise ServerError("tritonserver exited: libpython3.11.so.1.0: cannot open shared object file")

    monkeypatch.setattr(server_module, "TritonServer", Broken)
    with contextlib.ExitStack() as stack, pytest.raises(ServerError, match="--app-triton-protocols ''") as info:
        bench_app._start_triton(Manifest.load(tiny_artifacts), tmp_path, stack)
    assert "libpython3.11.so.1.0: cannot open shared object file" in str(info.value)


@pytest.mark.triton
@pytest.mark.slow
def test_bench_app_quick_writes_json_markdown_and_png(tiny_artifacts, tmp_path):
    import argparse
    import json

    from clipq.app.bench import app as bench_app

    require_triton()  # the Triton column is measured, or the benchmark fails
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true")
    bench_app.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path), "--quick", "--artifacts", str(tiny_artifacts)])
    assert bench_app.run(args) == 0
    result = json.loads((tmp_path / "app.json").read_text())
    cells = {(c["workload"], c["mode"], c["concurrency"]): c for c in result["cells"]}
    for w in ("text", "image"):
        for conc in (1, 16):
            for mode in ("in-process", "app", "triton-grpc", "triton-http"):
                c = cells[(w, mode, conc)]
                assert c["errors"] == 0 and c["requests"] >= 16 and c["p50_ms"] > 0 and c["throughput_rps"] > 0
    assert result["skipped"] == {} and result["environment"]["server_version"]
    assert {(r["workload"], r["concurrency"]) for r in result["http_cost"] if "vs_triton-grpc_p50_ms" in r
            and "vs_triton-http_throughput_ratio" in r} == {(w, c) for w in ("text", "image") for c in (1, 16)}
    assert {r["workload"] for r in result["http_cost"]} == {"text", "image"}
    md = (tmp_path / "app.md").read_text()
    assert "| workload | concurrency | in-process req/s" in md and "## The HTTP layer's cost" in md
    assert (tmp_path / "app.png").stat().st_size > 1000


@pytest.mark.triton
def test_the_app_over_a_triton_server_needs_no_local_artifacts(tiny_artifacts, runtime, tmp_path):
    require_triton()
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings
    from clipq.runtime.manifest import Manifest
    from clipq.serving import RenderOptions, render_repository
    from clipq.serving.server import TritonServer

    repo = render_repository(Manifest.load(tiny_artifacts), tmp_path / "repo", RenderOptions())
    png = _png("red", "square")
    with TritonServer(repo.path) as server:
        svc = open_services(AppSettings(**LIMITS), server=server.grpc_url)  # a thin client: no artifacts
        with serve_in_thread(create_app(svc)) as url, httpx.Client(base_url=url, timeout=60) as c:
            import clipq.runtime as rt

            remote = rt.connect(server=server.grpc_url)  # the runtime's own client of the same server
            try:
                enc = rt.ClipEncoder(remote)
                texts = ["two red circles"]
                got = c.post("/v1/embeddings", json={"input": texts, "model": "clip-text"}).json()["data"][0]
                img = c.post("/v1/embeddings", json={"input": [_uri(png)], "model": "clip-image"}).json()["data"][0]
                assert _cos(got["embedding"], enc.encode_texts(texts)[0]) > 0.99999
                assert _cos(img["embedding"], enc.encode_images([png])[0]) > 0.99999
            finally:
                remote.close()
            # and close to in process (the server pads texts to the context: int8 graphs differ a little)
            assert _cos(got["embedding"], runtime[1].encode_texts(texts)[0]) > 0.999
            _error(c.post("/v1/embeddings", json={"input": "red " * 60, "model": "clip-text"}), 400,
                   "context_length_exceeded", "input", "context")
            a = c.post("/v1/ask", files={"image": ("s.png", png, "image/png")}, data={"question": "what color ?"})
            d = c.post("/v1/describe", files={"image": ("s.png", png, "image/png")}, data={"n": "2"})
            assert a.status_code == 200 and a.json()["top"], a.text
            assert d.status_code == 200 and len(d.json()["closest"]) == 2, d.text
            assert c.get("/healthz").json()["backend"] == server.grpc_url
