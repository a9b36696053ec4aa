"""Which models a repository holds, with which tensors: decided from the manifest alone.

The plan is flavour-free: networks present in the manifest, ``preprocess_image`` when a network
takes pixels, one tokenizer model per tokenizer a served text network uses, Model B's python model
(``knn_prompts``) when the manifest has a KNN database, ``clipq_info`` (the repository's description
for thin clients), and every ensemble whose parts are all there. The ensemble and model names the
client calls are the runtime's (:mod:`clipq.runtime.server_path`). How each kind is written is
the renderers' business (:mod:`.renderers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from clipq.runtime import specs
from clipq.runtime.errors import ArtifactError
from clipq.runtime.manifest import Manifest, ModelSpec, TensorSpec
from clipq.runtime.server_path import (
    DESCRIBE,
    INFO_INPUT,
    INFO_MODEL,
    INFO_OUTPUT,
    KNN_MODEL,
    PIPELINES,
    TRUNCATED,
)

PREPROCESS_IMAGE = "preprocess_image"
#: tokenizer kind (manifest.tokenizers key) -> Triton model name
TOKENIZE = {"clip": "tokenize_clip", "lm": "tokenize_lm", "prompt": "tokenize_prompt"}
#: the kinds of repository model
KINDS = ("network", "preprocess_image", "tokenize", "knn", "info", "ensemble", "fused")
#: how the bytes-in / text-in models of :data:`FUSABLE` are served (``RenderOptions.pipelines``)
PIPELINE_CHOICES = ("fused", "ensemble")
#: where Model B's database sits in an artifact directory
KNN_DIR = "knn"


@dataclass(frozen=True)
class Step:
    """One ensemble step: composing model, its input <- ensemble tensor, its output -> ensemble tensor."""

    model: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]


@dataclass(frozen=True)
class EnsembleDef:
    name: str
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    steps: tuple[Step, ...]


_PIX = Step(PREPROCESS_IMAGE, {"image": "image"}, {"pixel_values": "pixel_values"})
_IDS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
_CLIP_PIX = Step(specs.CLIP_IMAGE, {"pixel_values": "pixel_values"}, {"image_embeds": "image_embeds"})


def _tok(kind: str, text: str) -> Step:
    """A tokenize step: its ids and mask, and the per-text truncation flags the client reports."""
    return Step(TOKENIZE[kind], {"text": text}, {**_IDS, TRUNCATED: TRUNCATED})


def _image_in(network: str, doc: str) -> EnsembleDef:
    """The bytes-in ensemble of an image network (:data:`PIPELINES`): ``preprocess_image``, then the network."""
    p = PIPELINES[network]
    return EnsembleDef(p.name, doc, ("image",), (p.output,),
                       (_PIX, Step(network, {"pixel_values": "pixel_values"}, {p.output: p.output})))


def _text_in(network: str, kind: str, doc: str) -> EnsembleDef:
    """The text-in ensemble of a text network (:data:`PIPELINES`): its tokenizer, then the network."""
    p = PIPELINES[network]
    return EnsembleDef(p.name, doc, ("text",), (p.output, TRUNCATED),
                       (_tok(kind, "text"), Step(network, _IDS, {p.output: p.output})))


ENSEMBLES: tuple[EnsembleDef, ...] = (
    _image_in(specs.CLIP_IMAGE, "encoded image bytes -> L2-normalised CLIP image embedding"),
    _text_in(specs.CLIP_TEXT, "clip", "UTF-8 text -> L2-normalised CLIP text embedding"),
    EnsembleDef("ask", "image bytes + question -> probabilities over manifest.answer_vocab",
                ("image", "question"), ("probs", TRUNCATED),
                (_PIX, _CLIP_PIX, _tok("lm", "question"),
                 Step(specs.VQA, {"image_embeds": "image_embeds", **_IDS}, {"probs": "probs"}))),
    EnsembleDef(PIPELINES[specs.VQA].name, "CLIP image embedding + question text -> answer probabilities",
                ("image_embeds", "question"), ("probs", TRUNCATED),
                (_tok("lm", "question"), Step(specs.VQA, {"image_embeds": "image_embeds", **_IDS}, {"probs": "probs"}))),
    _image_in(specs.IMG2PROMPT_A, "image bytes -> Model A's prompt embedding (img2prompt_a)"),
    EnsembleDef(DESCRIBE, "image bytes + alpha + n -> fused prompt embedding (Model A + Model B's KNN, ensemble "
                "head) and the nearest known prompts (JSON)",
                ("image", "alpha", "n"), ("prompt_embeds", "a_embeds", "b_embeds", "image_embeds", "description"),
                (_PIX, Step(specs.IMG2PROMPT_A, {"pixel_values": "pixel_values"}, {"prompt_embeds": "a_embeds"}),
                 _CLIP_PIX,
                 Step(KNN_MODEL, {"image_embeds": "image_embeds", "a_embeds": "a_embeds", "alpha": "alpha", "n": "n"},
                      {"prompt_embeds": "prompt_embeds", "b_embeds": "b_embeds", "description": "description"}))),
    _text_in(specs.PROMPT_TEXT, "prompt", "UTF-8 prompt -> all-MiniLM-L6-v2 sentence embedding"),
    _image_in(specs.READING_IMAGE, "encoded image bytes -> L2-normalised image embedding of the CLIP fine-tuned for "
              "reading"),
    _text_in(specs.READING_TEXT, "clip", "UTF-8 question + candidate answer -> L2-normalised text embedding of the "
             "CLIP fine-tuned for reading"),
)


#: the two-step ensembles (a helper, then one network) that ``fused`` serves as one model each
FUSABLE = tuple(PIPELINES[n].name for n in (specs.CLIP_IMAGE, specs.CLIP_TEXT, specs.READING_IMAGE, specs.READING_TEXT))


@dataclass
class PlannedModel:
    """What one repository model needs to be written: its I/O, batching and kind.

    ``kind`` is one of :data:`KINDS`; each flavour's renderer has a method per kind.
    """

    name: str
    kind: str  # one of KINDS
    doc: str
    inputs: list[TensorSpec]  # shapes include the batch axis
    outputs: list[TensorSpec]
    max_batch_size: int
    preferred: list[int] = field(default_factory=list)
    spec: ModelSpec | None = None
    tokenizer: str | None = None
    ensemble: EnsembleDef | None = None
    fused_helper: str | None = None  # kind "fused": the helper kind run before the network



def seq_len(m: Manifest, spec: ModelSpec) -> int:
    """The sequence length a text network is warmed up with: its tokenizer's ``max_length``."""
    kind = spec.meta.get("tokenizer")
    info = m.tokenizers.get(kind or "", {})
    return int(info.get("max_length", 32))


