"""``clipq app`` exposed: API keys (401), the OpenAI SDK with ``api_key=``, request ids and the access log.

The real app on a real uvicorn (loopback, free port) over the shared ``tiny_artifacts`` and a small
index built here, keyed with two keys: every data route refuses a missing or wrong key in OpenAI's
error shape and accepts either right one; the open routes stay open; no key reaches the log.
"""

from __future__ import annotations

import base64
import io
import logging

import numpy as np
import pytest
from _require import require_module

require_module("fastapi")
httpx = require_module("httpx")
require_module("prometheus_client")

pytestmark = pytest.mark.timeout(300)

KEYS = ("sk-clipq-test-one", "sk-clipq-test-two")


def _png(rgb: tuple[int, int, int], size: int = 48) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(img).ellipse((8, 8, size - 8, size - 8), fill=rgb)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def encoder(tiny_artifacts):
    import clipq.runtime as rt

    backend = rt.connect(tiny_artifacts)
    yield rt.ClipEncoder(backend)
    backend.close()


@pytest.fixture(scope="module")
def index_dir(encoder, tmp_path_factory):
    from clipq.runtime.index import ImageIndex

    root = tmp_path_factory.mktemp("keyed")
    (root / "images").mkdir()
    meta = {}
    for i, rgb in enumerate([(220, 30, 30), (30, 60, 220), (30, 180, 60)]):
        (root / "images" / f"img_{i}.png").write_bytes(_png(rgb))
        meta[f"img_{i}"] = {"caption": f"shape {i}"}
    index = ImageIndex.from_images(root / "images", encoder, metadata=meta, progress=False)
    return index.save(root / "index").parent


def _serve(tiny_artifacts, index_dir, **settings):
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings

    svc = open_services(AppSettings(timeout_s=60, **settings), artifacts=str(tiny_artifacts), index=str(index_dir))
    return serve_in_thread(create_app(svc))


@pytest.fixture(scope="module")
def keyed(tiny_artifacts, index_dir):
    with _serve(tiny_artifacts, index_dir, api_keys=KEYS) as url:
        yield url


#: every route that returns data: (method, path, JSON body)
DATA_ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/clip-text", None),
    ("GET", "/v1/info", None),
    ("POST", "/v1/embeddings", {"input": ["a red circle"], "model": "clip-text"}),
    ("POST", "/v1/embeddings", {"input": [_uri(_png((220, 30, 30)))], "model": "clip-image"}),
    ("POST", "/v1/search", {"text": "a red circle", "k": 2}),
    ("POST", "/v1/search", {"id": "img_0", "k": 2}),
    ("POST", "/v1/ask", {"id": "img_0", "question": "what color is the circle ?"}),
    ("POST", "/v1/describe", {"image": _uri(_png((30, 60, 220))), "n": 2}),
    ("GET", "/thumbs/img_0", None),
]


def _ask(url: str, method: str, path: str, body, key: str | None = None, scheme: str = "Bearer") -> httpx.Response:
    headers = {"Authorization": f"{scheme} {key}"} if key is not None else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=60)


def _refused(r: httpx.Response, code: str) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code and body["error"]["type"] == "invalid_request_error"
    assert not any(k in r.text for k in KEYS)


@pytest.mark.parametrize("method,path,body", DATA_ROUTES, ids=[f"{m} {p}" for m, p, _ in DATA_ROUTES])
def test_every_data_route_needs_a_right_key(keyed, method, path, body):
    _refused(_ask(keyed, method, path, body), "missing_api_key")
    _refused(_ask(keyed, method, path, body, "sk-clipq-test-wrong"), "invalid_api_key")
    _refused(_ask(keyed, method, path, body, KEYS[0][:-1]), "invalid_api_key")  # a prefix is not the key
    _refused(_ask(keyed, method, path, body, KEYS[0], scheme="Basic"), "missing_api_key")
    for key in KEYS:
        r = _ask(keyed, method, path, body, key)
        assert r.status_code == 200, r.text


def test_unknown_paths_are_closed_too(keyed):
    _refused(_ask(keyed, "GET", "/v1/not-a-route", None), "missing_api_key")
    assert _ask(keyed, "GET", "/v1/not-a-route", None, KEYS[1]).status_code == 404


@pytest.mark.parametrize("path", ["/healthz", "/", "/static/app.js", "/metrics", "/openapi.json"])
def test_health_page_and_metrics_stay_open(keyed, path):
    assert _ask(keyed, "GET", path, None).status_code == 200


