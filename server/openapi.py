"""The OpenAPI document: what the server really answers, built once per app from the registry.

FastAPI documents the 200s (each route declares its model) and nothing else truthfully: its
default 422 is `HTTPValidationError` (an array `detail`) while every error here is a string
`detail` in the dialect's shape. So:

- `error_responses(dialect, answers)` lists, for a dialect's routes, every error status the
  server answers there, each with the dialect's `error_model`, the headers sent with it and a
  description of when it happens. create_app passes it to `include_router`, so FastAPI renders
  the models itself (one pass: shared components, no name clashes). The statuses are those that
  `dialect.error` really returns for each answer (a dialect may remap statuses).
- `scoring_answers(settings, ...)` is the catalogue of those answers for one deployment: the
  edge's own (malformed JSON, body size, schema, auth, rate limit) plus every domain error
  mapped in server/errors.py (a new domain error is documented by mapping it). 401 and 429 are
  listed only when auth / rate limiting are on.
- `install_openapi(app, settings)` generates the document once and finishes it: settings that
  bound a request (maxItems = max_documents) are written in, `X-Request-Id` is documented on
  every response, `X-Priority` on every scoring route, and any `HTTPValidationError` FastAPI
  still adds (a future route with parameters outside the registry) becomes the error model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from server.errors import ErrorBody, domain_statuses
from server.scoring import errors as domain

# Key a request field's JSON schema carries to say which setting is its maxItems (per deployment,
# so it is filled in here, when the app is built). See dialects/common.py documents_field.
MAX_ITEMS_SETTING = "x-max-items-setting"

HEADERS = {
    "Retry-After": {"description": "seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "the scheme to authenticate with",
                         "schema": {"type": "string", "example": 'Bearer realm="reranker"'}},
    "X-Request-Id": {"description": "the request's id (the caller's own X-Request-Id when it is "
                                    "1-128 characters of [A-Za-z0-9._:-], else a new one); "
                                    "error bodies carry it as `id`, the access log as request_id",
                     "schema": {"type": "string"}},
}

PRIORITY_PARAMETER = {
    "name": "X-Priority", "in": "header", "required": False,
    "description": "scheduling class of this request: interactive work is dispatched before bulk "
                   "work; default: decided by the request's size (interactive_max_tokens)",
    "schema": {"type": "string", "enum": ["interactive", "bulk"]},
}


@dataclass(frozen=True)
class Answer:
    """One way a scoring request can fail: status and `type` as the edge decides them (before
    the dialect shapes them), when it happens, and the headers always sent with it."""

    status: int
    type: str
    when: str
    headers: tuple[str, ...] = ()


def scoring_answers(settings, auth: bool, rate_limit: str | None) -> list[Answer]:
    """Every error a scoring route of this deployment can answer (499 is not among them: it is
    only logged and metered, the client that left gets nothing)."""
    answers = [
        Answer(400, "invalid_request", "the body is not valid JSON"),
        Answer(400, "http_error", "the body is not valid UTF-8"),
        Answer(413, "payload_too_large",
               f"the body is larger than max_body_bytes ({settings.max_body_bytes} bytes)"),
        Answer(422, "invalid_request", "the body does not match the request schema (`detail` "
               "names the field and the rule, e.g. `documents must contain at least one item`)"),
    ]
    if auth:
        answers.append(Answer(401, "unauthorized", "the bearer token (API key or JWT) is missing "
                              "or not accepted", ("WWW-Authenticate",)))
    if rate_limit:
        answers.append(Answer(429, "rate_limited", f"this client sent more than {rate_limit} "
                              "(per API key when auth is on, else per client IP)", ("Retry-After",)))
    when = _domain_when(settings)
    for cls, (status, type_) in domain_statuses():
        if status == 499:
            continue
        text = when.get(cls) or (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        answers.append(Answer(status, type_, text, ("Retry-After",) if status in (429, 503) else ()))
    return answers


def _domain_when(settings) -> dict[type, str]:
    """What each domain error means on the wire, with this deployment's numbers."""
    return {
        domain.InvalidInput: (
            "the request cannot be scored as sent: more than max_documents "
            f"({settings.max_documents}) documents; invalid Unicode (a lone surrogate); a "
            "document object without the field it is ranked on (`text`, or a name in Cohere's "
            "`rank_fields`); TEI `truncate: false` with a text longer than the model takes; a "
            "query and instruction that leave no room for a document within max_model_len "
            f"({settings.max_model_len} tokens); an X-Priority other than interactive or bulk"),
        domain.TooLarge: ("more document tokens (after cuts) than max_request_tokens "
                          f"({settings.max_request_tokens})"),
        domain.NoRoom: "the server is full (in-flight pairs or tokens at their bound); retry later",
        domain.EngineUnavailable: "the engine is down, restarting or busy; retry later",
        domain.EngineTimeout: f"the engine did not answer within upstream_timeout "
                              f"({settings.upstream_timeout:g} s)",
        domain.EngineRejected: "the engine refused the input",
        domain.EngineBadAnswer: "the engine answered something that is not a finite score",
    }


