"""The playground: a static page at / and /playground to try the reranker in a browser.

Not a scoring dialect: the page is three static files shipped in this package (no build step, no
CDN, works offline) and one small JSON endpoint with what the page needs to know about the server.
The page scores through the public seed-shape `POST /rerank`, so its calls carry the user's key
and get the same auth and rate limits as any other client; only the page itself is public. With a
Qwen3-VL reranker served, images dropped, pasted or chosen on the page are documents too, sent as
vLLM's `{"content": [{"type": "image_url", ...}]}` with data: URLs (read in the browser, never
uploaded anywhere else).
Mounted by create_app when the `playground` setting is on; kept out of the OpenAPI schema.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.responses import FastJSONResponse
from server.state import request_state

_HERE = Path(__file__).resolve().parent
# The page holds an API key in memory: allow scripts, styles and calls from this origin only, so
# nothing injected (a pasted document is always shown as text, but defence in depth) can send it
# elsewhere. `data:` images only for the empty favicon.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # small files: always revalidate, so an upgraded server never runs last version's script
    "Cache-Control": "no-cache",
}
_FILES = {  # URL name -> (file, media type); read once, they are a few KB
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_CONTENT = {name: (_HERE / name).read_bytes() for name in _FILES}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    return Response(_CONTENT[name], media_type=_FILES[name], headers=_HEADERS)


# The page links its assets and calls the API by relative URLs, so it works the same at / and at
# /playground, and behind a proxy that mounts the service under a path prefix.
@router.get("/")
@router.get("/playground")
async def page() -> Response:
    return _file("index.html")


@router.get("/playground/app.js")
async def script() -> Response:
    return _file("app.js")


@router.get("/playground/style.css")
async def style() -> Response:
    return _file("style.css")


@router.get("/playground/config")
async def config(request: Request) -> FastJSONResponse:
    """What the page shows and needs; no secrets (only whether auth is on)."""
    state = request_state(request)
    settings = state.settings
    # a Qwen3-VL reranker has its own default instruction; the family is known once the shim has
    # started (an app built without its lifespan serves the page for the text model)
    vl = state.started.scorer.vl if state.started is not None else None
    return FastJSONResponse({
        "model": settings.model_name,
        "default_instruction": vl.default_instruction if vl is not None else settings.default_instruction,
        "max_documents": settings.max_documents,
        "max_model_len": settings.max_model_len,
        "auth": state.auth.enabled,
        # vLLM's /score shape is offered as a snippet; say whether this server answers it itself
        "score_route": any(getattr(r, "path", None) == "/score" for r in request.app.routes),
        # a Qwen3-VL reranker: the page takes dropped, pasted or chosen images as documents
        "images": vl is not None,
    }, headers={"Cache-Control": "no-store"})
