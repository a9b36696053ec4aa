"""Integration tests against a real tritonserver on free loopback ports.

One server (module scope) serves the whole repository rendered from the tiny artifacts; the
parametrised suite at the end runs the same assertions against the in-process backend and the
Triton backend over gRPC and HTTP. Where no tritonserver or no shared libpython can be found the
server tests are skipped, with the reason, or fail under ``make test`` (tests/_require.py).
"""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _require import require_module, require_triton

from clipq.runtime.errors import (
    BackendUnavailable,
    DTypeError,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    ServerError,
    ShapeError,
)
from clipq.runtime.manifest import Manifest
from clipq.serving import RenderOptions, render_repository

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]
require_module("tritonclient.grpc")
require_module("tritonclient.http")

NETWORKS = ("clip_image", "clip_text", "vqa", "img2prompt_a", "ensemble_head", "prompt_text", "reading_image",
            "reading_text")
ATOL = 1e-5


def _shm_left(prefix: str) -> list[str]:
    return [p.name for p in Path("/dev/shm").glob(f"{prefix}*")] if Path("/dev/shm").is_dir() else []


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts) -> Path:
    """The shared tiny exported artifacts (tests/conftest.py)."""
    return Path(tiny_artifacts)


@pytest.fixture(scope="module")
def manifest(artifacts) -> Manifest:
    return Manifest.load(artifacts)


@pytest.fixture(scope="module")
def server(artifacts, tmp_path_factory):
    from clipq.serving.server import TritonServer

    require_triton()
    # fp32 everywhere, so the remote results can be compared with in-process fp32 at 1e-5
    repo = render_repository(artifacts, tmp_path_factory.mktemp("repo") / "rendered", RenderOptions(variant="fp32"))
    # every Python-run model runs the one clipq backend: none carries a model.py of its own
    assert not list(repo.model_repository.rglob("model.py"))
    srv = TritonServer(repo.path)
    srv.start()
    cmd = srv.log[0]
    assert f"--model-repository={repo.model_repository}" in cmd and "--backend-directory=" in cmd
    srv.rendered = repo  # type: ignore[attr-defined]
    yield srv
    prefix = srv._shm_prefix
    srv.stop()
    assert srv.leftover_processes() == [], "tritonserver or a stub survived stop()"
    assert _shm_left(prefix) == [], "shared-memory regions left in /dev/shm"