def has_knn(m: Manifest) -> bool:
    """Whether the manifest lists Model B's database (``knn/``)."""
    return any(k.startswith(f"{KNN_DIR}/") for k in m.files)


def plan_models(m: Manifest, *, knn: bool | None = None, fused: bool = False) -> dict[str, PlannedModel]:
    """Decide which models the repository holds, from what the manifest provides.

    Networks present in the manifest are served; ``preprocess_image`` when a network takes
    ``pixel_values`` and the manifest has preprocessing; a tokenizer model per tokenizer a served
    text network uses; ``knn_prompts`` when the manifest has Model B's database (``knn``: say so
    instead of looking, as re-rendering from a record does) and Model A and CLIP are served;
    ``clipq_info``; and every ensemble whose composing models are all present. With ``fused``, the
    ensembles of :data:`FUSABLE` become one ``fused`` model each under the same name and tensors
    (helper and network in one instance); the helper and network models stay served.

    Raises:
        ArtifactError: the manifest holds no network at all.
    """
    nets = [n for n in specs.NETWORKS if n in m.models]
    if not nets:
        raise ArtifactError(f"{m.root}: the manifest lists no networks; run `clipq export` first")
    out: dict[str, PlannedModel] = {}
    for n in nets:
        s = m.models[n]
        out[n] = PlannedModel(n, "network", f"exported network {n}", list(s.inputs), list(s.outputs),
                        s.max_batch_size, [b for b in s.preferred_batch_sizes if b <= s.max_batch_size], spec=s)

    image_users = [out[n] for n in nets if any(t.name == "pixel_values" for t in out[n].inputs)]
    if image_users and m.preprocessing.get("size"):
        size = int(m.preprocessing["size"])
        mbs = max(u.max_batch_size for u in image_users)
        out[PREPROCESS_IMAGE] = PlannedModel(
            PREPROCESS_IMAGE, "preprocess_image", "encoded image bytes -> pixel_values (decode, resize, crop, normalise)",
            [TensorSpec("image", "bytes", (-1, 1))], [TensorSpec("pixel_values", "float32", (-1, 3, size, size))],
            mbs, image_users[0].preferred)

    for kind, name in TOKENIZE.items():
        users = [out[n] for n in nets if out[n].spec and out[n].spec.meta.get("tokenizer") == kind]
        if not users or kind not in m.tokenizers:
            continue
        out[name] = PlannedModel(
            name, "tokenize", f"UTF-8 text -> ids and mask ({kind} tokenizer, padded to length buckets)",
            [TensorSpec("text", "bytes", (-1, 1))],
            [TensorSpec("input_ids", "int64", (-1, -1)), TensorSpec("attention_mask", "int64", (-1, -1)),
             TensorSpec(TRUNCATED, "bool", (-1, 1))],
            max(u.max_batch_size for u in users), users[0].preferred, tokenizer=kind)

    if (has_knn(m) if knn is None else knn) and specs.IMG2PROMPT_A in out and specs.CLIP_IMAGE in out:
        a, clip = out[specs.IMG2PROMPT_A], out[specs.CLIP_IMAGE]
        p, d = a.outputs[0].shape[-1], clip.outputs[0].shape[-1]
        out[KNN_MODEL] = PlannedModel(
            KNN_MODEL, "knn", "CLIP embedding + Model A's prompt embedding -> Model B (KNN over the training "
            "images' prompts), the ensemble head and the nearest known prompts",
            [TensorSpec("image_embeds", "float32", (-1, d)), TensorSpec("a_embeds", "float32", (-1, p)),
             TensorSpec("alpha", "float32", (-1, 1)), TensorSpec("n", "int32", (-1, 1))],
            [TensorSpec("prompt_embeds", "float32", (-1, p)), TensorSpec("b_embeds", "float32", (-1, p)),
             TensorSpec("description", "bytes", (-1, 1))],
            min(a.max_batch_size, clip.max_batch_size), a.preferred)
    out[INFO_MODEL] = PlannedModel(
        INFO_MODEL, "info", "what a thin client must know: the manifest's public facts, the models served (JSON)",
        [TensorSpec(INFO_INPUT, "bytes", (-1, 1))], [TensorSpec(INFO_OUTPUT, "bytes", (-1, 1))], 1)

    for e in ENSEMBLES:
        if not all(s.model in out for s in e.steps):
            continue
        ins = [_ensemble_tensor(out, e, t, "inputs") for t in e.inputs]
        outs = [_ensemble_tensor(out, e, t, "outputs") for t in e.outputs]
        mbs = min(out[s.model].max_batch_size for s in e.steps)
        out[e.name] = PlannedModel(e.name, "ensemble", e.doc, ins, outs, mbs, ensemble=e)
        if fused and e.name in FUSABLE:
            helper, net = (out[s.model] for s in e.steps)
            out[e.name] = PlannedModel(e.name, "fused", f"{e.doc} (one model: {helper.name} and {net.name} in one "
                                       "instance)", ins, outs, mbs, net.preferred, spec=net.spec,
                                       tokenizer=helper.tokenizer, ensemble=e, fused_helper=helper.kind)
    return out


def _ensemble_tensor(models: Mapping[str, PlannedModel], e: EnsembleDef, tensor: str, side: str) -> TensorSpec:
    """An ensemble input/output takes its dtype and shape from the step tensor it is mapped to."""
    for step in e.steps:
        mapping = step.inputs if side == "inputs" else step.outputs
        for model_tensor, ens_tensor in mapping.items():
            if ens_tensor == tensor:
                pool = models[step.model].inputs if side == "inputs" else models[step.model].outputs
                t = next((t for t in pool if t.name == model_tensor), None)
                if t is None:
                    raise ArtifactError(f"ensemble {e.name}: {step.model} has no {side[:-1]} {model_tensor!r}")
                return TensorSpec(tensor, t.dtype, t.shape)
    raise ArtifactError(f"ensemble {e.name}: no step maps {side[:-1]} {tensor!r}")
