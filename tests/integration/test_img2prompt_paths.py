"""Image -> prompt has one home for its settings: after ``clipq tune --write`` every path agrees.

``tune --write`` stores the tuned alpha and K in the manifest (the one record). Then the same image
is described in process (``ImageToPrompt``), through the CLI's real entry point, through the web
app's ``/v1/describe`` and through a real tritonserver rendered from the tuned artifacts (a thin
client that has only the URL, and the CLI with ``--server``): the same fused embedding within 1e-5
and the same nearest prompts, with the tuned alpha and K, which differ from the trained ones.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from _require import require_module, require_triton

pytestmark = [pytest.mark.timeout(600)]
ATOL = 1e-5


def _tune(root: Path, data: Path, capsys) -> dict:
    from clipq.app.cli import main
    from clipq.runtime.fusion import Img2PromptSettings
    from clipq.runtime.manifest import Manifest

    before = Img2PromptSettings.from_manifest(Manifest.load(root))
    # a grid that leaves out the trained cell: whatever wins, the record must change
    alphas = [a for a in (0.15, 0.35, 0.65, 0.85) if a != before.alpha]
    ks = [k for k in (1, 2, 4) if k != before.k]
    argv = ["tune", "--data", str(data), "--artifacts", str(root), "--alphas", ",".join(map(str, alphas)),
            "--ks", ",".join(map(str, ks)), "--limit", "40", "--write", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    tuned = Img2PromptSettings.from_manifest(Manifest.load(root))
    assert out["written"] and (tuned.alpha, tuned.k) == (out["best"]["alpha"], out["best"]["k"])
    assert tuned.alpha in alphas and tuned.k in ks and tuned != before
    assert (tuned.weighting, tuned.temperature) == (before.weighting, before.temperature)
    return {"before": before, "tuned": tuned}


def _cli_describe(argv: list[str], capsys) -> dict:
    from clipq.app.cli import main

    assert main(["describe", *argv, "-k", "3", "--embedding", "--json"]) == 0
    return json.loads(capsys.readouterr().out)[0]


def _same(got_embedding, got_closest, want, *, alpha: float, k: int) -> None:
    np.testing.assert_allclose(np.asarray(got_embedding, np.float32), want.embedding, atol=ATOL)
    assert [t for t, _ in got_closest] == [t for t, _ in want.closest]
    assert (want.alpha, want.k) == (pytest.approx(alpha), k)


@pytest.mark.triton
def test_tuned_settings_reach_every_path(tiny_artifacts_copy, small_world, tmp_path, capsys):
    import clipq.runtime as rt
    from clipq.serving import render_repository
    from clipq.serving.server import TritonServer

    root = Path(tiny_artifacts_copy)
    settings = _tune(root, Path(small_world), capsys)["tuned"]
    image = sorted((Path(small_world) / "images" / "test").glob("*.png"))[0]

    # in process: the reference
    backend = rt.connect(root)
    try:
        task = rt.ImageToPrompt(backend)
        assert task.settings == settings
        want = task.describe([image], n=3)[0]
        assert want.alpha == pytest.approx(settings.alpha) and want.k == settings.k
        # the record is what changed the result: the trained alpha gives another embedding
        other = task.describe([image], alpha=0.0 if settings.alpha else 1.0, n=3)[0]
        assert np.abs(other.embedding - want.embedding).max() > 10 * ATOL
    finally:
        backend.close()

    # the CLI's real entry point, in process
    row = _cli_describe([str(image), "--artifacts", str(root)], capsys)
    _same(row["embedding"], [(c["prompt"], c["score"]) for c in row["closest"]], want, alpha=row["alpha"], k=row["k"])
    assert (row["alpha"], row["k"]) == (pytest.approx(settings.alpha), settings.k)

    # the web app on a real uvicorn
    require_module("fastapi")
    httpx = require_module("httpx")
    from clipq.app.web.server import create_app, open_services, serve_in_thread
    from clipq.app.web.settings import AppSettings

    svc = open_services(AppSettings(), artifacts=str(root))
    uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    with serve_in_thread(create_app(svc)) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/describe", json={"image": uri, "n": 3, "embedding": True})
    assert r.status_code == 200, r.text
    d = r.json()
    _same(d["embedding"], [(x["prompt"], x["score"]) for x in d["closest"]], want, alpha=d["alpha"], k=d["k"])
    assert (d["alpha"], d["k"]) == (pytest.approx(settings.alpha), settings.k)

    # a real tritonserver rendered from the tuned artifacts: a thin client and the CLI with --server
    require_triton()
    repo = render_repository(root, tmp_path / "repo")
    with TritonServer(repo.path) as srv:
        url = srv.grpc_url
        thin = rt.connect(server=url)
        try:
            remote = rt.ImageToPrompt(thin)
            assert remote.remote and remote.settings == settings
            got = remote.describe([image], n=3)[0]
        finally:
            thin.close()
        _same(got.embedding, got.closest, want, alpha=got.alpha, k=got.k)
        assert (got.alpha, got.k) == (pytest.approx(settings.alpha), settings.k)
        row = _cli_describe([str(image), "--server", url], capsys)
        _same(row["embedding"], [(c["prompt"], c["score"]) for c in row["closest"]], want, alpha=row["alpha"],
              k=row["k"])
