"""The REST API: ``/v1/embeddings`` (OpenAI's shape), ``/v1/models``, ``/v1/search``, ``/v1/ask``,
``/v1/describe``, ``/v1/info``.

``/v1/embeddings`` takes JSON only, as OpenAI's does. Search, ask and describe take JSON (images as
base64 data URIs) or ``multipart/form-data`` (the image as a file field ``image``, ``filter`` as a
JSON string), so ``curl -F image=@photo.jpg`` works. Every check that needs no backend runs on the
event loop before the work goes to the thread pool (:meth:`Services.call`).
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from clipq.runtime.compact import encode_rows
from clipq.runtime.errors import InvalidInputError

from . import inputs
from .errors import ApiError
from .schemas import (
    ERROR_RESPONSES,
    AskRequest,
    AskResponse,
    DescribeRequest,
    DescribeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    SearchRequest,
    SearchResponse,
)
from .services import MODELS, Services

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)
_STARTED = int(time.time())
_SCALARS = (str, int, float, bool)


def _services(request: Request) -> Services:
    return request.app.state.services


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first of pydantic's errors as an :class:`ApiError` naming its field (``k``, ``input``)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    if first.get("type") == "json_invalid":
        ctx = (first.get("ctx") or {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON ({ctx})".replace(" ()", ""), code="invalid_json")
    param = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc)) or None
    msg = str(first.get("msg", "invalid value"))
    code = "missing_field" if first.get("type") == "missing" else "invalid_value"
    return ApiError(400, f"'{param}': {msg}" if param else msg, param=param, code=code)


async def _read(request: Request, model: type[BaseModel]) -> tuple[Any, bytes | None]:
    """The request model from a JSON or multipart body, and an uploaded image's bytes if any."""
    settings = _services(request).settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload: bytes | None = None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=32, max_part_size=settings.max_request_bytes)
        data: Any = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):  # an UploadFile
                if key != "image":
                    raise ApiError(400, f"unexpected file field '{key}': send the image as 'image'", param=key,
                                   code="invalid_field")
                raw = await value.read(settings.max_image_bytes + 1)
                upload = inputs.check_image_bytes(raw, settings, "image")
            elif key == "filter":
                try:
                    data[key] = json.loads(value) if value.strip() else None
                except json.JSONDecodeError as e:
                    raise ApiError(400, f"'filter' is not valid JSON ({e.msg})", param="filter",
                                   code="invalid_json") from None
            else:
                data[key] = value
    elif ctype in ("application/json", ""):
        body = await request.body()
        try:
            data = json.loads(body) if body.strip() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}",
                           code="invalid_body")
    else:
        raise ApiError(415, f"unsupported content type {ctype!r}: send application/json or multipart/form-data",
                       code="unsupported_media_type")
    try:
        return model.model_validate(data), upload
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def _image(req: Any, upload: bytes | None, settings: Any) -> bytes | None:
    if upload is not None:
        return upload
    return inputs.decode_image(req.image, settings, "image") if req.image is not None else None


def _check_id(svc: Services, item_id: str) -> None:
    if svc.index is None:
        raise ApiError(404, "no image index is loaded: start `clipq app` with --index DIR", code="no_index")
    if item_id not in svc.index:
        raise ApiError(404, f"no item with id {item_id!r} in the index", param="id", code="unknown_id")


def _filter(value: Any) -> dict[str, Any] | None:
    if value is None or value == {}:
        return None
    for key, want in value.items():
        ok = isinstance(want, _SCALARS) or (isinstance(want, list) and want and all(isinstance(w, _SCALARS) for w in want))
        if not ok:
            raise ApiError(400, f"'filter.{key}' must be a string, number or boolean, or a non-empty list of them",
                           param=f"filter.{key}", code="invalid_filter")
    return value


def _hit(rank: int, r: Any) -> dict[str, Any]:
    meta = {k: v for k, v in r.metadata.items() if k != "path"}  # server paths stay on the server
    thumb = f"/thumbs/{quote(r.id, safe='')}" if r.metadata.get("path") else None
    return {"rank": rank, "id": r.id, "score": float(r.score), "caption": meta.get("caption"), "metadata": meta,
            "thumbnail": thumb}


