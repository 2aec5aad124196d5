"""The OpenAPI document: what the server really answers, built once per app from the registry.

FastAPI documents the 200s (each route declares its model) and nothing else truthfully: its
default 422 is `HTTPValidationError` (an array `detail`) while every error here is a string
`detail` in the dialect's shape. So:

- `error_responses(dialect, path, answers)` lists, for one route, every error status the server
  answers there, each with the error model of the dialect whose shape it takes (the route's
  owner, or for a body in another dialect on a shared route, `Dialect.shared_with`, that one's),
  the headers sent with it and when it happens. create_app passes it to `include_router` route by
  route, so FastAPI renders the models itself (one pass: shared components, no name clashes).
  The statuses are those the shape's `error` really returns (vLLM's turns 422 into 400).
- Which answers a route can give is its kind (`Dialect.answers[path]`, default `SCORING_ROUTE`):
  a JSON body or none, scored by the core, calling the engine, relayed to vLLM.
- `scoring_answers(settings, ...)` is the catalogue of those answers for one deployment: the
  edge's own (malformed JSON, body size, schema, auth, rate limit), every domain error mapped in
  server/errors.py (a new domain error is documented by mapping it), and what vLLM itself answers
  on relayed routes. 401 and 429 are listed only when auth / rate limiting are on.
- `install_openapi(app, settings)` generates the document and finishes it: bounds that are
  per deployment (maxItems = max_documents, maximum = max_model_len, the largest token id of the
  served tokenizer, the served model name) are written in, `X-Request-Id` is documented on every
  response, `X-Priority` on every route scored by the core, and FastAPI's own 422
  (`HTTPValidationError`) goes: on a registered route the real statuses are already there, on
  any other route it becomes the common error model.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from server.errors import ErrorBody, domain_statuses
from server.images import errors as images
from server.scoring import errors as domain
from server.state import app_state

# Key of a request field's JSON schema that names the deployment values its bounds come from:
# {"maxItems": "max_documents"}; filled in here, when the document is built (see
# dialects/common.py documents_field). A value not known yet (the tokenizer's, before start-up)
# leaves that keyword out.
SETTING_BOUNDS = "x-setting-bounds"


def setting_bounds(**keywords: str) -> dict[str, Any]:
    """json_schema_extra for a field bounded by deployment values, e.g. maxItems="max_documents"."""
    return {SETTING_BOUNDS: keywords}


# Key of a schema node whose keywords depend on the served model's family: {"text": {...},
# "vl": {...}}, merged into the node when the document is built (images are valid input only when
# Qwen3-VL-Reranker is served).
FAMILY_SCHEMA = "x-family-schema"


def family_schema(text: dict[str, Any] | None = None, vl: dict[str, Any] | None = None) -> dict[str, Any]:
    return {FAMILY_SCHEMA: {"text": text or {}, "vl": vl or {}}}


# Key of an operation's openapi_extra naming the models of a body the route reads as `Any` (it
# dispatches on the body itself, or passes it to vLLM): see `documented_body`.
BODY_MODELS = "x-body-models"
_BODY_MODELS: dict[str, Any] = {}


def documented_body(*alternatives: Any) -> dict[str, Any]:
    """openapi_extra of a route whose body parameter is `Any`: the request body documented as one
    of `alternatives`, each a model or (model, extra JSON Schema applied with it, e.g. a `not`).
    The models' schemas join the document's components when it is built (`finish`)."""
    names = []
    for alternative in alternatives:
        model, extra = alternative if isinstance(alternative, tuple) else (alternative, None)
        _BODY_MODELS[model.__name__] = model
        names.append([model.__name__, extra])
    return {BODY_MODELS: names}


# What a route can answer besides its 200 (Dialect.answers). Every registered route can also
# answer 401 and 429 when auth / rate limiting are on.
JSON_BODY = "json_body"  # takes a JSON body: 400 not JSON / not UTF-8, 413 over max_body_bytes, 422
SCORED = "scored"        # scored by the core: every domain error (limits, admission, engine)
ENGINE = "engine"        # calls the engine: 503 when it is down, 504 when it does not answer
RELAYED = "relayed"      # passed to vLLM: vLLM's own 400/404, the shim's input and admission limits
IMAGES = "images"        # reads images (server/images/): their refusals (format, size, source, fetch)
SCORING_ROUTE = frozenset({JSON_BODY, SCORED})
IMAGE_SCORING_ROUTE = SCORING_ROUTE | {IMAGES}

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
    """One way a request can fail: status and `type` as the edge decides them (before the
    dialect shapes them), when it happens, the headers always sent with it, the route kinds it
    happens on (None: every route), and whether it is decided before the body is read (then the
    route's owner shapes it, whatever dialect the body speaks)."""

    status: int
    type: str
    when: str
    headers: tuple[str, ...] = ()
    kinds: frozenset[str] | None = None
    edge: bool = False


# The route kinds each domain error can come from (a domain error not listed: SCORED only).
_DOMAIN_KINDS = {
    domain.InvalidInput: {SCORED, RELAYED},
    domain.NoRoom: {SCORED, RELAYED},
    domain.EngineUnavailable: {SCORED, ENGINE, RELAYED},
    domain.EngineTimeout: {SCORED, ENGINE, RELAYED},
    images.InvalidImage: {IMAGES},
    images.ImageTooLarge: {IMAGES},
    images.ImageRefused: {IMAGES},
    images.ImageFetchFailed: {IMAGES},
}


def scoring_answers(settings, auth: bool, rate_limit: str | None) -> list[Answer]:
    """Every error a registered route of this deployment can answer (499 is not among them: it
    is only logged and metered, the client that left gets nothing)."""
    body = frozenset({JSON_BODY})
    answers = [
        Answer(400, "invalid_request", "the body is not valid JSON", kinds=body, edge=True),
        Answer(400, "http_error", "the body is not valid UTF-8", kinds=body, edge=True),
        Answer(413, "payload_too_large",
               f"the body is larger than max_body_bytes ({settings.max_body_bytes} bytes)",
               kinds=body, edge=True),
        Answer(422, "invalid_request", "the body does not match the request schema (`detail` "
               "names the field and the rule, e.g. `documents must contain at least one item`)",
               kinds=body),
    ]
    if auth:
        answers.append(Answer(401, "unauthorized", "the bearer token (API key or JWT) is missing "
                              "or not accepted", ("WWW-Authenticate",), edge=True))
    if rate_limit:
        answers.append(Answer(429, "rate_limited", f"this client sent more than {rate_limit} "
                              "(per API key when auth is on, else per client IP)", ("Retry-After",),
                              edge=True))
    when = _domain_when(settings)
    for cls, (status, type_) in domain_statuses():
        if status == 499 or (cls is images.ImageFetchFailed and not settings.image_fetch):
            continue  # 499: no client receives it; nothing is fetched with image_fetch off
        text = when.get(cls) or (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        answers.append(Answer(status, type_, text, ("Retry-After",) if status in (429, 503) else (),
                              kinds=frozenset(_DOMAIN_KINDS.get(cls, {SCORED}))))
    relayed = frozenset({RELAYED})
    answers += [
        Answer(400, "invalid_request", "vLLM refused the body (its own validation: e.g. an empty "
               "prompt, a token id outside the vocabulary, a prompt longer than max_model_len "
               f"({settings.max_model_len} tokens)); its error object is relayed", kinds=relayed),
        Answer(404, "not_found", "`model` names a model this server does not serve (vLLM's check)",
               kinds=relayed),
    ]
    return answers


def _domain_when(settings) -> dict[type, str]:
    """What each domain error means on the wire, with this deployment's numbers."""
    return {
        domain.InvalidInput: (
            "the request cannot be scored as sent: more than max_documents "
            f"({settings.max_documents}) documents; invalid Unicode (a lone surrogate); a "
            "document that does not fit the model when the body asks for a refusal instead of a "
            "cut (TEI `truncate: false`, NIM `truncate: NONE`, Voyage `truncation: false`, "
            "Pinecone `parameters.truncate: NONE`); a "
            "query and instruction that leave no room for a document within max_model_len "
            f"({settings.max_model_len} tokens), or within vLLM's `truncate_prompt_tokens`; "
            "vLLM's /score with lists of unequal lengths (1:1, 1:N or N:N only); an X-Priority "
            "other than interactive or bulk"),
        domain.TooLarge: ("more document tokens (after cuts) than max_request_tokens "
                          f"({settings.max_request_tokens})"),
        domain.NoRoom: "the server is full (in-flight pairs or tokens at their bound); retry later",
        domain.EngineUnavailable: "the engine is down, restarting or busy; retry later",
        domain.EngineTimeout: f"the engine did not answer within upstream_timeout "
                              f"({settings.upstream_timeout:g} s)",
        domain.EngineRejected: "the engine refused the input",
        domain.EngineBadAnswer: "the engine answered something that is not a finite score",
        images.InvalidImage: (
            "an image cannot be used: not valid base64 or data: URL, not of an accepted format "
            f"({', '.join(settings.image_formats)}), truncated or corrupt"),
        images.ImageTooLarge: (
            f"an image is larger than image_max_bytes ({settings.image_max_bytes} bytes) or "
            f"image_max_pixels ({settings.image_max_pixels}), or the request's images decode to "
            f"more than image_max_request_bytes ({settings.image_max_request_bytes})"),
        images.ImageRefused: (
            "an image source this server does not read: a scheme other than data:, http:, https:"
            + ("; an http(s) URL of a host outside image_fetch_hosts or at a non-public address, "
               "credentials in the URL, too many redirects" if settings.image_fetch
               else "; any http(s) URL (image_fetch is off: send data: URLs or base64)")),
        images.ImageFetchFailed: (
            "an image URL could not be read: the host does not resolve, the connection failed, "
            "an answer other than 200, or image_fetch_timeout "
            f"({settings.image_fetch_timeout:g} s) passed"),
    }


def route_kinds(dialect, path: str) -> frozenset[str]:
    return dialect.answers.get(path, SCORING_ROUTE)


def with_images(dialect):
    """The dialect as documented when a Qwen3-VL reranker is served: the paths that take images
    also answer the image refusals."""
    if not dialect.images:
        return dialect
    answers = {**dialect.answers, **{p: route_kinds(dialect, p) | {IMAGES} for p in dialect.images}}
    return dataclasses.replace(dialect, answers=answers)


def error_responses(dialect, path: str, answers: list[Answer]) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries of one route: one per status that the error shapes of the route
    (its owner's, and those of `shared_with` for bodies in another dialect) return."""
    kinds = route_kinds(dialect, path)
    grouped: dict[int, list[tuple[Answer, Any]]] = {}
    for answer in answers:
        if answer.kinds is not None and not answer.kinds & kinds:
            continue
        shapes = [dialect] if answer.edge else [dialect, *dialect.shared_with]
        for shape in shapes:
            status, _ = shape.error(answer.status, answer.when, answer.type, "")
            grouped.setdefault(status, []).append((answer, shape))
    out: dict[int | str, dict[str, Any]] = {}
    for status, group in sorted(grouped.items()):
        lines: dict[Any, list[str]] = {}
        for answer, shape in group:  # one line per answer, naming the body dialects it is for
            lines.setdefault(answer, []).append(shape.name)
        shared = bool(dialect.shared_with)
        text = [f"- {a.when} (`type`: {a.type})" + (f"; {', '.join(names)} bodies" if shared else "")
                for a, names in lines.items()]
        names = dict.fromkeys(h for a, _ in group for h in a.headers)  # ordered, unique
        headers = {h: {**HEADERS[h], "required": all(h in a.headers for a, _ in group)} for h in names}
        models = list(dict.fromkeys(shape.error_model for _, shape in group))
        model = models[0] if len(models) == 1 else Union[tuple(models)]  # noqa: UP007 - a runtime union
        out[status] = {"model": model, "description": "\n".join(text),
                       **({"headers": headers} if headers else {})}
    return out


def install_openapi(app: FastAPI, settings) -> None:
    """Replace app.openapi with the finished document, generated now (a document that cannot be
    generated fails start-up, not the first visit to /docs). `refresh_openapi(app)` builds it
    again once start-up has loaded the tokenizer (its largest token id bounds token-id inputs)."""
    dialects = app_state(app).dialect_of
    scored = {path for path, d in dialects.items() if SCORED in route_kinds(d, path)}

    generated: list[dict] = []  # FastAPI's own document, made once: the routes do not change

    def openapi() -> dict:
        if app.openapi_schema is None:
            if not generated:
                # FastAPI.openapi fills app.openapi_schema; the route declarations it reads are
                # shared between apps (module-level routers), so keep a copy and finish copies
                generated.append(copy.deepcopy(FastAPI.openapi(app)))
            app.openapi_schema = finish(copy.deepcopy(generated[0]), deployment_values(app, settings),
                                        set(dialects), scored)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace the document
    openapi()


def refresh_openapi(app: FastAPI) -> None:
    """Finish the document again with what start-up loaded (FastAPI's part is not regenerated)."""
    app.openapi_schema = None
    app.openapi()


def deployment_values(app: FastAPI | None, settings) -> dict[str, Any]:
    """The values SETTING_BOUNDS may name: settings, and what start-up loaded."""
    values: dict[str, Any] = {name: getattr(settings, name)
                              for name in ("max_documents", "max_model_len")}
    values["served_models"] = [settings.model_name, ""]  # vLLM takes "" for its one model
    started = app_state(app).started if app is not None else None
    values["model_family"] = started.scorer.family if started is not None else (
        settings.model_family if settings.model_family != "auto" else "text")
    if started is not None:  # vLLM refuses ids from the vocabulary's size on ("out of vocabulary")
        values["max_token_id"] = started.scorer.encoder.tokenizer.get_vocab_size(with_added_tokens=True) - 1
    return values


def finish(document: dict, values: dict[str, Any], registered: set[str], scored: set[str]) -> dict:
    """The generated document made true: bounds filled in, FastAPI's own 422 gone, the headers
    and the X-Priority parameter. `registered`: the dialects' paths; `scored`: those scored by
    the core."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _document_bodies(document, schemas)
    _fill_bounds(document, values)
    _replace_validation_error(document, schemas, registered)
    # the middleware sends X-Request-Id with every response: one definition, referenced
    components.setdefault("headers", {})["X-Request-Id"] = {**HEADERS["X-Request-Id"], "required": True}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in scored:
                operation.setdefault("parameters", []).append(dict(PRIORITY_PARAMETER))
            for response in operation.get("responses", {}).values():
                response.setdefault("headers", {})["X-Request-Id"] = {
                    "$ref": "#/components/headers/X-Request-Id"}
    return document


def _document_bodies(document: dict, schemas: dict) -> None:
    """Each operation's BODY_MODELS as its required JSON request body, the models as components."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            alternatives = operation.pop(BODY_MODELS, None)
            if alternatives is None:
                continue
            models = [_BODY_MODELS[name] for name, _ in alternatives]
            _, defs = models_json_schema([(m, "validation") for m in models],
                                         ref_template="#/components/schemas/{model}")
            for name, schema in defs.get("$defs", {}).items():
                # a model FastAPI already rendered stays as it did (it leaves out null defaults);
                # another model of the same name would be a clash
                if set(schemas.setdefault(name, schema).get("properties", {})) != set(schema.get("properties", {})):
                    raise ValueError(f"two different schemas named {name} in the OpenAPI document")
            refs: list[dict[str, Any]] = [{"$ref": f"#/components/schemas/{name}"} if extra is None
                    else {"allOf": [{"$ref": f"#/components/schemas/{name}"}], **extra}
                    for name, extra in alternatives]
            schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": schema}}}


def _fill_bounds(node: Any, values: dict[str, Any]) -> None:
    """Each SETTING_BOUNDS, anywhere in the document, replaced by the keywords it names."""
    if isinstance(node, dict):
        by_family = node.pop(FAMILY_SCHEMA, None)
        if by_family is not None:
            node.update(by_family[values.get("model_family", "text")])
        bounds = node.pop(SETTING_BOUNDS, None)
        for keyword, name in (bounds or {}).items():
            if values.get(name) is not None:
                node[keyword] = values[name]
        for value in node.values():
            _fill_bounds(value, values)
    elif isinstance(node, list):
        for value in node:
            _fill_bounds(value, values)


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"


def _replace_validation_error(document: dict, schemas: dict, registered: set[str]) -> None:
    """No error here has FastAPI's array `detail`. FastAPI adds its 422 to every route with a
    body or parameters unless the route declares one: on a registered route the statuses the
    server really answers are already documented (vLLM's routes answer 400 instead), so it goes;
    on any other route it is documented with the common error model. Its two components go."""
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422")
            content = (response or {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") != _FASTAPI_422:
                continue
            if path in registered:
                del operation["responses"]["422"]
            else:
                schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
                response["description"] = "the request does not match the schema"
                content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
