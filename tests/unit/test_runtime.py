"""The torch-free runtime on the shared artifacts: backends, task classes, errors, and no torch import.

The artifacts are the session's test-preset models, trained for a few steps and exported (fp32 +
int8) by ``tiny_artifacts`` in tests/conftest.py. The runtime itself is checked without torch in a
subprocess that blocks the import; here torch is used only as the reference the runtime must match.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _require import require_module
from PIL import Image

from clipq.runtime.backends.ort import (  # noqa: E402
    CPU,
    CUDA,
    TENSORRT,
    OrtBackend,
    batch_profile,
    choose_providers,
    tensorrt_provider_options,
    trt_cache_key,
)
from clipq.runtime.connect import connect  # noqa: E402
from clipq.runtime.errors import (  # noqa: E402
    ArtifactError,
    BackendUnavailable,
    ClipqError,
    DTypeError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    ShapeError,
)
from clipq.runtime.img2prompt import ImageToPrompt  # noqa: E402
from clipq.runtime.manifest import Manifest, sha256_file  # noqa: E402
from clipq.runtime.preprocess import ImagePreprocessor  # noqa: E402
from clipq.runtime.tasks import (  # noqa: E402
    Answer,
    ClipEncoder,
    EnsembleHead,
    PromptEncoder,
    PromptRegressor,
    VqaModel,
)


@pytest.fixture(scope="module")
def toy(tiny_artifacts) -> Path:
    """The shared exported test-preset artifacts (tests/conftest.py); read-only here."""
    return tiny_artifacts


@pytest.fixture(scope="module")
def backend(toy):
    # fp32 graphs: dynamic int8 scales activations per batch, so chunked and whole-batch results
    # agree only to ~1e-3 there (int8 parity is test_export's); the tests below compare to 1e-6
    b = connect(toy, threads=1, variant="fp32")
    yield b
    b.close()


@pytest.fixture(scope="module")
def dims(toy) -> tuple[int, int, int]:
    """(image size, CLIP embedding dim, prompt embedding dim) of the shared artifacts."""
    m = Manifest.load(toy)
    return int(m.preprocessing["size"]), int(m.dims["clip_embed"]), int(m.dims["prompt_embed"])


def _img(seed: int, w: int = 40, h: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# -- backend --------------------------------------------------------------------------------------
def test_connect_gives_ort_backend_on_cpu(backend, toy):
    assert isinstance(backend, OrtBackend)
    assert backend.providers[-1] == CPU
    backend.health()
    assert backend.active_providers("clip_image")[0] == CPU


def test_provider_order_is_best_first():
    assert choose_providers(None, [CPU, CUDA, TENSORRT]) == [TENSORRT, CUDA, CPU]
    assert choose_providers(None, [CPU, "AzureExecutionProvider"]) == [CPU]
    assert choose_providers([CUDA], [CPU]) == [CPU]  # asked-for GPU missing: CPU fallback, with a warning
    with pytest.raises(BackendUnavailable):
        choose_providers([CUDA], ["AzureExecutionProvider"])


def test_backend_checks_names_dtypes_and_shapes(backend, dims):
    SIZE, DIM, _ = dims
    good = {"pixel_values": np.zeros((2, 3, SIZE, SIZE), np.float32)}
    assert backend.infer("clip_image", good)["image_embeds"].shape == (2, DIM)
    with pytest.raises(DTypeError, match="float32"):
        backend.infer("clip_image", {"pixel_values": np.zeros((2, 3, SIZE, SIZE), np.float64)})
    with pytest.raises(ShapeError, match="axis 2"):
        backend.infer("clip_image", {"pixel_values": np.zeros((2, 3, SIZE + 1, SIZE), np.float32)})
    with pytest.raises(ShapeError, match="rank"):
        backend.infer("clip_image", {"pixel_values": np.zeros((3, SIZE, SIZE), np.float32)})
    with pytest.raises(InvalidInputError, match="needs input"):
        backend.infer("clip_text", {"input_ids": np.zeros((1, 3), np.int64)})
    with pytest.raises(ShapeError, match="batch size"):
        backend.infer("clip_text", {"input_ids": np.zeros((2, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)})
    with pytest.raises(ArtifactError, match="no model 'nope'"):
        backend.infer("nope", good)


def test_variant_fallback_and_warmup(toy):
    m = Manifest.load(toy)
    assert "fp16" not in m.model("clip_image").variants and "int8" not in m.model("ensemble_head").variants
    b = OrtBackend(toy, variant="fp16", threads=1, warmup=True, models=["clip_image", "ensemble_head"])
    assert b.variant_for("clip_image") == m.model("clip_image").default_variant  # no fp16 graph: the default
    assert OrtBackend(toy, variant="int8", threads=1).variant_for("ensemble_head") == "fp32"  # no int8 head
    assert OrtBackend(toy, variant="int8", threads=1).variant_for("clip_text") == "int8"
    assert OrtBackend(toy, variant={"clip_text": "fp32"}, threads=1).variant_for("clip_text") == "fp32"
    b.close()
    with pytest.raises(BackendUnavailable):
        b.infer("clip_text", {"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)})


def test_hash_mismatch_and_missing_file_name_the_file(tiny_artifacts_copy):
    root = tiny_artifacts_copy
    g = root / "onnx" / "clip_text.onnx"
    data = bytearray(g.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    g.write_bytes(bytes(data))
    b = connect(root, threads=1, variant="fp32")
    with pytest.raises(ArtifactError, match="onnx/clip_text.onnx"):
        b.infer("clip_text", {"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)})
    (root / "onnx" / "vqa.onnx").unlink()
    with pytest.raises(ArtifactError, match="onnx/vqa.onnx"):
        connect(root)


def test_connect_rejects_bad_server_url(toy):
    with pytest.raises(ClipqError, match="grpc://"):
        connect(toy, server="localhost:8001")


def test_tensorrt_profile_and_cache_key(toy, dims, tmp_path):
    SIZE = dims[0]
    m = Manifest.load(toy)
    prof = batch_profile(m, m.model("clip_text"))
    tb, tl = m.model("clip_text").max_batch_size, m.tokenizers["clip"]["max_length"]
    ib = m.model("clip_image").max_batch_size
    assert prof["min"]["input_ids"] == (1, 1) and prof["max"]["input_ids"] == (tb, tl)
    assert batch_profile(m, m.model("clip_image"))["max"]["pixel_values"] == (ib, 3, SIZE, SIZE)
    fp = {"gpu": "NVIDIA H100", "compute_capability": "9.0", "tensorrt": "10.9"}
    k = trt_cache_key("abc", prof, True, fp)
    assert k == trt_cache_key("abc", prof, True, fp)  # stable across restarts
    assert k != trt_cache_key("abc", prof, True, {**fp, "gpu": "NVIDIA H200"})
    assert k != trt_cache_key("abc", prof, True, {**fp, "tensorrt": "10.10"})
    assert k != trt_cache_key("abc", batch_profile(m, m.model("clip_image")), True, fp)
    assert k != trt_cache_key("abd", prof, True, fp)
    opts = tensorrt_provider_options(m, m.model("clip_text"), tmp_path / "trt_cache")  # not in the shared fixture
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_profile_max_shapes"] == f"input_ids:{tb}x{tl},attention_mask:{tb}x{tl}"


# -- tasks ----------------------------------------------------------------------------------------
def test_clip_encoder_images_any_form_and_chunks(toy, dims, tmp_path):
    DIM = dims[1]
    backend = OrtBackend(toy, variant="fp32", threads=1)  # as the `backend` fixture: see there
    enc = ClipEncoder(backend)
    assert enc.dim == DIM
    # trained artifacts carry the checkpoint's id (indexes built at training time share it)
    assert enc.model_id == backend.manifest.extra["clip_model_id"] == sha256_file(
        Path(backend.manifest.root) / "checkpoints/clip/model.safetensors")
    arrs = [_img(i) for i in range(6)]
    path = tmp_path / "x.png"
    path.write_bytes(_png(arrs[0]))
    e_arr = enc.encode_images(arrs, batch_size=32)
    assert e_arr.shape == (6, DIM) and e_arr.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e_arr, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_images(arrs, batch_size=2), e_arr, atol=1e-6)  # 3 backend calls
    np.testing.assert_allclose(enc.encode_images(np.stack(arrs)), e_arr, atol=1e-6)
    for form in (str(path), path, _png(arrs[0]), Image.fromarray(arrs[0]), arrs[0]):
        np.testing.assert_allclose(enc.encode_images([form])[0], e_arr[0], atol=1e-6)
    # the whole path (decode, resize, normalise, int8 graph) against PyTorch's tower on the same images
    torch = require_module("torch")
    from clipq.models.export_wrappers import ClipImageTower
    from clipq.models.io import load_clip

    pre = ImagePreprocessor.from_manifest(backend.manifest)
    with torch.inference_mode():
        ref = ClipImageTower(load_clip(backend.manifest).eval())(torch.from_numpy(pre(arrs))).numpy()
    np.testing.assert_allclose(e_arr, ref, atol=1e-5)
    assert enc.encode_images([]).shape == (0, DIM)


def test_bad_image_error_names_index_across_chunks(backend):
    enc = ClipEncoder(backend)
    items = [_img(0), _img(1), _img(2), b"not an image at all", _img(4)]
    with pytest.raises(InvalidImageError) as ei:
        enc.encode_images(items, batch_size=2)
    assert ei.value.index == 3 and "item 3" in str(ei.value)
    with pytest.raises(DTypeError) as ei:
        enc.encode_images([_img(0), _img(1).astype(np.float32)])
    assert ei.value.index == 1
    with pytest.raises(ShapeError):
        enc.encode_images([np.zeros((8, 8, 2), np.uint8)])
    one_px = enc.encode_images([np.full((1, 1, 3), 200, np.uint8)])  # a valid image: upsampled, not refused
    assert one_px.shape == (1, enc.dim) and np.isfinite(one_px).all()


def test_clip_encoder_texts_truncation_and_errors(backend):
    enc = ClipEncoder(backend)
    texts = ["a red circle", "what color is the star on the left ? " * 40, b"two blue squares"]
    emb, truncated = enc.encode_texts(texts, batch_size=2, return_truncated=True)
    assert emb.shape == (3, enc.dim) and truncated == [False, True, False]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(texts, batch_size=64), emb, atol=1e-6)
    for bad, idx in ((["ok", ""], 1), (["ok", "fine", b"\xff\xfe"], 2), (["ok", None], 1), (["  "], 0)):
        with pytest.raises(InvalidTextError) as ei:
            enc.encode_texts(bad)
        assert ei.value.index == idx


def test_vqa_answers(backend):
    vqa = VqaModel(backend)
    imgs = [_img(i) for i in range(5)]
    qs = ["what color is the circle ?", "how many stars ?", "what color ?", "how many ?", "is it red ?"]
    answers = vqa.ask(imgs, qs, top_k=3, batch_size=2)
    assert len(answers) == 5 and all(isinstance(a, Answer) for a in answers)
    for a in answers:
        assert a.answer in backend.manifest.answer_vocab and len(a.top) == 3 and a.top[0] == (a.answer, a.prob)
        assert [p for _, p in a.top] == sorted([p for _, p in a.top], reverse=True)
        assert not a.truncated
        json.dumps(a.to_dict())
    one_image = vqa.ask(imgs[0], qs)  # one image, several questions
    assert [a.answer for a in one_image][0] == answers[0].answer
    assert vqa.ask(imgs[:2], "what color is the circle ? " * 40)[0].truncated
    probs, _ = vqa.probs(ClipEncoder(backend).encode_images(imgs), qs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ShapeError):
        vqa.ask(imgs[:2], qs[:3])


def test_prompt_models_and_ensemble(backend, dims):
    PDIM = dims[2]
    imgs = [_img(i) for i in range(3)]
    a = PromptRegressor(backend).predict(imgs)
    b = PromptEncoder(backend).encode(["a red star", "two blue circles", "a green square on the left"])
    assert a.shape == b.shape == (3, PDIM)
    head = EnsembleHead(backend)
    for alpha in (0.3, [0.0, 0.5, 1.0]):
        al = np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1, 1), (3, 1))
        want = al * a + (1 - al) * b
        np.testing.assert_allclose(head.fuse(a, b, alpha), want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(ShapeError):
        head.fuse(a, b[:2], 0.5)
    with pytest.raises(InvalidInputError):
        head.fuse(a, b, 1.5)


# -- no torch -------------------------------------------------------------------------------------
_NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("torch", "transformers", "torchvision", "optimum", "clipq.models", "clipq.export")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import clipq.runtime as rt

    backend = rt.connect(sys.argv[1], threads=1)
    enc = rt.ClipEncoder(backend)
    img = enc.encode_images([np.full((20, 30, 3), 120, np.uint8)])
    txt = enc.encode_texts(["a red circle"])
    ans = rt.VqaModel(backend).ask(np.full((20, 30, 3), 120, np.uint8), "what color ?")
    assert img.shape == (1, enc.dim) and txt.shape == (1, enc.dim) and ans[0].answer
    leaked = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
    assert not leaked, leaked
    print("OK", float(img @ txt.T))
    """
)


