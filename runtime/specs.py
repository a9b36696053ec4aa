"""Tensor contracts of every exported network, declared once.

The export writes these specs into the manifest, the in-process runtime feeds its sessions from
them, and the Triton config renderer turns them into config.pbtxt. Batch axis first, -1 = dynamic.
"""

from __future__ import annotations

from .manifest import ModelSpec, TensorSpec

# canonical network names (also the ONNX file stems and the Triton model names)
CLIP_IMAGE = "clip_image"
CLIP_TEXT = "clip_text"
VQA = "vqa"
IMG2PROMPT_A = "img2prompt_a"
ENSEMBLE_HEAD = "ensemble_head"
PROMPT_TEXT = "prompt_text"
#: the two towers of the CLIP fine-tuned for reading ("Can CLIP read?"): clip_image / clip_text's contracts
READING_IMAGE = "reading_image"
READING_TEXT = "reading_text"
NETWORKS = (CLIP_IMAGE, CLIP_TEXT, VQA, IMG2PROMPT_A, ENSEMBLE_HEAD, PROMPT_TEXT, READING_IMAGE, READING_TEXT)
#: the variant name of a network's TensorRT engine (export registers it, the gpu flavour serves it)
PLAN_VARIANT = "plan"


def clip_image_spec(image_size: int, embed_dim: int, max_batch_size: int = 32, name: str = CLIP_IMAGE) -> ModelSpec:
    """A CLIP image tower's contract (``name``: ``clip_image``, or ``reading_image`` for the reading model)."""
    return ModelSpec(
        name=name,
        inputs=[TensorSpec("pixel_values", "float32", (-1, 3, image_size, image_size))],
        outputs=[TensorSpec("image_embeds", "float32", (-1, embed_dim))],  # L2-normalised
        max_batch_size=max_batch_size,
        meta={"normalized": True},
    )


def clip_text_spec(embed_dim: int, max_batch_size: int = 64, name: str = CLIP_TEXT) -> ModelSpec:
    """A CLIP text tower's contract (``name``: ``clip_text``, or ``reading_text`` for the reading model)."""
    return ModelSpec(
        name=name,
        inputs=[TensorSpec("input_ids", "int64", (-1, -1)), TensorSpec("attention_mask", "int64", (-1, -1))],
        outputs=[TensorSpec("text_embeds", "float32", (-1, embed_dim))],  # L2-normalised
        max_batch_size=max_batch_size,
        meta={"normalized": True, "tokenizer": "clip"},
    )


def vqa_spec(embed_dim: int, n_answers: int, max_batch_size: int = 32) -> ModelSpec:
    return ModelSpec(
        name=VQA,
        inputs=[
            TensorSpec("image_embeds", "float32", (-1, embed_dim)),
            TensorSpec("input_ids", "int64", (-1, -1)),
            TensorSpec("attention_mask", "int64", (-1, -1)),
        ],
        outputs=[TensorSpec("probs", "float32", (-1, n_answers))],  # softmax over answer_vocab
        max_batch_size=max_batch_size,
        meta={"tokenizer": "lm"},
    )


def img2prompt_a_spec(image_size: int, prompt_dim: int = 384, max_batch_size: int = 32) -> ModelSpec:
    return ModelSpec(
        name=IMG2PROMPT_A,
        inputs=[TensorSpec("pixel_values", "float32", (-1, 3, image_size, image_size))],
        outputs=[TensorSpec("prompt_embeds", "float32", (-1, prompt_dim))],  # L2-normalised
        max_batch_size=max_batch_size,
        meta={"normalized": True},
    )


def ensemble_head_spec(prompt_dim: int = 384, max_batch_size: int = 64) -> ModelSpec:
    return ModelSpec(
        name=ENSEMBLE_HEAD,
        inputs=[
            TensorSpec("a_embeds", "float32", (-1, prompt_dim)),
            TensorSpec("b_embeds", "float32", (-1, prompt_dim)),
            TensorSpec("alpha", "float32", (-1, 1)),
        ],
        outputs=[TensorSpec("prompt_embeds", "float32", (-1, prompt_dim))],  # normalize(a*A+(1-a)*B)
        max_batch_size=max_batch_size,
    )


def prompt_text_spec(prompt_dim: int = 384, max_batch_size: int = 64) -> ModelSpec:
    return ModelSpec(
        name=PROMPT_TEXT,
        inputs=[TensorSpec("input_ids", "int64", (-1, -1)), TensorSpec("attention_mask", "int64", (-1, -1))],
        outputs=[TensorSpec("sentence_embeds", "float32", (-1, prompt_dim))],  # mean-pooled, normalised
        max_batch_size=max_batch_size,
        meta={"normalized": True, "tokenizer": "prompt"},
    )
