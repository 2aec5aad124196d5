"""One error type and one set of handlers: every error body has the same shape.

Body: {"detail": str, "message": str, "type": str, "id": request id}. `detail` is what Jina-style
clients (LangChain, LlamaIndex, Haystack) raise with; `message` is Cohere's field. TEI-shaped
requests on /rerank also get TEI's `error` and `error_type`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.responses import FastJSONResponse


class ApiError(Exception):
    def __init__(self, status: int, detail: str, type_: str = "invalid_request",
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.headers = headers or {}


class EngineUnavailable(ApiError):
    """The engine cannot take work right now: 503 with Retry-After, clients should retry."""

    def __init__(self, detail: str, retry_after: int = 1):
        super().__init__(503, detail, "engine_unavailable", {"Retry-After": str(retry_after)})


class Overloaded(ApiError):
    def __init__(self, detail: str, retry_after: int = 1, status: int = 429):
        super().__init__(status, detail, "overloaded", {"Retry-After": str(retry_after)})


def error_response(request: Request | None, status: int, detail: str, type_: str,
                   headers: dict[str, str] | None = None) -> FastJSONResponse:
    request_id = request.scope.get("request_id", "") if request is not None else ""
    body = {"detail": detail, "message": detail, "type": type_, "id": request_id}
    if request is not None and request.scope.get("path") == "/rerank":  # TEI clients read these
        body["error"] = detail
        body["error_type"] = type_
    return FastJSONResponse(body, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg')}")
    return 422, "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(request, exc.status, exc.detail, exc.type, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        status, detail = _validation_detail(exc)
        return error_response(request, status, detail, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail), "http_error",
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        import logging

        logging.getLogger("server").exception("unhandled error")
        return error_response(request, 500, "internal error", "internal_error")
