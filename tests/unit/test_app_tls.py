"""``clipq app --tls-cert/--tls-key``: HTTPS on uvicorn with a certificate the test makes.

A CA and a server certificate for 127.0.0.1 (tests/_tls.py, ``cryptography``; nothing fetched):
httpx and the OpenAI SDK verify the app against that CA and get their answers (with an API key
on top); a client that trusts another CA, or speaks plain HTTP, gets nothing.
"""

from __future__ import annotations

import ssl

import pytest
from _require import require_module

require_module("fastapi")
httpx = require_module("httpx")
require_module("prometheus_client")
require_module("cryptography")

pytestmark = pytest.mark.timeout(300)

KEY = "sk-clipq-tls"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from _tls import make_certs

    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_url(tiny_artifacts, certs):
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings

    settings = AppSettings(timeout_s=60, api_keys=(KEY,), tls_cert=str(certs.cert), tls_key=str(certs.key))
    svc = open_services(settings, artifacts=str(tiny_artifacts))
    with serve_in_thread(create_app(svc), tls_cert=settings.tls_cert, tls_key=settings.tls_key) as url:
        yield url


def test_https_round_trip_verified_against_the_test_ca(https_url, certs):
    assert https_url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    with httpx.Client(base_url=https_url, verify=ctx, timeout=60) as c:
        r = c.post("/v1/embeddings", json={"input": "a red circle", "model": "clip-text"},
                   headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and len(r.json()["data"]) == 1
        assert c.get("/v1/models").status_code == 401  # TLS does not replace the key
        assert c.get("/healthz").status_code == 200


def test_openai_sdk_over_https(https_url, certs):
    openai = require_module("openai")

    ctx = ssl.create_default_context(cafile=str(certs.ca))
    with httpx.Client(verify=ctx, timeout=60) as hc:
        client = openai.OpenAI(api_key=KEY, base_url=https_url + "/v1", http_client=hc, max_retries=0)
        got = client.embeddings.create(model="clip-text", input=["a red circle", "two blue squares"])
    assert len(got.data) == 2 and len(got.data[0].embedding) > 0


def test_untrusted_ca_and_plain_http_get_nothing(https_url, certs):
    other = ssl.create_default_context(cafile=str(certs.other_ca))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        httpx.get(https_url + "/healthz", verify=other, timeout=30)
    with pytest.raises(httpx.HTTPError):
        httpx.get(https_url.replace("https://", "http://") + "/healthz", timeout=30)


def test_cert_and_key_go_together():
    from clipq.app.web.settings import AppSettings

    with pytest.raises(ValueError, match="together"):
        AppSettings(tls_cert="server.pem")
