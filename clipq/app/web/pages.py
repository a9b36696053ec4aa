"""The page and what it loads: ``/`` (static HTML/JS/CSS), ``/thumbs/{id}``, ``/healthz``, ``/metrics``.

Thumbnails are drawn from the image paths stored in the index's metadata and looked up by id
only: a request names an id, never a path, so the app opens no file the index does not list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from .errors import ApiError

STATIC = Path(__file__).resolve().parent / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> Any:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


@router.get("/thumbs/{item_id:path}", include_in_schema=False)
async def thumbnail(item_id: str, request: Request, size: int | None = Query(None, ge=16, le=512)) -> Any:
    """A JPEG thumbnail of an indexed image, by its id."""
    svc = request.app.state.services
    if svc.index is None:
        raise ApiError(404, "no image index is loaded", code="no_index")
    if item_id not in svc.index:
        raise ApiError(404, f"no item with id {item_id!r} in the index", param="id", code="unknown_id")
    data = await svc.call(svc.thumbnail, item_id, size or svc.settings.thumb_size, param="id")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/healthz")
async def healthz(request: Request) -> Any:
    """200 when the backend answers (within 5 s), 503 otherwise; says what the app serves."""
    svc = request.app.state.services
    body: dict[str, Any] = {"status": "ok", "backend": svc.source or type(svc.backend).__name__,
                            "index_items": len(svc.index) if svc.index is not None else None,
                            "pending": svc.pending}
    try:
        await svc.call(svc.health, timeout_s=min(5.0, svc.settings.timeout_s))
    except ApiError as e:
        body.update(status="unavailable", error=e.message)
        return JSONResponse(body, status_code=503)
    return body


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Any:
    """Prometheus text format."""
    m = request.app.state.metrics
    svc = request.app.state.services
    m.pending.set(svc.pending)
    if svc.index is not None:
        m.index_items.set(len(svc.index))
    data, ctype = m.render()
    return Response(data, media_type=ctype)
