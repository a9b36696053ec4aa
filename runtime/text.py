"""Tokenisation without torch: the ``tokenizers`` library reading the artifact's ``tokenizer.json``.

transformers' fast tokenizers are this same Rust library, so the ids are identical as long as the
padding and truncation settings agree; they are set here explicitly (pad to the longest text in
the batch, truncate at the manifest's ``max_length``) rather than inherited from whatever the
file happened to be saved with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InvalidTextError, MissingDependencyError

TextLike = str | bytes | bytearray

# candidates for the padding token, most specific first, when no config file names one
_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|endoftext|>", "</s>")


@dataclass
class Encoded:
    """A tokenised batch, padded to its longest member.

    Attributes:
        input_ids: int64 [N, L].
        attention_mask: int64 [N, L], 1 on real tokens.
        truncated: per text, whether it was cut at ``max_length``.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    truncated: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def as_inputs(self) -> dict[str, np.ndarray]:
        """The two tensors under the names every clipq text graph takes."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def check_texts(texts: TextLike | Iterable[TextLike], *, start: int = 0) -> list[str]:
    """Validate and decode a batch of texts.

    Args:
        texts: One text or an iterable of texts (``str``, or UTF-8 ``bytes``).
        start: Index of the first text in the caller's whole batch (for error messages).

    Returns:
        The texts as ``str``.

    Raises:
        InvalidTextError: a text that is empty or whitespace, bytes that are not UTF-8, or an
            object that is not text; the error names its index.
    """
    if isinstance(texts, (str, bytes, bytearray)):
        texts = [texts]
    out: list[str] = []
    for i, t in enumerate(texts, start):
        if isinstance(t, (bytes, bytearray)):
            try:
                t = bytes(t).decode("utf-8")
            except UnicodeDecodeError as e:
                raise InvalidTextError(
                    f"text bytes are not valid UTF-8 ({e.reason} at byte {e.start})",
                    index=i,
                    source=repr(bytes(t[:40])),
                ) from e
        elif not isinstance(t, str):
            raise InvalidTextError(f"expected str or UTF-8 bytes, got {type(t).__name__}", index=i)
        if not t.strip():
            raise InvalidTextError("text is empty", index=i, source=t)
        out.append(t)
    return out


def _pad_token(tok: Any, directory: Path, raw: dict[str, Any]) -> tuple[str, int]:
    """Find the padding token the way transformers would: the saved configs first, then the vocab."""
    names: list[str] = []
    pad = (raw.get("padding") or {}).get("pad_token")
    if pad:
        names.append(pad)
    for fname in ("tokenizer_config.json", "special_tokens_map.json"):
        p = directory / fname
        if p.is_file():
            try:
                v = json.loads(p.read_text()).get("pad_token")
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                names.insert(0, v)
    names.extend(_PAD_CANDIDATES)
    for name in names:
        tid = tok.token_to_id(name)
        if tid is not None:
            return name, int(tid)
    return "", 0


class TextTokenizer:
    """Batch tokenizer over a ``tokenizer.json``, with explicit padding and truncation.

    Args:
        tokenizer_json: Path of the ``tokenizer.json`` file.
        max_length: Truncation length (the model's context), special tokens included.
        pad_token: Padding token; found from the saved configs or the vocabulary when omitted.
        pad_id: Padding token id (used when ``pad_token`` is not given).
        padding: ``"longest"`` (pad to the longest text of the batch, CLIP) or ``"max_length"`` (every
            text to ``max_length``: SigLIP, whose text tower was trained on fixed-length inputs and
            pools the last position).
        padding_side: ``"right"``, or ``"left"`` where the checkpoint's tokenizer pads on the left
            (Gemma's tokenizer, as SigLIP 2 ships it).

    Raises:
        ArtifactError: the file is missing or unreadable.
        MissingDependencyError: the ``tokenizers`` package is not installed.
    """

    def __init__(self, tokenizer_json: str | os.PathLike[str], max_length: int, *, pad_token: str | None = None,
                 pad_id: int | None = None, padding: str = "longest", padding_side: str = "right"):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - a base dependency
            raise MissingDependencyError("tokenizers", "runtime", "text tokenisation") from e
        path = Path(tokenizer_json)
        if not path.is_file():
            raise ArtifactError(f"tokenizer file not found: {path}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust library raises plain Exception
            raise ArtifactError(f"cannot load tokenizer {path}: {e}") from e
        if pad_token is None and pad_id is not None:
            pad_token = tok.id_to_token(int(pad_id))
            if pad_token is None:
                raise ArtifactError(f"{path}: pad id {pad_id} is not in the vocabulary")
        if pad_token is not None:
            pad_id = tok.token_to_id(pad_token)
            if pad_id is None:
                raise ArtifactError(f"{path}: pad token {pad_token!r} is not in the vocabulary")
        else:
            pad_token, pad_id = _pad_token(tok, path.parent, raw)
        if padding not in ("longest", "max_length"):
            raise ArtifactError(f"{path}: padding must be 'longest' or 'max_length', got {padding!r}")
        if padding_side not in ("right", "left"):
            raise ArtifactError(f"{path}: padding_side must be 'right' or 'left', got {padding_side!r}")
        self.path = path
        self.max_length = int(max_length)
        self.padding = padding
        self.pad_token, self.pad_id = pad_token, int(pad_id)
        tok.no_padding()
        # as transformers' padding="longest" / padding="max_length" on the tokenizer's side
        tok.enable_padding(direction=padding_side, pad_id=self.pad_id, pad_token=self.pad_token,
                           length=self.max_length if padding == "max_length" else None)
        tok.enable_truncation(max_length=self.max_length, strategy="longest_first", stride=0)
        self._tok = tok

    @classmethod
    def from_file(cls, tokenizer_json: str | os.PathLike[str], max_length: int, **kw: Any) -> TextTokenizer:
        """Load from a ``tokenizer.json`` path (see the class docstring)."""
        return cls(tokenizer_json, max_length, **kw)

    @classmethod
    def from_manifest(cls, manifest: Any, name: str) -> TextTokenizer:
        """Load the tokenizer ``name`` ("clip", "lm", "prompt") listed in ``manifest.tokenizers``.

        The file's hash is checked against the manifest.

        Raises:
            ArtifactError: the manifest has no such tokenizer, or its file is missing or changed.
        """
        info = (manifest.tokenizers or {}).get(name)
        if not info:
            raise ArtifactError(
                f"{manifest.root}: no tokenizer {name!r} in the manifest "
                f"(has: {', '.join(sorted(manifest.tokenizers or {})) or 'none'})"
            )
        rel = str(info["path"]).rstrip("/")
        if not rel.endswith(".json"):
            rel = f"{rel}/tokenizer.json"
        path = manifest.resolve(rel)
        return cls(path, int(info.get("max_length", 77)), pad_token=info.get("pad_token"), pad_id=info.get("pad_id"),
                   padding=str(info.get("padding", "longest")), padding_side=str(info.get("padding_side", "right")))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def __call__(self, texts: TextLike | Sequence[TextLike], *, start: int = 0) -> Encoded:
        """Tokenise a batch.

        Args:
            texts: One text or a sequence of texts (``str`` or UTF-8 ``bytes``).
            start: Index of the first text in the caller's whole batch (for error messages).

        Returns:
            :class:`Encoded` with int64 ids and mask [N, L] (L = longest text, at most
            ``max_length``) and the per-text truncation flags.

        Raises:
            InvalidTextError: empty text, invalid UTF-8, or not text (naming the index).
        """
        batch = check_texts(texts, start=start)
        self._check_normalized(batch, start)
        encs = self._tok.encode_batch(batch)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        return Encoded(ids, mask, [bool(e.overflowing) for e in encs])

    tok = __call__

    def _check_normalized(self, texts: Sequence[str], start: int) -> None:
        """Refuse a text the tokenizer's normaliser empties (SigLIP drops punctuation: "?!" has no content)."""
        norm = self._tok.normalizer
        if norm is None:
            return
        for i, t in enumerate(texts, start):
            if not norm.normalize_str(t).strip(" \u2581"):
                raise InvalidTextError("text is empty once normalised (only punctuation or control characters "
                                       "for this model's tokenizer)", index=i, source=t)
