"""A real tritonserver serving what the in-process runtime runs: the recorded CPU default and fused models.

Over ``tiny_ov_artifacts`` (tests/conftest.py: the CLIP towers record an OpenVINO ``ov_fp32`` CPU
default measured on this host). The ``cpu-python`` repository rendered with default options ships
each tower's IR next to onnxruntime's default graph, and serves ``embed_image`` / ``embed_text`` as
fused models. ``clip_text``'s small manifest is then edited to say it was measured on a CPU with
other flags, so the same server also shows the fallback: onnxruntime's default, with the notice in
the server's log. Where no tritonserver can run: skipped, or a failure under ``make test``
(tests/_require.py).
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from _require import require_module, require_triton

from clipq.runtime.errors import InvalidImageError, InvalidTextError
from clipq.runtime.manifest import Manifest
from clipq.serving import render_repository

pytestmark = [pytest.mark.triton, pytest.mark.timeout(300)]
require_module("tritonclient.grpc")
require_module("openvino")

ATOL = 1e-5


def _png(color=(200, 30, 30), size=(48, 36)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tiny_ov_artifacts, tmp_path_factory):
    from clipq.runtime.backends.common import cpu_facts
    from clipq.serving.server import TritonServer

    require_triton()
    repo = render_repository(tiny_ov_artifacts, tmp_path_factory.mktemp("repo") / "rendered",
                             models=["clip_image", "clip_text", "preprocess_image", "tokenize_clip", "embed_image",
                                     "embed_text", "clipq_info"])
    assert repo.models["embed_image"] == repo.models["embed_text"] == "fused"
    mini_path = repo.model_repository / "clip_text" / "1" / "manifest.json"
    mini = json.loads(mini_path.read_text())
    rec = mini["models"]["clip_text"]["meta"]["cpu_default"]
    rec["measured_on"] = {**cpu_facts(), "cpu": "Another CPU",
                          "flags": {k: not v for k, v in cpu_facts()["flags"].items()}}
    mini_path.write_text(json.dumps(mini))
    srv = TritonServer(repo.path)
    srv.start()
    yield srv
    srv.stop()


def _log(server) -> str:
    return "\n".join(server.log)


def test_networks_run_the_recorded_cpu_default_or_fall_back_with_a_notice(served, tiny_ov_artifacts):
    from clipq.runtime.backends.ort import OrtBackend
    from clipq.runtime.backends.triton import TritonBackend
    from clipq.runtime.connect import connect

    log = _log(served)
    assert "clip_image: runs openvino/ov_fp32" in log
    assert "embed_image: preprocess_image + clip_image in one model, clip_image runs openvino/ov_fp32" in log
    assert "embed_text: tokenize + clip_text in one model, clip_text runs openvino/ov_fp32" in log
    # clip_text's record says another CPU: onnxruntime's default variant, and the re-measure command
    assert "Another CPU" in log and "clipq tune-engines" in log and "clip_text: runs OrtBackend/" in log

    m = Manifest.load(tiny_ov_artifacts)
    local = connect(tiny_ov_artifacts)  # in process on this host: OpenVINO for both towers
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((3, *m.models["clip_image"].inputs[0].shape[1:])).astype(np.float32)
    b = TritonBackend(served.grpc_url, m)
    try:
        got = b.infer("clip_image", {"pixel_values": pixels})["image_embeds"]
        np.testing.assert_allclose(got, local.infer("clip_image", {"pixel_values": pixels})["image_embeds"], atol=ATOL)
        ids = rng.integers(1, 50, size=(2, 9)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        fallback = OrtBackend(m, providers=["CPUExecutionProvider"])  # onnxruntime's default variant
        np.testing.assert_allclose(b.infer("clip_text", feeds)["text_embeds"],
                                   fallback.infer("clip_text", feeds)["text_embeds"], atol=ATOL)
    finally:
        b.close()
        local.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_fused_models_agree_with_the_in_process_runtime(served, tiny_ov_artifacts, protocol):
    from clipq.runtime.backends.triton import TritonBackend
    from clipq.runtime.connect import connect
    from clipq.runtime.tasks import ClipEncoder

    enc = ClipEncoder(connect(tiny_ov_artifacts))
    b = TritonBackend(served.grpc_url if protocol == "grpc" else served.http_url, tiny_ov_artifacts)
    images = [_png(), _png((20, 200, 40), (30, 60))]
    texts = ["a red circle", "two green squares on the left " * 20]  # the second is cut at max_length
    try:
        np.testing.assert_allclose(b.infer("embed_image", {"image": images})["image_embeds"],
                                   enc.encode_images(images), atol=ATOL)
        out = b.infer("embed_text", {"text": texts})
        want, cut = enc.encode_texts(texts, return_truncated=True)
        np.testing.assert_allclose(out["text_embeds"], want, atol=ATOL)
        assert out["truncated"].reshape(-1).tolist() == cut == [False, True]
        # the thin client's bytes-in path reaches the fused models under the ensembles' names
        thin = ClipEncoder(connect(server=served.grpc_url if protocol == "grpc" else served.http_url))
        np.testing.assert_allclose(thin.encode_texts(texts), want, atol=ATOL)
    finally:
        b.close()


def test_fused_models_batch_concurrent_requests_and_fail_only_the_bad_one(served, tiny_ov_artifacts):
    from clipq.runtime.backends.triton import TritonBackend

    good, bad = _png(), b"\x89PNG\r\n\x1a\n-truncated-"
    captions = ["a red circle", "three yellow stars on the right", "a purple cross", "one white diamond"]
    results: dict[tuple[str, int], object] = {}
    stats = TritonBackend(served.grpc_url, tiny_ov_artifacts)

    def counts(model: str) -> tuple[int, int]:
        s = stats.statistics(model)["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    before = {m: counts(m) for m in ("embed_image", "embed_text")}

    def send(i: int) -> None:
        b = TritonBackend(served.grpc_url, tiny_ov_artifacts)
        try:
            for r in range(6):
                images = [good, bad] if (i, r) == (5, 3) else [good]
                try:
                    results[("image", i * 10 + r)] = b.infer("embed_image", {"image": images})["image_embeds"]
                except Exception as e:  # noqa: BLE001 - asserted below
                    results[("image", i * 10 + r)] = e
                text = ["  "] if (i, r) == (7, 2) else [captions[(i + r) % len(captions)]]
                try:
                    results[("text", i * 10 + r)] = b.infer("embed_text", {"text": text})["text_embeds"]
                except Exception as e:  # noqa: BLE001 - asserted below
                    results[("text", i * 10 + r)] = e
        finally:
            b.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad_image, bad_text = results.pop(("image", 53)), results.pop(("text", 72))
    assert isinstance(bad_image, InvalidImageError) and bad_image.index == 1, bad_image
    assert isinstance(bad_text, InvalidTextError), bad_text
    assert all(isinstance(r, np.ndarray) for r in results.values()), [r for r in results.values()
                                                                       if not isinstance(r, np.ndarray)]
    images = [r for (k, _), r in results.items() if k == "image"]
    for r in images:
        np.testing.assert_allclose(r, images[0], atol=ATOL)
    # the fused models' own dynamic batcher grouped concurrent requests: fewer executions than requests
    for model in ("embed_image", "embed_text"):
        inf, exe = (a - b for a, b in zip(counts(model), before[model]))
        assert inf >= 70 and exe < inf, (model, inf, exe)
    stats.close()
