"""``clipq app``: a search / ask / describe page and an OpenAI-compatible REST API over the runtime.

Why FastAPI (on Starlette, served by uvicorn): request bodies are pydantic models, which is how
infinity and text-embeddings-inference declare OpenAI's embeddings schema, and FastAPI validates
them and publishes the OpenAPI description (``/docs``) from the same classes; underneath it is plain
Starlette, so the body-size limit, metrics and error handling are small ASGI pieces, and uvicorn is
the ASGI server both peers run. Gradio was not chosen: it brings its own front-end build and state
model, and the page here must keep its query in the URL and talk to the same REST API that other
programs use. The page is plain HTML, JS and CSS files served by the app (no npm build step).

Modules: :mod:`.settings` (limits, timeouts), :mod:`.errors` (OpenAI's error shape, status per clipq
error), :mod:`.schemas` (request and response models), :mod:`.inputs` (base64 / data-URI images,
text checks), :mod:`.services` (the runtime's task classes behind a bounded thread pool),
:mod:`.middleware` (body limit, Prometheus metrics, request ids and the access log), :mod:`.auth`
(API keys), :mod:`.quota` (per-client rate and concurrency limits), :mod:`.routes` (``/v1/*``), :mod:`.pages` (the
page, thumbnails, health, metrics), :mod:`.server` (the app factory and uvicorn).
Only the standard library is imported here: ``clipq --help`` must not load FastAPI.
"""

from __future__ import annotations

from .settings import AppSettings

__all__ = ["AppSettings"]
