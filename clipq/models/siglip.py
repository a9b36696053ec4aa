"""SigLIP and SigLIP 2 (fixed resolution) checkpoints: what differs from CLIP, read at import.

transformers loads both as ``SiglipModel`` (``config.json`` ``model_type: "siglip"``); SigLIP ships a
SentencePiece ``spiece.model`` (``SiglipTokenizer``, no fast tokenizer in transformers), SigLIP 2 a
Gemma tokenizer (``tokenizer.json``). The NaFlex variant of SigLIP 2 (``model_type: "siglip2"``,
``Siglip2Model`` with its patch mask and spatial shapes) is refused: its image input is a variable
number of patches, not the fixed ``[B, 3, S, S]`` every clipq image graph, the Triton configs and the
preprocessing take.

The tokenizer is converted here, at import, to one ``tokenizer.json`` the torch-free runtime reads
with the ``tokenizers`` library (never at query time): :func:`siglip_tokenizer_json` rebuilds
``SiglipTokenizer``'s steps as a ``tokenizers`` pipeline (lower case, ASCII punctuation removed,
whitespace collapsed and stripped, the SentencePiece model's own NFKC map, a leading ``▁``, the
Unigram model, ``</s>`` appended). tests/unit/test_siglip_tokenizer.py checks its ids against
transformers' ``SiglipTokenizer`` on 1,000 varied strings.

Scores: SigLIP scores an (image, text) pair with ``sigmoid(logit_scale * cos + logit_bias)``, a
probability on its own; :func:`score_settings` records ``exp(logit_scale)`` and ``logit_bias`` for the
manifest (``extra["scores"]``), which the runtime reads (:mod:`clipq.runtime.scores`).
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ArtifactError

#: SigLIP's text length and padding: trained on ``padding="max_length"`` to 64 tokens, and the text
#: tower pools the last position, so the padding is part of the input (the runtime pads every text to 64)
SIGLIP_MAX_LENGTH = 64
#: SiglipImageProcessor's ``resample`` (PIL's enum values) -> clipq's preprocessing names
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def spm_protobuf():
    """The SentencePiece model protobuf module, whichever build of it loads here.

    ``sentencepiece`` 0.2.3's generated ``sentencepiece_model_pb2`` needs protobuf >= 7.36 while
    ``tritonclient[grpc]`` pins protobuf < 7; transformers ships the same message definitions built for
    protobuf >= 4 (``sentencepiece_model_pb2_new``). Where sentencepiece's own module refuses the
    runtime, transformers' is registered under sentencepiece's name, so that transformers'
    ``SiglipTokenizer`` (which imports that name) loads too.
    """
    try:
        from sentencepiece import sentencepiece_model_pb2

        return sentencepiece_model_pb2
    except ImportError:
        raise
    except Exception:  # noqa: BLE001 - protobuf's VersionError: gencode newer than the runtime
        import sentencepiece
        from transformers.utils import sentencepiece_model_pb2_new as pb2

        sys.modules["sentencepiece.sentencepiece_model_pb2"] = pb2
        sentencepiece.sentencepiece_model_pb2 = pb2  # type: ignore[attr-defined]
        return pb2


def siglip_tokenizer_json(
    spiece: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    lower_case: bool = True,
    eos: str = "</s>",
    unk: str = "<unk>",
    pad: str = "</s>",
) -> Path:
    """``SiglipTokenizer`` (a SentencePiece Unigram model + SigLIP's canonicalisation) as a ``tokenizer.json``.

    SiglipTokenizer lower-cases, removes ``string.punctuation``, collapses ``\\s+`` to one space and
    strips, then encodes ``"▁" + text`` with the SentencePiece model (its dummy prefix off) and appends
    ``</s>``. The same steps as ``tokenizers`` components: the Unigram pieces and scores and the NFKC
    map are read from ``spiece.model`` (what transformers' own SentencePiece converters do).

    Raises:
        ArtifactError: the file is missing or not a SentencePiece Unigram model.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    spiece = Path(spiece)
    try:
        proto = spm_protobuf().ModelProto.FromString(spiece.read_bytes())
    except Exception as e:  # noqa: BLE001 - OSError or protobuf's DecodeError
        raise ArtifactError(f"{spiece}: not a SentencePiece model: {e}") from e
    if proto.trainer_spec.model_type != 1:  # 1 = UNIGRAM
        raise ArtifactError(
            f"{spiece}: a SentencePiece model of type {proto.trainer_spec.model_type}, not Unigram "
            "(SigLIP's tokenizer is a Unigram model)"
        )
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(Unigram(vocab, unk_id=int(proto.trainer_spec.unk_id), byte_fallback=False))
    steps = [normalizers.Replace("▁", " ")]  # SiglipTokenizer.tokenize: text.replace(SPIECE_UNDERLINE, " ")
    if lower_case:
        steps.append(normalizers.Lowercase())
    punct = "".join("\\" + c if c in "\\[]^-" else c for c in string.punctuation)
    # Python's \s (str.isspace: \x1c-\x1f and \x85 too), not the regex library's narrower class
    space = "".join(f"\\x{{{c:x}}}" for c in range(sys.maxunicode + 1) if chr(c).isspace())
    steps += [
        # SiglipTokenizer encodes "▁" + the stripped text of the first piece only (not after a special
        # token): a leading run of whitespace and punctuation becomes one space aligned to offset 0,
        # which Metaspace's prepend_scheme="first" turns into that "▁" (stripping it would move the offset)
        normalizers.Replace(Regex(f"^[{space}{punct}]+"), " "),
        normalizers.Replace(Regex(f"[{punct}]"), ""),  # canonicalize_text: remove_punctuation
        normalizers.Replace(Regex(f"[{space}]+"), " "),  # re.sub(r"\s+", " ", text)
        normalizers.Strip(left=False, right=True),  # text.strip()
    ]
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    special = [
        AddedToken(t, lstrip=True, rstrip=True, normalized=False, special=True)
        for t in dict.fromkeys((eos, unk, pad))
    ]
    tok.add_special_tokens(special)
    eos_id = tok.token_to_id(eos)
    if eos_id is None:
        raise ArtifactError(f"{spiece}: no {eos!r} piece (SigLIP's end-of-text token)")
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def _tokenizer_config(src: Path) -> dict[str, Any]:
    path = src / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from e


def _token(cfg: dict[str, Any], key: str, default: str) -> str:
    v = cfg.get(key, default)
    return str(v.get("content", default)) if isinstance(v, dict) else str(v or default)


def checkpoint_tokenizer(
    src: str | os.PathLike[str], work: str | os.PathLike[str]
) -> tuple[Path, dict[str, Any]]:
    """A SigLIP / SigLIP 2 checkpoint's tokenizer as one ``tokenizer.json``, with its padding facts.

    SigLIP (``spiece.model``, ``SiglipTokenizer``): converted by :func:`siglip_tokenizer_json`. SigLIP 2
    (a Gemma tokenizer) and any checkpoint with a fast tokenizer: loaded with ``AutoTokenizer`` (which
    sets the special-token post-processor from ``tokenizer_config.json``) and its backend saved.

    Returns:
        (path of the tokenizer.json, {"kind", "pad_token", "pad_id", "padding_side"}).

    Raises:
        ArtifactError: no tokenizer, or the files do not make one.
    """
    src, work = Path(src), Path(work)
    cfg = _tokenizer_config(src)
    cls = str(cfg.get("tokenizer_class") or "")
    out = work / "tokenizer.json"
    side = "right"
    if (src / "spiece.model").is_file() and (
        cls.startswith("Siglip") or not (src / "tokenizer.json").is_file()
    ):
        kind = "siglip"
        pad = _token(cfg, "pad_token", "</s>")
        siglip_tokenizer_json(
            src / "spiece.model",
            out,
            lower_case=bool(cfg.get("do_lower_case", True)),
            eos=_token(cfg, "eos_token", "</s>"),
            unk=_token(cfg, "unk_token", "<unk>"),
            pad=pad,
        )
    elif (src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file():
        from transformers import AutoTokenizer

        spm_protobuf()  # a slow Gemma tokenizer.model converts through the same protobuf module
        try:
            hf = AutoTokenizer.from_pretrained(src, use_fast=True)
        except Exception as e:  # noqa: BLE001 - tokenizer loading raises many types on bad files
            raise ArtifactError(f"{src}: the tokenizer files do not load in transformers: {e}") from e
        if not getattr(hf, "is_fast", False):
            raise ArtifactError(f"{src}: {type(hf).__name__} has no fast (tokenizers) form to convert")
        kind = "gemma" if "gemma" in type(hf).__name__.lower() else type(hf).__name__
        pad = hf.pad_token or hf.eos_token
        side = str(
            hf.padding_side
        )  # Gemma's tokenizer pads on the left; the text tower pools the last position
        work.mkdir(parents=True, exist_ok=True)
        hf.backend_tokenizer.save(str(out))
    else:
        raise ArtifactError(f"{src}: no tokenizer (spiece.model for SigLIP, tokenizer.json for SigLIP 2)")
    from tokenizers import Tokenizer

    pad_id = Tokenizer.from_file(str(out)).token_to_id(pad) if pad else None
    if pad_id is None:
        raise ArtifactError(f"{src}: the padding token {pad!r} is not in the tokenizer's vocabulary")
    return out, {"kind": kind, "pad_token": pad, "pad_id": int(pad_id), "padding_side": side}


def read_siglip_preprocessing(src: str | os.PathLike[str], image_size: int) -> dict[str, Any]:
    """Preprocessing facts from a SigLIP checkpoint's ``preprocessor_config.json``.

    SiglipImageProcessor resizes the whole image to ``size`` (height x width, no aspect kept, no crop)
    with ``resample`` (bilinear in every released SigLIP), rescales by 1/255 and normalises with
    mean = std = 0.5; the runtime's ``"resize": "squash"`` does the same. Absent file: those defaults.

    Raises:
        ArtifactError: unreadable file, a size other than the vision tower's square, or a processor
            clipq does not reproduce (NaFlex's ``Siglip2ImageProcessor``, no resize).
    """
    path = Path(src) / "preprocessor_config.json"
    pp: dict[str, Any] = {}
    if path.is_file():
        try:
            pp = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ArtifactError(f"cannot read {path}: {e}") from e
    kind = str(pp.get("image_processor_type", "SiglipImageProcessor"))
    if "Siglip2" in kind or "max_num_patches" in pp:
        raise ArtifactError(
            f"{path}: {kind} (NaFlex: variable patches per image) is not supported; "
            "clipq serves fixed-resolution checkpoints"
        )
    if pp.get("do_resize", True) is False:
        raise ArtifactError(f"{path}: do_resize false is not supported (clipq resizes every image)")
    size = pp.get("size", {"height": image_size, "width": image_size})
    h, w = (
        (int(size.get("height", 0)), int(size.get("width", 0)))
        if isinstance(size, dict)
        else (int(size), int(size))
    )
    if (h, w) != (image_size, image_size):
        raise ArtifactError(
            f"{path}: resize to {h} x {w} with a {image_size}px vision tower is not supported"
        )
    mean, std = list(pp.get("image_mean", [0.5] * 3)), list(pp.get("image_std", [0.5] * 3))
    if len(mean) != 3 or len(std) != 3:
        raise ArtifactError(f"{path}: image_mean and image_std must have 3 values")
    resample = PIL_RESAMPLE.get(int(pp.get("resample", 2)))
    if resample is None:
        raise ArtifactError(
            f"{path}: resample {pp.get('resample')!r} is not one clipq reproduces "
            f"({', '.join(f'{k}={v}' for k, v in PIL_RESAMPLE.items())})"
        )
    if abs(float(pp.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9 or pp.get("do_rescale", True) is False:
        raise ArtifactError(f"{path}: only rescale by 1/255 is supported")
    return {
        "size": image_size,
        "mean": mean,
        "std": std,
        "resize": "squash",
        "resample": resample,
        "crop": "none",
    }


def score_settings(model: Any) -> dict[str, Any]:
    """The pair score of a SigLIP model: ``sigmoid(logit_scale * cos + logit_bias)``, scale exponentiated."""
    import math

    return {
        "kind": "sigmoid",
        "logit_scale": float(math.exp(float(model.logit_scale.detach()))),
        "logit_bias": float(model.logit_bias.detach()),
    }


def save_hf_processor(
    d: str | os.PathLike[str], preprocessing: dict[str, Any], tokenizer: dict[str, Any]
) -> None:
    """Beside a saved SiglipModel: ``SiglipImageProcessor`` and the converted tokenizer as a fast tokenizer.

    So that ``AutoProcessor`` / ``AutoTokenizer`` load what clipq saved (the tokenizer as
    ``PreTrainedTokenizerFast`` over the converted ``tokenizer.json``, already in ``d``).
    """
    from transformers import PreTrainedTokenizerFast, SiglipImageProcessor

    inv = {v: k for k, v in PIL_RESAMPLE.items()}
    size = int(preprocessing["size"])
    SiglipImageProcessor(
        size={"height": size, "width": size},
        resample=inv.get(preprocessing.get("resample"), 2),
        image_mean=list(preprocessing["mean"]),
        image_std=list(preprocessing["std"]),
    ).save_pretrained(d)
    from tokenizers import Tokenizer

    path = Path(d) / "tokenizer.json"
    pad = Tokenizer.from_file(str(path)).id_to_token(int(tokenizer["pad_id"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(path), pad_token=pad, model_max_length=int(tokenizer["max_length"])
    )
    fast.save_pretrained(d)