def _png(color=(200, 30, 30), size=(48, 36)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _inputs(manifest: Manifest, name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs for a network, token ids inside the vocabulary."""
    rng = np.random.default_rng(seed)
    spec = manifest.models[name]
    out = {}
    for t in spec.inputs:
        shape = [batch] + [7 if d == -1 else d for d in t.shape[1:]]
        if t.name == "input_ids":
            out[t.name] = rng.integers(1000, 2000, size=shape).astype(np.int64)
        elif t.name == "attention_mask":
            m = np.ones(shape, np.int64)
            m[:, -2:] = 0
            out[t.name] = m
        elif t.name == "alpha":
            out[t.name] = rng.random(shape).astype(np.float32)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _feeds(spec, batch: int, image: bytes) -> dict[str, object]:
    """Inputs for a helper, Model B's model, clipq_info or an ensemble, by tensor name and type."""
    rng = np.random.default_rng(0)
    feeds: dict[str, object] = {}
    for t in spec.inputs:
        if t.name == "image":
            feeds[t.name] = [image] * batch
        elif t.dtype == "bytes":
            feeds[t.name] = ["manifest" if t.name == "request" else "what colour is the circle?"] * batch
        elif t.name == "alpha":
            feeds[t.name] = np.full((batch, 1), 0.5, np.float32)
        elif t.name == "n":
            feeds[t.name] = np.full((batch, 1), 2, np.int32)
        else:  # embeddings: unit rows
            v = rng.standard_normal((batch, t.shape[-1])).astype(np.float32)
            feeds[t.name] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return feeds


def _triton(server, protocol: str, manifest: Manifest, **kw):
    from clipq.runtime.backends.triton import TritonBackend

    return TritonBackend(server.grpc_url if protocol == "grpc" else server.http_url, manifest, **kw)


# -- the server ------------------------------------------------------------------------------------
def test_every_model_and_ensemble_is_ready_and_answers(server, manifest):
    b = _triton(server, "grpc", manifest)
    b.health()
    good = _png()
    for name, kind in server.rendered.models.items():
        assert b.model_ready(name), name
        spec = b.spec(name)
        feeds = _inputs(manifest, name, 2) if kind == "network" else _feeds(spec, 2, good)
        if kind == "info":
            feeds = _feeds(spec, 1, good)  # max batch 1
        out = b.infer(name, feeds)
        assert set(out) == {t.name for t in spec.outputs}, name
        for t in spec.outputs:
            assert out[t.name].shape[0] == len(next(iter(feeds.values()))), (name, t.name)
            if t.dtype == "float32":
                assert np.isfinite(out[t.name]).all(), (name, t.name)
    b.close()


def test_a_bad_image_fails_only_its_own_request(server, manifest):
    """Concurrent requests are batched together by the server; the corrupt one alone fails."""
    good, bad = _png(), b"\x89PNG\r\n\x1a\n-truncated-"
    results: dict[int, object] = {}

    def send(i: int) -> None:
        b = _triton(server, "grpc" if i % 2 else "http", manifest)
        images = [good, good, bad, good] if i == 5 else [good] * 4
        try:
            results[i] = b.infer("embed_image", {"image": images})["image_embeds"]
        except Exception as e:  # noqa: BLE001 - asserted below
            results[i] = e
        finally:
            b.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results[5], InvalidImageError) and results[5].index == 2, results[5]
    expected = results[0]
    assert isinstance(expected, np.ndarray)
    for i, r in results.items():
        if i != 5:
            assert isinstance(r, np.ndarray), (i, r)
            np.testing.assert_allclose(r, expected, atol=ATOL)
    b = _triton(server, "grpc", manifest)
    b.health()  # still serving
    assert b.infer("embed_image", {"image": [good]})["image_embeds"].shape[0] == 1
    with pytest.raises(InvalidTextError, match="empty"):
        b.infer("embed_text", {"text": ["fine", "   "]})
    b.close()


def test_a_model_that_fails_to_load_gives_a_clear_error(artifacts, tmp_path):
    from clipq.serving.server import TritonServer

    require_triton()
    rendered = render_repository(artifacts, tmp_path / "r", RenderOptions(warmup=False), models=["clip_image"])
    repo = rendered.path
    graph = rendered.model_repository / "clip_image" / "1" / "model.onnx"
    data = bytearray(graph.read_bytes())
    graph.unlink()  # a hard link to the artifacts: write a corrupt copy instead
    data[-3] ^= 0xFF
    graph.write_bytes(bytes(data))
    srv = TritonServer(repo)
    with pytest.raises(ServerError) as info:
        srv.start()
    msg = str(info.value)
    assert "clip_image" in msg and "sha256" in msg and "failed to load" in msg
    assert srv.leftover_processes() == []
    assert _shm_left(srv._shm_prefix) == []


def test_shutdown_leaves_no_process_behind(artifacts, tmp_path):
    from clipq.serving.server import TritonServer, _alive, _children

    require_triton()
    repo = render_repository(artifacts, tmp_path / "r", models=["clip_text", "tokenize_clip", "embed_text"]).path
    with TritonServer(repo) as srv:
        pid = srv.pid
        stubs = _children(pid)
        # one stub process per Python-backend model instance: clip_text, tokenize_clip and the fused embed_text
        assert len(stubs) == 3
    assert not _alive(pid) and not any(_alive(p) for p in stubs)
    assert _shm_left(srv._shm_prefix) == []


def test_clipq_serve_command_starts_prints_endpoints_and_stops_on_sigint(artifacts, tmp_path):
    require_triton()
    # only this command module: `clipq serve` as the console script runs it
    script = (
        "import argparse, sys\n"
        "from clipq.app.commands import serve\n"
        "p = argparse.ArgumentParser(prog='clipq'); serve.add_parser(p.add_subparsers(dest='command'))\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    cmd = [sys.executable, "-c", script, "serve", str(artifacts), "--http-port", "0", "--grpc-port", "0",
           "--metrics-port", "-1", "--repository", str(tmp_path / "repo")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        out = "".join(lines)
        assert "ready in" in out and "gRPC     grpc://127.0.0.1:" in out and "HTTP     http://127.0.0.1:" in out, out
        assert "CudaDriverHelper" not in out and "pinned" not in out, "harmless CUDA messages must be filtered"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "repo")], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left behind: {left}"


# -- one suite, every backend ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(manifest):
    from clipq.runtime.backends.ort import OrtBackend

    b = OrtBackend(manifest, variant="fp32")
    yield b
    b.close()


@pytest.fixture(params=["ort", "grpc", "http"])
def backend(request, manifest):
    from clipq.runtime.backends.ort import OrtBackend

    if request.param == "ort":
        b = OrtBackend(manifest, variant="fp32")
    else:
        from clipq.runtime import connect

        srv = request.getfixturevalue("server")
        b = connect(manifest, server=srv.grpc_url if request.param == "grpc" else srv.http_url)
    yield b
    b.close()