# -- embeddings -------------------------------------------------------------------------------------
@router.post("/embeddings", response_model=EmbeddingResponse)
async def embeddings(req: EmbeddingRequest, request: Request) -> Any:
    """Embed texts with ``clip-text`` or images (base64 data URIs) with ``clip-image``."""
    svc = _services(request)
    info = MODELS.get(req.model)
    if info is None:
        raise ApiError(404, f"model {req.model!r} does not exist; this server has {', '.join(MODELS)}",
                       param="model", code="model_not_found")
    if req.modality is not None and req.modality != info.modality:
        raise ApiError(400, f"modality {req.modality!r} does not match model {info.name!r} ({info.modality})",
                       param="modality", code="invalid_value")
    projection = _projection(svc, req.dimensions, info.name)
    codec = await _codec(svc, req.encoding_format, projection)
    single = isinstance(req.input, str)
    items: list[Any] = (inputs.texts if info.modality == "text" else inputs.images)(req.input, svc.settings)
    vecs, tokens = await svc.call(svc.embed, info, items, truncate=req.truncate, single=single, param="input")
    request.app.state.metrics.inputs.labels(info.name).inc(len(items))
    if projection is not None:
        vecs = projection.apply(vecs)
    rows = encode_rows(vecs, req.encoding_format, codec)
    data = [{"object": "embedding", "embedding": row, "index": i} for i, row in enumerate(rows)]
    return JSONResponse({"object": "list", "data": data, "model": info.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _projection(svc: Services, dimensions: int | None, model: str) -> Any:
    """The served index's projection when ``dimensions`` asks for it; None for the model's own dimension."""
    dim = svc.encoder.dim
    if dimensions is None or dimensions == dim:
        return None
    proj = svc.searcher.projection if svc.searcher is not None else None
    if proj is not None and proj.dim == dimensions:
        return proj
    if not 1 <= dimensions < dim:
        raise ApiError(400, f"'dimensions' must be between 1 and {dim} for {model}, not {dimensions}",
                       param="dimensions", code="invalid_value")
    have = f"this server's index has a {proj.dim}-d projection" if proj is not None else "this server has none"
    raise ApiError(400, f"'dimensions' {dimensions} needs a projection fitted on the collection ({have}): make one "
                   f"with `clipq index project INDEX --dimensions {dimensions} -o OUT` and serve it with "
                   "`clipq app --index OUT`; without it 'dimensions' must be "
                   f"{dim} for {model} (CLIP embeddings cannot be cut)", param="dimensions", code="invalid_value")


async def _codec(svc: Services, encoding_format: str, projection: Any) -> Any:
    """The int8 ranges of ``int8`` / ``uint8``: calibrated on the served index's vectors (once, then cached)."""
    from clipq.runtime.compact import INT8_FORMATS, collection_codec

    if encoding_format not in INT8_FORMATS:
        return None
    dim = projection.dim if projection is not None else svc.encoder.dim
    if svc.index is None or svc.index.dim != dim:
        where = "no image index is loaded" if svc.index is None else f"the index holds {svc.index.dim}-d vectors"
        raise ApiError(400, f"encoding_format {encoding_format!r} needs ranges calibrated on a collection of "
                       f"{dim}-d embeddings and {where}: start `clipq app` with --index DIR, or ask for 'float', "
                       "'base64', 'binary' or 'ubinary'", param="encoding_format", code="invalid_value")
    return await svc.call(collection_codec, svc.index)


@router.get("/models", response_model=ModelList)
async def models(request: Request) -> Any:
    """The embedding models, OpenAI's list shape (plus ``modality`` and ``dimensions``)."""
    dim = _services(request).encoder.dim
    return {"object": "list", "data": [_card(m, dim) for m in MODELS.values()]}


@router.get("/models/{model}", response_model=ModelCard)
async def model(model: str, request: Request) -> Any:
    info = MODELS.get(model)
    if info is None:
        raise ApiError(404, f"model {model!r} does not exist; this server has {', '.join(MODELS)}",
                       param="model", code="model_not_found")
    return _card(info, _services(request).encoder.dim)


def _card(info: Any, dim: int) -> dict[str, Any]:
    return {"id": info.name, "object": "model", "created": _STARTED, "owned_by": "clipq",
            "modality": info.modality, "dimensions": dim}


# -- search / ask / describe --------------------------------------------------------------------------
@router.post("/search", response_model=SearchResponse)
async def search(request: Request) -> Any:
    """Search the index by text (prompt templates, metadata filter), an image, or an indexed id."""
    from clipq.runtime.templates import parse_templates

    svc = _services(request)
    req, upload = await _read(request, SearchRequest)
    source = inputs.one_source(req.image, req.id, upload, text=req.text, allow_text=True)
    k = inputs.integer(req.k, "k", 1, svc.settings.max_k)
    filt = _filter(req.filter)
    if svc.index is None:
        raise ApiError(404, "no image index is loaded: start `clipq app` with --index DIR", code="no_index")
    query: dict[str, Any] = {"k": k, "filter": filt}
    if source == "text":
        text = inputs.check_text(req.text, svc.settings, "text")
        try:
            parse_templates(req.templates)
        except InvalidInputError as e:
            raise ApiError(400, f"'templates': {e}", param="templates", code="invalid_templates") from None
        # text -> image scores are the model family's: CLIP's cosine, SigLIP's sigmoid probability
        query.update(text=text, templates=req.templates,
                     score=getattr(getattr(svc.searcher, "pair_score", None), "name", "cosine"))
        hits = await svc.call(svc.search_text, text, k, templates=req.templates, filt=filt, exact=req.exact,
                              param="text")
    elif source == "id":
        _check_id(svc, req.id)
        query["id"] = req.id
        hits = await svc.call(svc.search_id, req.id, k, filt=filt, exact=req.exact, param="id")
    else:
        image = _image(req, upload, svc.settings)
        query["image"] = f"<{len(image)} bytes>"
        hits = await svc.call(svc.search_image, image, k, filt=filt, exact=req.exact, param="image")
    return JSONResponse({"query": query, "results": [_hit(n + 1, h) for n, h in enumerate(hits)]})


@router.post("/ask", response_model=AskResponse)
async def ask(request: Request) -> Any:
    """Answer a question about an uploaded image or an indexed one (VQA): the answer and its top-k."""
    svc = _services(request)
    req, upload = await _read(request, AskRequest)
    inputs.one_source(req.image, req.id, upload)
    if req.question is None:
        raise ApiError(400, "'question' is required", param="question", code="missing_field")
    question = inputs.check_text(req.question, svc.settings, "question")
    top_k = inputs.integer(req.top_k, "top_k", 1, 20)
    if req.id is not None:
        _check_id(svc, req.id)
    image = _image(req, upload, svc.settings) if req.id is None else None
    out = await svc.call(svc.ask, question, image=image, item_id=req.id, top_k=top_k, param="image")
    return JSONResponse(out)


@router.post("/describe", response_model=DescribeResponse)
async def describe(request: Request) -> Any:
    """Image -> prompt: the known prompts nearest to the A/B ensemble's embedding, and the neighbours'."""
    svc = _services(request)
    req, upload = await _read(request, DescribeRequest)
    inputs.one_source(req.image, req.id, upload)
    n = inputs.integer(req.n, "n", 1, 20)
    alpha = inputs.alpha(req.alpha)
    if req.id is not None:
        _check_id(svc, req.id)
        image: Any = await svc.call(svc.stored_path, req.id)
    else:
        image = _image(req, upload, svc.settings)
    out = await svc.call(svc.describe, image, n=n, alpha=alpha, embedding=req.embedding, param="image")
    return JSONResponse(out)


@router.get("/info")
async def info(request: Request) -> Any:
    """What the page needs to draw itself: models, the index (count, filterable fields), limits."""
    svc = _services(request)
    idx = None
    if svc.index is not None:
        idx = {"count": len(svc.index), "dim": svc.index.dim, "fields": svc.fields}
    dim = svc.encoder.dim
    return {"models": [_card(m, dim) for m in MODELS.values()], "index": idx, "limits": svc.settings.limits(),
            "templates": _template_choices()}


def _template_choices() -> list[dict[str, str]]:
    from clipq.runtime.templates import SINGLE_TEMPLATE

    return [{"value": "default", "label": "ensemble of 8 templates"}, {"value": "none", "label": "bare text"},
            {"value": SINGLE_TEMPLATE, "label": SINGLE_TEMPLATE.replace("{}", "…")}]


__all__ = ["router", "validation_error"]
