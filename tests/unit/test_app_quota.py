"""Per-client quotas of ``clipq app``: a bounded loopback load test where one client floods and gets
429s with ``Retry-After`` while another, within its quota, sees no failure at all.

The real app on a real uvicorn over the shared ``tiny_artifacts``; clients are told apart by key,
and without keys by address (the flooder connects from 127.0.0.2, the polite client from 127.0.0.1).
"""

from __future__ import annotations

import threading
import time

import pytest
from _require import require_module

require_module("fastapi")
httpx = require_module("httpx")
require_module("prometheus_client")

pytestmark = pytest.mark.timeout(300)

BODY = {"input": ["a red circle"], "model": "clip-text"}
FLOOD_S = 2.5


def test_token_bucket_refills_at_its_rate():
    from clipq.app.web.quota import TokenBuckets

    now = [0.0]
    tb = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [tb.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert tb.take("a") == pytest.approx(0.5)
    assert tb.take("b") == 0.0  # another client has its own bucket
    now[0] = 0.5
    assert tb.take("a") == 0.0 and tb.take("a") == pytest.approx(0.5)
    now[0] = 100.0
    assert [tb.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond
    assert TokenBuckets(rate=0).take("x") == 0.0


def _serve(tiny_artifacts, **settings):
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings

    svc = open_services(AppSettings(timeout_s=60, **settings), artifacts=str(tiny_artifacts))
    return serve_in_thread(create_app(svc))


def _flood(url: str, stop: threading.Event, out: list, headers: dict, local: str | None) -> None:
    transport = httpx.HTTPTransport(local_address=local) if local else None
    with httpx.Client(base_url=url, timeout=60, headers=headers, transport=transport) as c:
        while not stop.is_set():
            r = c.post("/v1/embeddings", json=BODY)
            out.append((r.status_code, r.headers.get("retry-after"), r.json().get("error", {}).get("code")))


def _polite(url: str, n: int, every_s: float, headers: dict, out: list) -> None:
    with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
        for _ in range(n):
            t0 = time.monotonic()
            r = c.post("/v1/embeddings", json=BODY)
            out.append(r.status_code)
            time.sleep(max(0.0, every_s - (time.monotonic() - t0)))


def _load(url: str, flood_headers: dict, polite_headers: dict, local: str | None = None, threads: int = 4):
    stop, flooded, polite = threading.Event(), [], []
    floods = [threading.Thread(target=_flood, args=(url, stop, flooded, flood_headers, local)) for _ in range(threads)]
    for t in floods:
        t.start()
    try:
        _polite(url, int(FLOOD_S / 0.25), 0.25, polite_headers, polite)  # 4 requests/s, the quota is 10
    finally:
        stop.set()
        for t in floods:
            t.join(60)
    return flooded, polite


def _check(flooded: list, polite: list) -> None:
    codes = [s for s, _, _ in flooded]
    assert polite and set(polite) == {200}, polite  # the client within its quota: no failure
    assert codes.count(429) > 0 and codes.count(200) > 0, codes
    assert set(codes) <= {200, 429}, codes
    granted = codes.count(200)
    # the flooder got its burst + rate, not more: 5 + 10/s over the flood (and the polite client's run)
    assert granted <= 5 + 10 * (FLOOD_S + 2.0), granted
    for status, retry, code in flooded:
        if status == 429:
            assert retry is not None and int(retry) >= 1
            assert code in ("rate_limit_exceeded", "too_many_concurrent_requests")


def test_a_flooding_key_gets_429s_and_a_polite_key_none(tiny_artifacts):
    keys = ("sk-flood", "sk-polite")
    with _serve(tiny_artifacts, api_keys=keys, rate_limit=10, rate_burst=5) as url:
        flooded, polite = _load(url, {"Authorization": "Bearer sk-flood"}, {"Authorization": "Bearer sk-polite"})
    _check(flooded, polite)


def test_without_keys_the_quota_is_per_client_address(tiny_artifacts):
    with _serve(tiny_artifacts, rate_limit=10, rate_burst=5) as url:
        flooded, polite = _load(url, {}, {}, local="127.0.0.2")
        assert httpx.get(url + "/healthz", timeout=30).status_code == 200  # not counted, never refused
    _check(flooded, polite)


def test_concurrency_limit_per_client(tiny_artifacts):
    with _serve(tiny_artifacts, max_concurrent=1) as url:
        stop, flooded = threading.Event(), []
        floods = [threading.Thread(target=_flood, args=(url, stop, flooded, {}, None)) for _ in range(4)]
        for t in floods:
            t.start()
        time.sleep(1.5)
        stop.set()
        for t in floods:
            t.join(60)
        one_more = httpx.post(url + "/v1/embeddings", json=BODY, timeout=60)
    codes = {c for _, _, c in flooded if c}
    assert codes == {"too_many_concurrent_requests"}, codes
    assert any(s == 200 for s, _, _ in flooded) and one_more.status_code == 200  # the slot is given back
