"""``clipq serve --api-key`` against the real tritonserver: Triton's restricted protocol groups.

One keyed server (module scope) over the shared cpu-python repository of the tiny artifacts. Over
gRPC and HTTP, blocking and asyncio: no key or a wrong key is an ``AuthenticationError`` that says
which, never a retry nor a "server unreachable"; the right key (given, or ``$CLIPQ_API_KEY``)
embeds exactly what the in-process encoder does; health stays open; the key is in no log line; and
``clipq app --server`` passes its server key through. A second server serves gRPC over TLS with a
certificate the test makes (tests/_tls.py): ``grpcs://`` verified against its CA works, another CA
or plain gRPC does not.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from _require import require_module, require_triton

from clipq.runtime.errors import AuthenticationError

pytestmark = [pytest.mark.timeout(300), pytest.mark.triton]  # every test here starts a real tritonserver
require_module("tritonclient.grpc")
require_module("tritonclient.http")

KEY = "sk-triton-test-key"
TEXTS = ["a red circle on the left", "two blue squares"]


@pytest.fixture(scope="module")
def server(cpu_repo):
    from clipq.serving.server import ServerOptions, TritonServer

    require_triton()
    with TritonServer(cpu_repo.path, ServerOptions(api_key=KEY)) as srv:
        yield srv


@pytest.fixture(scope="module")
def want(tiny_artifacts):
    import clipq.runtime as rt

    with rt.connect(tiny_artifacts) as b:
        return rt.ClipEncoder(b).encode_texts(TEXTS)


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    monkeypatch.delenv("CLIPQ_API_KEY", raising=False)


def _url(server, proto: str) -> str:
    return server.grpc_url if proto == "grpc" else server.http_url


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_missing_or_wrong_key_is_a_typed_error_naming_the_cause(server, proto):
    import clipq.runtime as rt

    with pytest.raises(AuthenticationError, match="no API key was sent") as err:
        rt.connect(server=_url(server, proto))
    assert "clipq-api-key" in str(err.value) and KEY not in str(err.value)
    with pytest.raises(AuthenticationError, match="the API key sent was wrong") as err:
        rt.connect(server=_url(server, proto), api_key="sk-wrong", retries=3)
    assert "sk-wrong" not in str(err.value)


@pytest.mark.parametrize("proto", ["grpc", "http"])
def test_the_right_key_embeds_as_in_process(server, proto, want, monkeypatch):
    import clipq.runtime as rt

    with rt.connect(server=_url(server, proto), api_key=KEY) as b:
        got = rt.ClipEncoder(b).encode_texts(TEXTS)
    assert float((got * want).sum(1).min()) > 1 - 1e-4
    monkeypatch.setenv("CLIPQ_API_KEY", KEY)  # the environment's key, when none is given
    with rt.connect(server=_url(server, proto)) as b:
        assert rt.ClipEncoder(b).encode_texts(TEXTS[:1]).shape == (1, want.shape[1])


def test_health_stays_open_and_inference_is_closed(server, tiny_artifacts):
    import clipq.runtime as rt

    with rt.connect(tiny_artifacts, server=server.http_url) as b:  # with the manifest: no call at connect
        b.health()
        with pytest.raises(AuthenticationError, match="no API key"):
            rt.ClipEncoder(b).encode_texts(TEXTS)


def test_async_client_sends_the_key(server, want):
    from clipq.runtime.backends.triton import AsyncTritonBackend

    async def run(key):
        async with AsyncTritonBackend(server.grpc_url, api_key=key) as b:
            import clipq.runtime as rt

            return await rt.ClipEncoder(b).encode_texts(TEXTS)

    got = asyncio.run(run(KEY))
    assert float((np.asarray(got) * want).sum(1).min()) > 1 - 1e-4
    with pytest.raises(AuthenticationError, match="wrong"):
        asyncio.run(run("sk-wrong"))


def test_the_key_stays_out_of_logs_and_reprs(server):
    assert any(line.startswith("$ ") and "--grpc-restricted-protocol=" in line for line in server.log)
    assert not any(KEY in line for line in server.log)
    assert KEY not in repr(server.options)


def test_app_passes_its_server_key_through(server, tiny_artifacts):
    httpx = require_module("httpx")
    require_module("fastapi")
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings

    with pytest.raises(AuthenticationError):
        open_services(AppSettings(), server=server.grpc_url)
    svc = open_services(AppSettings(timeout_s=60), server=server.grpc_url, server_api_key=KEY)
    with serve_in_thread(create_app(svc)) as url:
        r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS, "model": "clip-text"}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 2


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    require_module("cryptography")
    from _tls import make_certs

    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(cpu_repo, certs):
    from clipq.serving.server import ServerOptions, TritonServer

    require_triton()
    opts = ServerOptions(api_key=KEY, tls_cert=str(certs.cert), tls_key=str(certs.key))
    with TritonServer(cpu_repo.path, opts) as srv:
        yield srv


def test_grpc_over_tls_verified_against_the_test_ca(tls_server, certs, want, monkeypatch):
    import clipq.runtime as rt
    from clipq.runtime.errors import BackendUnavailable

    url = tls_server.grpc_url
    assert url.startswith("grpcs://127.0.0.1:")
    with rt.connect(server=url, api_key=KEY, ca_file=str(certs.ca)) as b:
        got = rt.ClipEncoder(b).encode_texts(TEXTS)
    assert float((got * want).sum(1).min()) > 1 - 1e-4
    monkeypatch.setenv("CLIPQ_CA_FILE", str(certs.ca))
    with rt.connect(server=url, api_key=KEY) as b:
        assert rt.ClipEncoder(b).encode_texts(TEXTS[:1]).shape == (1, want.shape[1])
    monkeypatch.delenv("CLIPQ_CA_FILE")
    with pytest.raises(BackendUnavailable):
        rt.connect(server=url, api_key=KEY, ca_file=str(certs.other_ca), retries=0, timeout_s=10)
    with pytest.raises(BackendUnavailable):
        rt.connect(server=url.replace("grpcs://", "grpc://"), api_key=KEY, retries=0, timeout_s=10)


def test_request_id_follows_a_call_from_the_app_into_triton(cpu_repo, tiny_artifacts, tmp_path, caplog):
    """The app's access log and Triton's own trace name the same X-Request-ID for one request."""
    import json
    import logging

    httpx = require_module("httpx")
    require_module("fastapi")
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings
    from clipq.serving.server import ServerOptions, TritonServer

    require_triton()
    caplog.set_level(logging.INFO, logger="clipq.app.access")
    trace = tmp_path / "trace.json"
    rid = "req-follow-me-42"
    with TritonServer(cpu_repo.path, ServerOptions(trace_file=str(trace))) as srv:
        for proto_url in (srv.grpc_url, srv.http_url):
            svc = open_services(AppSettings(timeout_s=60, warmup=False), server=proto_url)
            with serve_in_thread(create_app(svc)) as url:
                r = httpx.post(url + "/v1/embeddings", json={"input": ["a red circle"], "model": "clip-text"},
                               headers={"X-Request-ID": f"{rid}-{proto_url[:4]}"}, timeout=60)
                assert r.status_code == 200, r.text
                assert r.headers["x-request-id"] == f"{rid}-{proto_url[:4]}"
    traces = json.loads(trace.read_text())
    ids = {t.get("request_id") for t in traces}
    assert {f"{rid}-grpc", f"{rid}-http"} <= ids, sorted(i for i in ids if i)[:10]
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "clipq.app.access"]
    assert any(f"request_id={rid}-grpc" in ln and "/v1/embeddings" in ln for ln in lines)


def test_opentelemetry_spans_carry_the_request_id(cpu_repo):
    """``--otel-endpoint``: Triton's own OTLP/HTTP exporter posts spans to a collector (a stub here)."""
    import http.server
    import threading
    import time

    import clipq.runtime as rt
    from clipq.runtime.backends.triton_protocol import REQUEST_ID
    from clipq.serving.server import ServerOptions, TritonServer

    require_triton()
    posts: list[tuple[str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            posts.append((self.path, self.rfile.read(int(self.headers.get("content-length", 0)))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    try:
        with TritonServer(cpu_repo.path, ServerOptions(otel_endpoint=endpoint)) as srv:
            token = REQUEST_ID.set("otel-request-7")
            try:
                with rt.connect(server=srv.grpc_url) as b:
                    rt.ClipEncoder(b).encode_texts(TEXTS[:1])
            finally:
                REQUEST_ID.reset(token)
            deadline = time.monotonic() + 20
            while not any(b"otel-request-7" in body for _, body in posts) and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        collector.shutdown()
    assert any(path == "/v1/traces" and b"otel-request-7" in body for path, body in posts), [p for p, _ in posts]