def test_runtime_answers_queries_without_torch(toy, tmp_path):
    script = tmp_path / "no_torch.py"
    script.write_text(_NO_TORCH)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, str(script), str(toy)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("OK")


# -- CLI: ask and describe ------------------------------------------------------------------------
def test_ask_and_describe_commands(tiny_artifacts_copy, tmp_path, capsys):
    from clipq.app.cli import main
    from clipq.runtime.fusion import KnnPromptFusion

    root = tiny_artifacts_copy
    m = Manifest.load(root)
    for rel in [k for k in m.files if k.startswith("knn/")]:  # start without Model B
        del m.files[rel]
    m.save()
    img = tmp_path / "scene.png"
    img.write_bytes(_png(_img(7)))
    questions = ["what color is the circle ?", "how many ?"]
    assert main(["ask", str(img), *questions, "--artifacts", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    with connect(root) as ref_backend:  # the same questions in process: the CLI prints what the runtime answers
        want = VqaModel(ref_backend).ask(str(img), questions, top_k=3)
        want2 = VqaModel(ref_backend).ask(str(img), ["what color ?"], top_k=2)[0]
    assert [a["question"] for a in out["answers"]] == questions
    for got, w in zip(out["answers"], want):
        assert got["answer"] == w.answer and got["answer"] in m.answer_vocab and not got["truncated"]
        assert got["prob"] == pytest.approx(w.prob, abs=1e-6)
        assert [t for t, _ in got["top"]] == [t for t, _ in w.top] and len(got["top"]) == 3
        np.testing.assert_allclose([p for _, p in got["top"]], [p for _, p in w.top], atol=1e-6)
    assert main(["ask", str(img), "what color ?", "--artifacts", str(root), "-k", "2"]) == 0
    assert capsys.readouterr().out == (f"Q: what color ?\nA: {want2.answer} ({want2.prob:.2f})   others: "
                                       f"{want2.top[1][0]} {want2.top[1][1]:.2f}\n")

    # no Model B yet: a clear error (exit code 2), not a traceback
    assert main(["describe", str(img), "--artifacts", str(root)]) == 2
    assert "knn" in capsys.readouterr().err

    backend = connect(root, threads=1)
    enc = ClipEncoder(backend)
    prompts = ["a red star", "two blue circles", "a green square on the left", "three yellow stars"]
    fusion = KnnPromptFusion.from_embeddings(enc.encode_images([_img(i) for i in range(4)]),
                                             PromptEncoder(backend).encode(prompts), prompts,
                                             model_id=enc.model_id, k=2)
    backend.close()
    import shutil

    shutil.rmtree(root / "knn")
    fusion.save(root / "knn")
    m = Manifest.load(root)
    m.add_tree("knn")
    m.extra["img2prompt"] = {"alpha": 0.7}
    m.save()
    assert main(["describe", str(img), "--artifacts", str(root), "--json", "-k", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    with connect(root) as ref_backend:  # the same image in process, with Model B and the recorded alpha
        want = ImageToPrompt(ref_backend).describe([str(img)], n=2)[0]
        want_02 = ImageToPrompt(ref_backend).describe([str(img)], alpha=0.2, n=3)[0]
    assert rows[0]["alpha"] == want.alpha == 0.7 and rows[0]["k"] == want.k and "embedding" not in rows[0]
    assert [r["prompt"] for r in rows[0]["closest"]] == [t for t, _ in want.closest] and len(want.closest) == 2
    np.testing.assert_allclose([r["score"] for r in rows[0]["closest"]], [s for _, s in want.closest], atol=1e-6)
    assert [r["prompt"] for r in rows[0]["neighbours"]] == [t for t, _ in want.neighbours]
    assert {t for t, _ in want.closest} <= set(prompts)
    assert main(["describe", str(img), "--artifacts", str(root), "--alpha", "0.2"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"{img}  (alpha 0.20, K {want_02.k})"
    assert text[1:4] == [f"  {s:.3f}  {t}" for t, s in want_02.closest]


def test_prompt_text_graph_is_real_minilm(backend):
    """The exported prompt_text graph (run without torch) gives all-MiniLM-L6-v2's embeddings,
    against the reference recorded once with sentence-transformers (tests/data/minilm_reference.json)."""
    ref = json.loads((Path(__file__).parents[1] / "data" / "minilm_reference.json").read_text())
    ours = PromptEncoder(backend).encode(ref["texts"])
    assert np.abs(ours - np.asarray(ref["embeddings"], np.float32)).max() < 1e-4