def test_metrics_can_need_a_key(tiny_artifacts, index_dir):
    with _serve(tiny_artifacts, index_dir, api_keys=KEYS[:1], metrics_need_key=True) as url:
        _refused(_ask(url, "GET", "/metrics", None), "missing_api_key")
        assert _ask(url, "GET", "/metrics", None, KEYS[0]).status_code == 200
        assert _ask(url, "GET", "/healthz", None).status_code == 200


def test_openai_sdk_works_unchanged_with_its_api_key(keyed, encoder):
    openai = require_module("openai")

    texts = ["two red circles", "a blue square"]
    client = openai.OpenAI(api_key=KEYS[1], base_url=keyed + "/v1", max_retries=0, timeout=60)
    got = client.embeddings.create(model="clip-text", input=texts)
    vecs = np.array([d.embedding for d in got.data], np.float32)
    assert vecs.shape == (2, encoder.dim)
    want = encoder.encode_texts(texts)
    assert float((vecs * want).sum(-1).min()) > 0.9999
    assert {m.id for m in client.models.list().data} == {"clip-text", "clip-image"}

    for bad in ("sk-clipq-test-wrong", ""):
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(api_key=bad or "x", base_url=keyed + "/v1", max_retries=0).embeddings.create(
                model="clip-text", input="a red circle")
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"


def test_request_ids_are_returned_and_logged_never_the_key(keyed, caplog):
    caplog.set_level(logging.INFO, logger="clipq.app.access")
    mine = httpx.post(keyed + "/v1/embeddings", json={"input": "a red circle", "model": "clip-text"},
                      headers={"Authorization": f"Bearer {KEYS[0]}", "X-Request-ID": "trace-abc.123"}, timeout=60)
    assert mine.status_code == 200 and mine.headers["x-request-id"] == "trace-abc.123"
    made = httpx.get(keyed + "/v1/models", headers={"Authorization": f"Bearer {KEYS[1]}"}, timeout=60)
    assert len(made.headers["x-request-id"]) == 32
    forged = httpx.get(keyed + "/v1/models", headers={"Authorization": f"Bearer {KEYS[1]}",
                                                       "X-Request-ID": 'x" 200 injected'}, timeout=60)
    assert forged.headers["x-request-id"] != 'x" 200 injected'
    refused = httpx.get(keyed + "/v1/models", headers={"Authorization": "Bearer sk-secret-wrong"}, timeout=60)
    assert refused.status_code == 401 and refused.headers["x-request-id"]
    lines = [r.getMessage() for r in caplog.records if r.name == "clipq.app.access"]
    assert any("POST /v1/embeddings" in ln and "200" in ln and "request_id=trace-abc.123" in ln for ln in lines)
    assert any(made.headers["x-request-id"] in ln for ln in lines)
    assert any("401" in ln and refused.headers["x-request-id"] in ln for ln in lines)
    assert not any(k in ln for ln in lines for k in (*KEYS, "sk-secret-wrong", "Bearer"))


def test_keys_from_flags_file_and_environment(tmp_path):
    from clipq.app.web.auth import load_keys

    f = tmp_path / "keys"
    f.write_text("# ops keys\nkey-b\n\n  key-c  \nkey-a\n")
    assert load_keys(["key-a"], f, env={"CLIPQ_API_KEYS": "key-d, key-a,"}) == ("key-a", "key-b", "key-c", "key-d")
    assert load_keys(env={}) == ()
    with pytest.raises(ValueError, match="whitespace") as err:
        load_keys(["bad key"], env={})
    assert "bad key" not in str(err.value)
    with pytest.raises(ValueError, match="cannot read"):
        load_keys(file=tmp_path / "missing", env={})


def test_cli_reads_keys_and_repr_hides_them(tmp_path, monkeypatch):
    import argparse

    from clipq.app.commands.app import add_parser, settings_from

    monkeypatch.setenv("CLIPQ_API_KEYS", "env-key")
    (tmp_path / "k").write_text("file-key\n")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["app", "--api-key", "flag-key", "--api-key-file", str(tmp_path / "k")])
    s = settings_from(args)
    assert s.api_keys == ("flag-key", "file-key", "env-key")
    assert not any(k in repr(s) for k in ("flag-key", "file-key", "env-key"))
