"""The torch-free runtime on a toy artifact: backends, task classes, errors, and no torch import.

The artifact here is built from hand-written ONNX graphs (onnx.helper) with the exact tensor
contracts of ``clipq.runtime.specs``, so these tests need neither torch nor an export and run in
a second or two. Export parity of the real networks is covered in ``test_export.py``.
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
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from clipq.runtime import specs  # noqa: E402
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

SIZE, DIM, PDIM, BUCKETS = 16, 8, 384, 97
ANSWERS = ["red", "blue", "green", "one", "two"]
WORDS = "a an the red blue green yellow circle square star one two three what color is how many on left right".split()


# -- toy artifact ---------------------------------------------------------------------------------
def _tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS, "?"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))


def _io(t) -> onnx.ValueInfoProto:
    dt = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}[t.dtype]
    dims = ["batch" if i == 0 else ("seq" if d < 0 else d) for i, d in enumerate(t.shape)]
    return helper.make_tensor_value_info(t.name, dt, dims)


def _image_graph(spec, w: np.ndarray) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Flatten", ["pixel_values"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["proj"]),
        helper.make_node("LpNormalization", ["proj"], [spec.outputs[0].name], axis=-1, p=2),
    ]
    return helper.make_graph(nodes, spec.name, [_io(t) for t in spec.inputs], [_io(t) for t in spec.outputs],
                             [numpy_helper.from_array(w, "W")])


def _text_nodes(prefix: str, emb: str) -> list:
    """Masked mean of embeddings of ``input_ids % BUCKETS`` -> ``{prefix}pooled`` [N, D]."""
    return [
        helper.make_node("Mod", ["input_ids", "buckets"], [f"{prefix}ids"]),
        helper.make_node("Gather", [emb, f"{prefix}ids"], [f"{prefix}tok"]),
        helper.make_node("Cast", ["attention_mask"], [f"{prefix}m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{prefix}m", "axis_last"], [f"{prefix}m3"]),
        helper.make_node("Mul", [f"{prefix}tok", f"{prefix}m3"], [f"{prefix}masked"]),
        helper.make_node("ReduceSum", [f"{prefix}masked", "axis1"], [f"{prefix}sum"], keepdims=0),
        helper.make_node("ReduceSum", [f"{prefix}m3", "axis1"], [f"{prefix}cnt"], keepdims=0),
        helper.make_node("Div", [f"{prefix}sum", f"{prefix}cnt"], [f"{prefix}pooled"]),
    ]


def _consts(emb: np.ndarray) -> list:
    return [
        numpy_helper.from_array(emb, "E"),
        numpy_helper.from_array(np.array(BUCKETS, dtype=np.int64), "buckets"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]


def _text_graph(spec, emb: np.ndarray) -> onnx.GraphProto:
    nodes = [*_text_nodes("", "E"), helper.make_node("LpNormalization", ["pooled"], [spec.outputs[0].name], axis=-1, p=2)]
    return helper.make_graph(nodes, spec.name, [_io(t) for t in spec.inputs], [_io(t) for t in spec.outputs], _consts(emb))


def _vqa_graph(spec, emb: np.ndarray, w: np.ndarray) -> onnx.GraphProto:
    nodes = [
        *_text_nodes("", "E"),
        helper.make_node("Concat", ["image_embeds", "pooled"], ["joint"], axis=1),
        helper.make_node("MatMul", ["joint", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    return helper.make_graph(nodes, spec.name, [_io(t) for t in spec.inputs], [_io(t) for t in spec.outputs],
                             [*_consts(emb), numpy_helper.from_array(w, "W")])


def _ensemble_graph(spec) -> onnx.GraphProto:
    nodes = [
        helper.make_node("Mul", ["alpha", "a_embeds"], ["wa"]),
        helper.make_node("Sub", ["one", "alpha"], ["beta"]),
        helper.make_node("Mul", ["beta", "b_embeds"], ["wb"]),
        helper.make_node("Add", ["wa", "wb"], ["mix"]),
        helper.make_node("LpNormalization", ["mix"], ["prompt_embeds"], axis=-1, p=2),
    ]
    return helper.make_graph(nodes, spec.name, [_io(t) for t in spec.inputs], [_io(t) for t in spec.outputs],
                             [numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")])


def build_toy_artifacts(root: Path, seed: int = 0) -> Manifest:
    """An artifact directory whose six graphs follow the real specs (random toy weights)."""
    rng = np.random.default_rng(seed)
    m = Manifest(root=root)
    root.mkdir(parents=True, exist_ok=True)
    for name, max_len in (("clip", 12), ("lm", 10), ("prompt", 16)):
        _tokenizer(root / "tokenizer" / name / "tokenizer.json")
        m.add_file(f"tokenizer/{name}/tokenizer.json")
        m.tokenizers[name] = {"path": f"tokenizer/{name}", "max_length": max_len}
    m.preprocessing = {"size": SIZE, "mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711], "resize": "shortest_side",
                       "resample": "bicubic", "crop": "center"}
    m.dims = {"clip_embed": DIM, "prompt_embed": PDIM}
    m.answer_vocab = list(ANSWERS)
    f32 = np.float32
    graphs = {
        specs.CLIP_IMAGE: (specs.clip_image_spec(SIZE, DIM), lambda s: _image_graph(s, rng.standard_normal((3 * SIZE * SIZE, DIM)).astype(f32))),
        specs.CLIP_TEXT: (specs.clip_text_spec(DIM), lambda s: _text_graph(s, rng.standard_normal((BUCKETS, DIM)).astype(f32))),
        specs.VQA: (specs.vqa_spec(DIM, len(ANSWERS)), lambda s: _vqa_graph(
            s, rng.standard_normal((BUCKETS, DIM)).astype(f32), rng.standard_normal((2 * DIM, len(ANSWERS))).astype(f32))),
        specs.IMG2PROMPT_A: (specs.img2prompt_a_spec(SIZE, PDIM), lambda s: _image_graph(s, rng.standard_normal((3 * SIZE * SIZE, PDIM)).astype(f32))),
        specs.ENSEMBLE_HEAD: (specs.ensemble_head_spec(PDIM), _ensemble_graph),
        specs.PROMPT_TEXT: (specs.prompt_text_spec(PDIM), lambda s: _text_graph(s, rng.standard_normal((BUCKETS, PDIM)).astype(f32))),
    }
    for name, (spec, make) in graphs.items():
        rel = f"onnx/{name}.onnx"
        _save(make(spec), root / rel)
        spec.file = m.add_file(rel)
        spec.max_batch_size = 4  # small, so that batching across calls is exercised
        m.models[name] = spec
    m.save()
    return Manifest.load(root)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return build_toy_artifacts(tmp_path_factory.mktemp("toy") / "artifacts").root


@pytest.fixture(scope="module")
def backend(toy):
    b = connect(toy, threads=1)
    yield b
    b.close()


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


def test_backend_checks_names_dtypes_and_shapes(backend):
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
    b = OrtBackend(toy, variant="int8", threads=1, warmup=True, models=["clip_image"])
    assert b.variant_for("clip_image") == "fp32"  # the toy artifact has no int8 graphs
    b.close()
    with pytest.raises(BackendUnavailable):
        b.infer("clip_text", {"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)})


def test_hash_mismatch_and_missing_file_name_the_file(tmp_path):
    root = build_toy_artifacts(tmp_path / "a").root
    g = root / "onnx" / "clip_text.onnx"
    data = bytearray(g.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    g.write_bytes(bytes(data))
    b = connect(root, threads=1)
    with pytest.raises(ArtifactError, match="onnx/clip_text.onnx"):
        b.infer("clip_text", {"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)})
    (root / "onnx" / "vqa.onnx").unlink()
    with pytest.raises(ArtifactError, match="onnx/vqa.onnx"):
        connect(root)


def test_connect_rejects_bad_server_url(toy):
    with pytest.raises(ClipqError, match="grpc://"):
        connect(toy, server="localhost:8001")


def test_tensorrt_profile_and_cache_key(toy):
    m = Manifest.load(toy)
    prof = batch_profile(m, m.model("clip_text"))
    assert prof["min"]["input_ids"] == (1, 1) and prof["max"]["input_ids"] == (4, 12)
    assert batch_profile(m, m.model("clip_image"))["max"]["pixel_values"] == (4, 3, SIZE, SIZE)
    fp = {"gpu": "NVIDIA H100", "compute_capability": "9.0", "tensorrt": "10.9"}
    k = trt_cache_key("abc", prof, True, fp)
    assert k == trt_cache_key("abc", prof, True, fp)  # stable across restarts
    assert k != trt_cache_key("abc", prof, True, {**fp, "gpu": "NVIDIA H200"})
    assert k != trt_cache_key("abc", prof, True, {**fp, "tensorrt": "10.10"})
    assert k != trt_cache_key("abc", batch_profile(m, m.model("clip_image")), True, fp)
    assert k != trt_cache_key("abd", prof, True, fp)
    opts = tensorrt_provider_options(m, m.model("clip_text"), toy / "trt_cache")
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert opts["trt_profile_max_shapes"] == "input_ids:4x12,attention_mask:4x12"


# -- tasks ----------------------------------------------------------------------------------------
def test_clip_encoder_images_any_form_and_chunks(backend, tmp_path):
    enc = ClipEncoder(backend)
    assert enc.dim == DIM
    assert enc.model_id == sha256_file(Path(backend.manifest.root) / "onnx/clip_image.onnx")
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
    # the graph is flatten -> matmul -> normalise: check against numpy on the same pixels
    pre = ImagePreprocessor.from_manifest(backend.manifest)
    import onnx.numpy_helper as nh

    w = nh.to_array(onnx.load(str(backend.manifest.root / "onnx/clip_image.onnx")).graph.initializer[0])
    ref = pre(arrs).reshape(6, -1) @ w
    np.testing.assert_allclose(e_arr, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
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
    with pytest.raises(InvalidImageError, match="1x1"):
        enc.encode_images([np.zeros((1, 1, 3), np.uint8)])


def test_clip_encoder_texts_truncation_and_errors(backend):
    enc = ClipEncoder(backend)
    texts = ["a red circle", "what color is the star on the left ? " * 5, b"two blue squares"]
    emb, truncated = enc.encode_texts(texts, batch_size=2, return_truncated=True)
    assert emb.shape == (3, DIM) and truncated == [False, True, False]
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
        assert a.answer in ANSWERS and len(a.top) == 3 and a.top[0] == (a.answer, a.prob)
        assert [p for _, p in a.top] == sorted([p for _, p in a.top], reverse=True)
        assert not a.truncated
        json.dumps(a.to_dict())
    one_image = vqa.ask(imgs[0], qs)  # one image, several questions
    assert [a.answer for a in one_image][0] == answers[0].answer
    assert vqa.ask(imgs[:2], "what color is the circle ? " * 9)[0].truncated
    probs, _ = vqa.probs(ClipEncoder(backend).encode_images(imgs), qs)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(ShapeError):
        vqa.ask(imgs[:2], qs[:3])


def test_prompt_models_and_ensemble(backend):
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
        head.fuse(a, b[:2])
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
def test_ask_and_describe_commands(tmp_path, capsys):
    from clipq.app.cli import main
    from clipq.runtime.fusion import KnnPromptFusion

    root = build_toy_artifacts(tmp_path / "art").root
    img = tmp_path / "scene.png"
    img.write_bytes(_png(_img(7)))
    assert main(["ask", str(img), "what color is the circle ?", "how many ?", "--artifacts", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in out["answers"]] == ["what color is the circle ?", "how many ?"]
    assert all(a["answer"] in ANSWERS and len(a["top"]) == 3 for a in out["answers"])
    assert main(["ask", str(img), "what color ?", "--artifacts", str(root), "-k", "2"]) == 0
    assert capsys.readouterr().out.startswith("Q: what color ?\nA: ")

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
    fusion.save(root / "knn")
    m = Manifest.load(root)
    m.add_tree("knn")
    m.extra["img2prompt"] = {"alpha": 0.7}
    m.save()
    assert main(["describe", str(img), "--artifacts", str(root), "--json", "-k", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["alpha"] == 0.7 and len(rows[0]["closest"]) == 2 and "embedding" not in rows[0]
    assert {r["prompt"] for r in rows[0]["closest"]} <= set(prompts)
    assert main(["describe", str(img), "--artifacts", str(root), "--alpha", "0.2"]) == 0
    assert "alpha 0.20" in capsys.readouterr().out