def error_responses(dialect, answers: list[Answer]) -> dict[int, dict[str, Any]]:
    """The `responses` entries for a dialect's routes: one per status its error shape returns."""
    grouped: dict[int, list[Answer]] = {}
    for answer in answers:
        status, _ = dialect.error(answer.status, answer.when, answer.type, "")
        grouped.setdefault(status, []).append(answer)
    out = {}
    for status, group in sorted(grouped.items()):
        lines = [f"- {a.when} (`type`: {a.type})" for a in group]
        names = dict.fromkeys(h for a in group for h in a.headers)  # ordered, unique
        headers = {h: {**HEADERS[h], "required": all(h in a.headers for a in group)} for h in names}
        out[status] = {"model": dialect.error_model, "description": "\n".join(lines),
                       **({"headers": headers} if headers else {})}
    return out


def install_openapi(app: FastAPI, settings) -> None:
    """Replace app.openapi with the finished document, generated now (a document that cannot be
    generated fails start-up, not the first visit to /docs)."""
    scoring_paths = set(app.state.dialect_of)

    def openapi() -> dict:
        if app.openapi_schema is None:
            # FastAPI.openapi fills app.openapi_schema; the route declarations it reads are shared
            # between apps (module-level routers), so finish a copy
            document = copy.deepcopy(FastAPI.openapi(app))
            app.openapi_schema = finish(document, settings, scoring_paths)
        return app.openapi_schema

    app.openapi = openapi
    openapi()


def finish(document: dict, settings, scoring_paths: set[str]) -> dict:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _fill_settings(schemas, settings)
    _replace_validation_error(document, schemas)
    # the middleware sends X-Request-Id with every response: one definition, referenced
    components.setdefault("headers", {})["X-Request-Id"] = {**HEADERS["X-Request-Id"], "required": True}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in scoring_paths:
                operation.setdefault("parameters", []).append(dict(PRIORITY_PARAMETER))
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})["X-Request-Id"] = {
                    "$ref": "#/components/headers/X-Request-Id"}
    return document


def _fill_settings(node: Any, settings) -> None:
    """maxItems from the setting a field names (MAX_ITEMS_SETTING), anywhere in the schemas."""
    if isinstance(node, dict):
        name = node.pop(MAX_ITEMS_SETTING, None)
        if name is not None:
            node["maxItems"] = int(getattr(settings, name))
        for value in node.values():
            _fill_settings(value, settings)
    elif isinstance(node, list):
        for value in node:
            _fill_settings(value, settings)


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _replace_validation_error(document: dict, schemas: dict) -> None:
    """No error here has FastAPI's array `detail`: a 422 FastAPI added on its own is documented
    with the common error model instead, and its two components go."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            content = (response or {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == _FASTAPI_422:
                schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
                response["description"] = "the request does not match the schema"
                content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