@pytest.mark.parametrize("name", NETWORKS)
def test_networks_agree_with_in_process_fp32(backend, reference, manifest, name):
    assert name in manifest.models, f"{name} not in the tiny artifacts (tests/conftest.py trains every task)"
    feeds = _inputs(manifest, name, 3, seed=1)
    got, want = backend.infer(name, feeds), reference.infer(name, feeds)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        np.testing.assert_allclose(got[k], want[k], atol=ATOL, rtol=0)


def test_spec_and_health(backend, manifest):
    backend.health()
    assert backend.spec("clip_image") == manifest.models["clip_image"]


def test_batches_over_max_batch_size_are_split(backend, reference, manifest):
    n = manifest.models["clip_image"].max_batch_size * 2 + 3
    feeds = _inputs(manifest, "clip_image", n, seed=2)
    got = backend.infer("clip_image", feeds)["image_embeds"]
    assert got.shape[0] == n
    np.testing.assert_allclose(got, reference.infer("clip_image", feeds)["image_embeds"], atol=ATOL, rtol=0)


def test_bad_inputs_raise_the_same_errors(backend, manifest):
    x = _inputs(manifest, "clip_image", 2)["pixel_values"]
    with pytest.raises(DTypeError):
        backend.infer("clip_image", {"pixel_values": x.astype(np.float64)})
    with pytest.raises(ShapeError):
        backend.infer("clip_image", {"pixel_values": x[0]})
    with pytest.raises(ShapeError):
        backend.infer("clip_image", {"pixel_values": x[:, :, :5]})
    with pytest.raises(InvalidInputError):
        backend.infer("clip_image", {})
    with pytest.raises(InvalidInputError):
        backend.infer("clip_image", {"pixel_values": x, "extra": x})


def test_task_classes_work_unchanged(backend, reference, manifest):
    from clipq.runtime import ReadingModel
    from clipq.runtime.backends.ort import OrtBackend
    from clipq.runtime.tasks import ClipEncoder, EnsembleHead, PromptEncoder, PromptRegressor, VqaModel

    images = [_png(), _png((20, 200, 40), (30, 60)), _png((10, 10, 220), (64, 64))]
    texts = ["a red circle", "two green squares on the left", "blue"]
    enc, ref = ClipEncoder(backend), ClipEncoder(reference)
    # against a clipq server the task classes send bytes and strings to its ensembles
    assert enc.remote == (not isinstance(backend, OrtBackend)) and not ref.remote
    np.testing.assert_allclose(enc.encode_images(images), ref.encode_images(images), atol=ATOL)
    np.testing.assert_allclose(enc.encode_texts(texts), ref.encode_texts(texts), atol=ATOL)
    np.testing.assert_allclose(PromptRegressor(backend).predict(images), PromptRegressor(reference).predict(images),
                               atol=ATOL)
    np.testing.assert_allclose(PromptEncoder(backend).encode(texts), PromptEncoder(reference).encode(texts),
                               atol=ATOL)
    a = PromptRegressor(reference).predict(images)
    b = PromptEncoder(reference).encode(texts)
    np.testing.assert_allclose(EnsembleHead(backend).fuse(a, b, 0.3), EnsembleHead(reference).fuse(a, b, 0.3),
                               atol=ATOL)
    got = VqaModel(backend).ask(images, "what colour is it?")
    want = VqaModel(reference).ask(images, "what colour is it?")
    assert [g.answer for g in got] == [w.answer for w in want]
    np.testing.assert_allclose([g.prob for g in got], [w.prob for w in want], atol=ATOL)
    read, read_ref = ReadingModel(backend), ReadingModel(reference)
    assert read.remote == enc.remote
    got, want = (r.read(images, "what word is written ?", top_k=4) for r in (read, read_ref))
    assert [g.answer for g in got] == [w.answer for w in want] and [len(g.top) for g in got] == [4] * 3
    np.testing.assert_allclose([[s for _, s in g.top] for g in got], [[s for _, s in w.top] for w in want], atol=ATOL)
    with pytest.raises(InvalidImageError) as e:
        read.read([images[0], b"not an image"], "what word is written ?")
    assert e.value.index == 1
    with pytest.raises(InvalidImageError) as e:
        enc.encode_images([images[0], b"not an image"])
    assert e.value.index == 1
    with pytest.raises(InvalidTextError) as t:
        enc.encode_texts(["fine", "  "])
    assert t.value.index == 1


