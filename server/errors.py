"""The HTTP edge of every error: status codes and body shapes are decided here, nowhere else.

The scoring core and the engine client raise domain errors (server/scoring/errors.py); ops code
(auth, rate limits) raises `ApiError`, which already carries its status. One set of handlers turns
either into a response, and the dialect that owns the route shapes the body (`Dialect.error`;
default body: {"detail", "message", "type", "id"}). `detail` is what Jina-style clients
(LangChain, LlamaIndex, Haystack) raise with; `message` is Cohere's field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.images import errors as images
from server.responses import FastJSONResponse
from server.scoring import errors as domain
from server.state import request_state


class ApiError(Exception):
    """An error whose HTTP status is already known (auth, rate limit, HTTP-level problems)."""

    def __init__(self, status: int, detail: str, type_: str = "invalid_request",
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.headers = headers or {}


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(seconds)))}


# Domain error -> (status, type). 503 and 429 always come with Retry-After. An image error is
# also a general one (InvalidImage is an InvalidInput, ImageTooLarge a TooLarge): `http_error`
# walks the error's MRO, so its own class, listed here, decides its status and type.
_DOMAIN_STATUS: dict[type[domain.ScoringError], tuple[int, str]] = {
    images.InvalidImage: (422, "invalid_image"),
    images.ImageTooLarge: (413, "image_too_large"),
    images.ImageRefused: (400, "image_refused"),
    images.ImageFetchFailed: (422, "image_fetch_failed"),
    domain.InvalidInput: (422, "invalid_request"),
    domain.TooLarge: (413, "payload_too_large"),
    domain.NoRoom: (503, "overloaded"),
    domain.EngineUnavailable: (503, "engine_unavailable"),
    domain.EngineTimeout: (504, "timeout"),
    domain.EngineRejected: (400, "invalid_request"),
    domain.EngineBadAnswer: (502, "engine_error"),
    domain.Cancelled: (499, "client_closed"),
}


def domain_statuses() -> list[tuple[type[domain.ScoringError], tuple[int, str]]]:
    """The mapping above, read by the OpenAPI document (server/openapi.py)."""
    return list(_DOMAIN_STATUS.items())


def http_error(exc: Exception) -> ApiError:
    """The one mapping from a domain error to an HTTP error."""
    if isinstance(exc, ApiError):
        return exc
    for cls in type(exc).__mro__:
        if cls in _DOMAIN_STATUS:
            status, type_ = _DOMAIN_STATUS[cls]
            headers = retry_after(exc.retry_after) if hasattr(exc, "retry_after") else {}
            return ApiError(status, getattr(exc, "detail", str(exc)), type_, headers)
    raise TypeError(f"not a mapped error: {exc!r}")


class ErrorBody(BaseModel):
    """The model of `default_error_body`: what the OpenAPI document promises for every error of a
    dialect that keeps the default shape (`Dialect.error_model`)."""

    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="what went wrong, as a sentence (Jina-style clients raise it)")
    message: str = Field(description="the same sentence (Cohere's field)")
    type: str = Field(description="machine-readable kind, e.g. invalid_request, overloaded")
    id: str = Field(description="the request id, also sent as the X-Request-Id header")


def default_error_body(status: int, detail: str, type_: str, request_id: str) -> tuple[int, dict]:
    return status, {"detail": detail, "message": detail, "type": type_, "id": request_id}


def error_response(request: Request | None, status: int, detail: str, type_: str,
                   headers: dict[str, str] | None = None) -> FastJSONResponse:
    request_id = request.scope.get("request_id", "") if request is not None else ""
    shape: Callable[[int, str, str, str], tuple[int, dict]] = default_error_body
    if request is not None:
        # A route that speaks several dialects (/rerank: TEI or vLLM) names the one the body
        # speaks in scope["dialect"]; otherwise the route's owner shapes the error.
        dialect = request.scope.get("dialect") or request_state(request).dialect_of.get(request.scope["path"])
        if dialect is not None:
            shape = dialect.error
    status, body = shape(status, detail, type_, request_id)
    return FastJSONResponse(body, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "request body is not valid JSON"
    parts = []
    for where, e in _one_per_field(list(errors))[:5]:
        parts.append(_readable(where, e))
    return 422, "; ".join(parts)


# pydantic names the member of a union that refused a value in the error's location
# ("documents.list[union[str,dict[str,any]]]", "query.constrained-str"): not a field of the body
_UNION_MEMBER = re.compile(r"[\[\](),\-]|^(str|int|float|bool|dict|list|none|bytes)$")
_JSON_TYPE_OF_MEMBER = {str: "str", bool: "bool", int: "int", float: "float", list: "list", dict: "dict"}


def _one_per_field(errors: list[dict]) -> list[tuple[str, dict]]:
    """(field path, error), one per field: of the errors each member of a union gave for a value,
    the one of the member of the value's own JSON type (a string refused by a pattern, not "is
    not a list"), else the first."""
    by_field: dict[str, list[dict]] = {}
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(p for p in loc if not _UNION_MEMBER.search(p)) or "body"
        by_field.setdefault(where, []).append(e)
    out = []
    for where, group in by_field.items():
        kind = _JSON_TYPE_OF_MEMBER.get(type(group[0].get("input")), "")
        same = [e for e in group if kind and any(kind in str(p) for p in e.get("loc", ())[-1:])]
        out.append((where, (same or group)[0]))
    return out


def _readable(where: str, error: dict) -> str:
    """One schema violation as a sentence. Constraints the request models declare (so that the
    OpenAPI document states them) get the wording the scoring core used when it was the only
    one checking them; anything else keeps pydantic's message."""
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "too_short" and ctx.get("min_length") == 1:
        return f"{where} must contain at least one item"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"{where} must be a non-empty string"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NON_BLANK:
        return f"{where} must be a non-empty string (not only whitespace)"
    return f"{where}: {error.get('msg')}"


# A string with at least one character that is not whitespace. The class lists exactly the
# characters Python's str.isspace() calls whitespace (what the core's `query.strip()` removes),
# spelled out because `\S` means three different sets in pydantic's Rust regex, Python's `re`
# and the ECMA-262 regex of JSON Schema (they disagree on U+001C-U+001F, U+0085 and U+FEFF).
# Search semantics (unanchored) in pydantic and in JSON Schema alike.
NON_BLANK = (r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a"
             r"\u2028\u2029\u202f\u205f\u3000]")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    @app.exception_handler(domain.ScoringError)
    async def _api_error(request: Request, exc: Exception):
        err = http_error(exc)
        return error_response(request, err.status, err.detail, err.type, err.headers)

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
        logging.getLogger("server").exception("unhandled error")
        return error_response(request, 500, "internal error", "internal_error")
