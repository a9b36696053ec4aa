"""Request and response models: OpenAI's embeddings schema, and clipq's search / ask / describe.

Fields whose checks need a precise message (``input`` items, images, ``k``) are typed loosely here
and checked in :mod:`.inputs`, so that an error names the item (``input[3]``) instead of
repeating a union's every branch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

_STR_OR_LIST = WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})


class _Request(BaseModel):
    # unknown fields are ignored, as OpenAI's and infinity's servers do: clients send extras
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``, as OpenAI defines it (plus infinity's ``modality``, TEI's ``truncate``)."""

    input: Annotated[Any, _STR_OR_LIST] = Field(
        ..., description="a string or a list of strings; for clip-image, images as base64 data URIs "
        "(data:image/png;base64,...) or bare base64")
    model: str = Field(..., description="clip-text or clip-image (GET /v1/models)")
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded (OpenAI's); "
        "int8 / uint8: one integer a dimension on ranges calibrated on the served index; binary / ubinary: sign "
        "bits packed 8 dimensions a byte, as int8 (-128..127) or uint8 (infinity's names)")
    dimensions: int | None = Field(
        None, description="the model's dimension, or the dimension of the served index's projection "
        "(`clipq index project`)")
    user: str | None = None
    modality: Literal["text", "image"] | None = Field(None, description="infinity's field: must match the model")
    truncate: bool = Field(False, description="cut texts longer than the model's context instead of refusing them")


class SearchRequest(_Request):
    """``POST /v1/search``: one of ``text``, ``image`` or ``id`` (an indexed image: more like it)."""

    text: str | None = None
    image: str | None = Field(None, description="base64 data URI or bare base64 (or a multipart file)")
    id: str | None = Field(None, description="an indexed image's id: search by its stored embedding")
    k: Any = Field(10, description="results wanted, 1..max_k")
    templates: str = Field("default", description="'default' (an ensemble), 'none', or 'tpl1|tpl2' with {}")
    filter: dict[str, Any] | None = Field(None, description="metadata filter {key: value or [values]}")
    exact: bool | None = Field(None, description="force exact (true) or HNSW (false) search")


class AskRequest(_Request):
    """``POST /v1/ask``: a question about an uploaded image or an indexed one."""

    question: str | None = None
    image: str | None = None
    id: str | None = None
    top_k: Any = Field(5, description="answers listed, 1..20")


class DescribeRequest(_Request):
    """``POST /v1/describe``: image -> the nearest known prompts (Models A + B)."""

    image: str | None = None
    id: str | None = None
    n: Any = Field(5, description="prompts listed, 1..20")
    alpha: float | None = Field(None, description="weight of Model A, in [0, 1] (default: the artifacts' "
                                "image -> prompt settings)")
    embedding: bool = Field(False, description="include the fused prompt embedding")


# -- responses (documentation: the routes build plain dicts, which is faster for big float lists) --
class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "clipq"
    modality: Literal["text", "image"]
    dimensions: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Hit(BaseModel):
    rank: int
    id: str
    score: float
    caption: str | None = None
    metadata: dict[str, Any]
    thumbnail: str


class SearchResponse(BaseModel):
    query: dict[str, Any]
    results: list[Hit]


class AnswerItem(BaseModel):
    answer: str
    prob: float


class AskResponse(BaseModel):
    question: str
    answer: str
    prob: float
    top: list[AnswerItem]
    truncated: bool


class PromptScore(BaseModel):
    prompt: str
    score: float


class DescribeResponse(BaseModel):
    closest: list[PromptScore]
    neighbours: list[PromptScore]
    alpha: float
    k: int
    embedding: list[float] | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 404, 413, 501, 503, 504)
}