# -- the ensembles compute what the task classes compute ---------------------------------------------
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensembles_match_the_client_side_pipeline(server, reference, manifest, protocol):
    import json

    from clipq.runtime.img2prompt import ImageToPrompt
    from clipq.runtime.tasks import ClipEncoder, PromptEncoder, PromptRegressor, VqaModel

    b = _triton(server, protocol, manifest)
    images = [_png(), _png((20, 200, 40), (30, 60))]
    texts = ["a red circle", "two green squares on the left " * 20]  # the second is cut at max_length
    enc = ClipEncoder(reference)
    img = enc.encode_images(images)
    np.testing.assert_allclose(b.infer("embed_image", {"image": images})["image_embeds"], img, atol=ATOL)
    out = b.infer("embed_text", {"text": texts})
    want_txt, want_cut = enc.encode_texts(texts, return_truncated=True)
    np.testing.assert_allclose(out["text_embeds"], want_txt, atol=ATOL)
    assert out["truncated"].reshape(-1).tolist() == want_cut == [False, True]
    np.testing.assert_allclose(b.infer("embed_prompt", {"text": texts})["sentence_embeds"],
                               PromptEncoder(reference).encode(texts), atol=ATOL)
    probs = b.infer("ask", {"image": images, "question": ["what colour is it?"] * 2})["probs"]
    want, _ = VqaModel(reference).probs(img, ["what colour is it?"] * 2)
    np.testing.assert_allclose(probs, want, atol=ATOL)
    np.testing.assert_allclose(b.infer("ask_embeds", {"image_embeds": img, "question": ["what colour is it?"] * 2})[
        "probs"], want, atol=ATOL)
    a = PromptRegressor(reference).predict(images)
    np.testing.assert_allclose(b.infer("predict_prompt", {"image": images})["prompt_embeds"], a, atol=ATOL)
    # the reading model's bytes-in and text-in models: its own towers, not CLIP's
    read_img = b.infer("read_image", {"image": images})["image_embeds"]
    pixels = enc.preprocessor(images)
    np.testing.assert_allclose(read_img, reference.infer("reading_image", {"pixel_values": pixels})["image_embeds"],
                               atol=ATOL)
    out = b.infer("read_text", {"text": texts})
    ids = enc.tokenizer(texts).as_inputs()
    np.testing.assert_allclose(out["text_embeds"], reference.infer("reading_text", ids)["text_embeds"], atol=ATOL)
    assert out["truncated"].reshape(-1).tolist() == [False, True]
    # describe: Model A, CLIP, Model B's neighbours and the ensemble head all in the server
    d = b.infer("describe", {"image": images, "alpha": np.full((2, 1), 0.3, np.float32),
                             "n": np.full((2, 1), 2, np.int32)})
    local = ImageToPrompt(enc.backend).describe(images, alpha=0.3, n=2)  # in process: the artifacts' knn/ and head
    np.testing.assert_allclose(d["a_embeds"], a, atol=ATOL)
    np.testing.assert_allclose(d["image_embeds"], img, atol=ATOL)
    np.testing.assert_allclose(d["prompt_embeds"], np.stack([x.embedding for x in local]), atol=ATOL)
    for row, want_d in zip(d["description"].reshape(-1), local):
        got = json.loads(row)
        assert [t for t, _ in got["closest"]] == [t for t, _ in want_d.closest] and len(got["closest"]) == 2
        assert [t for t, _ in got["neighbours"]] == [t for t, _ in want_d.neighbours]
        assert got["alpha"] == pytest.approx(0.3) and got["k"] == want_d.k
    with pytest.raises(InvalidInputError, match="alpha"):
        b.infer("describe", {"image": images[:1], "alpha": np.full((1, 1), 1.5, np.float32),
                             "n": np.ones((1, 1), np.int32)})
    b.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_backend(server, reference, manifest, protocol):
    from clipq.runtime.backends.triton import AsyncTritonBackend

    url = server.grpc_url if protocol == "grpc" else server.http_url
    feeds = _inputs(manifest, "clip_image", 40, seed=3)
    want = reference.infer("clip_image", feeds)["image_embeds"]

    async def main():
        async with AsyncTritonBackend(url, manifest, max_in_flight=4) as b:
            await b.health()
            whole = await b.infer("clip_image", feeds)  # 40 > max batch: chunks run concurrently
            rows = await asyncio.gather(*(b.infer("clip_image", {"pixel_values": feeds["pixel_values"][i:i + 1]})
                                          for i in range(8)))
            return whole["image_embeds"], np.concatenate([r["image_embeds"] for r in rows])

    whole, rows = asyncio.run(main())
    np.testing.assert_allclose(whole, want, atol=ATOL)
    np.testing.assert_allclose(rows, want[:8], atol=ATOL)


def test_unknown_model_and_stopped_server(server, manifest):
    b = _triton(server, "grpc", manifest, retries=0)
    with pytest.raises(InferenceError, match="no model 'nope'"):
        b.infer("nope", {"x": np.zeros((1, 1), np.float32)})
    b.close()
    with pytest.raises(BackendUnavailable):
        b.infer("clip_image", _inputs(manifest, "clip_image", 1))
