"""What every dialect adapter shares: its declaration (`Dialect`), running the core for a
request, ranking, documents."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, Field, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from server.errors import NON_BLANK, ErrorBody, default_error_body
from server.openapi import setting_bounds
from server.scoring.core import ScoreRequest, ScoreResult
from server.scoring.errors import Cancelled, DocumentTooLong, InvalidInput
from server.state import request_state

Document = str | dict[str, Any]
ErrorShape = Callable[[int, str, str, str], tuple[int, dict]]

# --- request constraints every dialect shares (they appear in the OpenAPI document) -----------
# The scoring core checks the same things again (with the same wording): a dialect that does not
# use these types is still safe, and the core stays the one place that decides what is scorable.
# Request models are `strict=True`: JSON types as the document states them (pydantic's lax mode
# would also take 0 or "true" for a boolean and "5" for an integer, which no schema promises).
Query = Annotated[str, Field(min_length=1, pattern=NON_BLANK,
                             description="at least one character that is not whitespace")]
# A document object of a dialect without Cohere's rank_fields: ranked on its `text` (any JSON
# value; a non-string is ranked on its JSON text), other keys are echoed back. (Jina's image
# documents are taken on /v1/rerank only: server/dialects/cohere.py.)
TextObject = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "required": ["text"], "additionalProperties": True,
    "description": "ranked on `text`; other keys are echoed back with return_documents"})]


def _json_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def json_integer(minimum: int, maximum: int | None = None) -> Any:
    """An integer as JSON Schema means it: 3 or 3.0 (JSON has one number type; 3.5 is refused),
    never "3" or true. (Strict mode alone would refuse 3.0, lax mode would take "3".)"""
    return Annotated[int, Field(ge=minimum, le=maximum), Strict(False), BeforeValidator(_json_number)]


def _bool_from_string(value: Any) -> Any:
    return value == "true" if value in ("true", "false") else value


# A boolean some clients send as a string (RAGFlow's Xinference provider: "return_documents":
# "true"): true/false, or exactly "true"/"false"; anything else is refused as for a boolean.
LooseBool = Annotated[bool, BeforeValidator(_bool_from_string), WithJsonSchema({
    "anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false"]}],
    "description": "a boolean, or the string \"true\" or \"false\" (some clients send those)"})]


def documents_field(description: str) -> Any:
    """The documents list of a request: at least one; at most the `max_documents` setting. That
    bound is per deployment, so the model carries only the setting's name and the OpenAPI
    document gets `maxItems` when the app is built (server/openapi.py); the core enforces it
    with a message that names the setting."""
    return Field(min_length=1, description=description,
                 json_schema_extra=setting_bounds(maxItems="max_documents"))


@dataclass(frozen=True)
class Dialect:
    """Everything the rest of the server needs to know about one API dialect. Registered once,
    in server/dialects/__init__.py; the app mounts `router`, the middleware meters its paths
    (label = path), the error handler shapes errors on those paths with `error`, the tests
    validate every 200 body against the route's response model (`responses`), and the load
    generator can target it.

    error(status, detail, type, request_id) -> (status, body): a dialect may change the status
    too (vLLM answers 400 where we answer 422, for instance); the OpenAPI document lists the
    statuses `error` really returns, each with `error_model`."""

    name: str
    router: APIRouter
    error: ErrorShape = default_error_body
    # paths whose 200 body is vLLM's own, relayed as it is (its contract is vLLM's: checked
    # against the real engine in tests/integration/test_vllm_compat.py, not against a fake)
    relayed: frozenset[str] = frozenset()
    # the model of what `error` returns: the OpenAPI document lists it for every error status the
    # server answers on this dialect's paths (server/openapi.py), and the tests validate real
    # error bodies against it
    error_model: type[BaseModel] = ErrorBody
    # dialects whose bodies this dialect's routes also take, answering their errors in that
    # dialect's shape (vLLM bodies on /rerank and /v1/rerank: errors_as)
    shared_with: tuple[Dialect, ...] = ()
    # path -> what the route can answer besides its 200 (server/openapi.py: JSON_BODY, SCORED,
    # ENGINE, RELAYED); a path not listed is a scoring route (a JSON body, scored by the core)
    answers: dict[str, frozenset[str]] = field(default_factory=dict)
    # load-generator targets: name -> (path, key of the documents list in the body)
    bench: dict[str, tuple[str, str]] = field(default_factory=dict)
    # paths that take images when a Qwen3-VL reranker is served: their documented errors then
    # include the image refusals (server/openapi.py IMAGES)
    images: frozenset[str] = frozenset()

    @property
    def responses(self) -> dict[str, Any]:
        """path -> the model of the route's 200 body: its response model (the route's return
        type), or for a route that may pass vLLM's answer on as it came, the model its
        `responses={200: ...}` declares."""
        models = {}
        for route in self.router.routes:
            if isinstance(route, APIRoute):
                model = route.response_model or route.responses.get(200, {}).get("model")
                if model is not None:
                    models[route.path] = model
        return models

    @property
    def paths(self) -> list[str]:
        return sorted({route.path for route in self.router.routes if isinstance(route, APIRoute)})


def errors_as(dialect: Dialect, speaks: Callable[[Any], bool]):
    """A route dependency for a route that takes another dialect's bodies too (`shared_with`):
    a body for which `speaks(body)` is true gets `dialect`'s error shape. It runs before FastAPI
    reports a schema error, on the body FastAPI already parsed (Starlette caches it); a body
    that is not JSON keeps the route's own shape."""
    async def dependency(request: Request) -> None:
        try:
            body = await request.json()
        except ValueError:
            return
        if speaks(body):
            request.scope["dialect"] = dialect
    return dependency


# Below this many documents a request is over in milliseconds: watching for a disconnect would
# cost more than the work it could save.
_WATCH_FROM_DOCS = 32


PRIORITIES = ("interactive", "bulk")


def priority_header(request: Request) -> str | None:
    """X-Priority: interactive | bulk, a caller's mark on its work; any other value is refused
    (also where the body names a priority of its own, which then wins)."""
    value = request.headers.get("x-priority")
    if value is not None and value not in PRIORITIES:
        raise InvalidInput(f"priority (the X-Priority header) must be 'interactive' or 'bulk', not {value!r}")
    return value


async def score(request: Request, req: ScoreRequest) -> ScoreResult:
    """Run the core; a client that disconnects cancels its work (and vLLM's, via the socket)."""
    scorer = request_state(request).scorer
    header = priority_header(request)
    if req.priority is None:
        req.priority = header
    if len(req.documents) < _WATCH_FROM_DOCS:
        result = await scorer.score(req)
    else:
        result = await _cancel_on_disconnect(request, scorer.score(req))
    request_state(request).metrics.tokens.inc(result.prompt_tokens)
    return result


async def score_all(request: Request, reqs: list[ScoreRequest], concurrency: int = 16) -> list[ScoreResult]:
    """Several core calls for one HTTP request (vLLM's N:N /score pairs different queries: one
    call per distinct query), at most `concurrency` at a time, under one disconnect watch
    (one receiver of the request's messages, not one per call)."""
    if len(reqs) == 1:
        return [await score(request, reqs[0])]
    header = priority_header(request)
    for req in reqs:
        if req.priority is None:
            req.priority = header
    scorer = request_state(request).scorer
    gate = asyncio.Semaphore(concurrency)

    async def one(req: ScoreRequest) -> ScoreResult:
        async with gate:
            return await scorer.score(req)

    # One failed call fails the request: the others are cancelled, not left to run for nothing.
    calls = [asyncio.ensure_future(one(r)) for r in reqs]
    work = asyncio.gather(*calls)
    try:
        if sum(len(r.documents) for r in reqs) < _WATCH_FROM_DOCS:
            results = await work
        else:
            results = await _cancel_on_disconnect(request, work)
    except BaseException:
        for call in calls:
            call.cancel()
        raise
    request_state(request).metrics.tokens.inc(sum(r.prompt_tokens for r in results))
    return results


async def _cancel_on_disconnect(request: Request, coro):
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        raise Cancelled("client closed the request")
    return work.result()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _is_none(value: Any) -> bool:
    return value is None


def omitted_when_none(description: str) -> Any:
    """A response field that is left out of the answer, never null, when it has no value (a
    document echoed only on request: some clients refuse a null)."""
    return Field(None, description=description, exclude_if=_is_none)


def too_long(exc: DocumentTooLong, documents: str, because: str) -> DocumentTooLong:
    """The core's refusal of a document that would be cut (`ScoreRequest.refuse_truncation`),
    worded with the dialect's own names: `documents` is its documents field, `because` the
    field value that asked for the refusal and how to get a cut instead."""
    return DocumentTooLong(exc.index, exc.tokens, exc.limit, exc.tokens_exact, detail=(
        f"{documents}[{exc.index}] has {exc.size}, more than the {exc.limit} the model accepts "
        f"with this query, and {because}"))


def ranking(result: ScoreResult, top_n: int | None) -> list[int]:
    """Input indices by descending score (stable for ties), cut to top_n (None/0 = all)."""
    order = sorted(range(len(result.scores)), key=lambda i: -result.scores[i])
    return order[:top_n] if top_n else order


def document_texts(documents: list[Document], rank_fields: list[str] | None = None) -> list[str]:
    """What each document is ranked on: a string itself; an object without `rank_fields` (absent,
    null or []) its `text`, which it must have (the request schemas say so); with `rank_fields`,
    `object_text`."""
    return [_text_of(i, d, rank_fields) for i, d in enumerate(documents)]


def image_documents(documents: list[Document], dialect: str | None) -> list[list[str]] | None:
    """Jina's image documents ({"image": data URL or base64, or a list of them}, with or without
    `text`): each document's images, or None when none has any. `dialect`: the name of a dialect
    whose documents are text only (Cohere v2, the legacy API); it refuses them with a pointer to
    the forms that take images."""
    images = [_images_of(i, d, dialect) for i, d in enumerate(documents)]
    return images if any(images) else None


def _images_of(i: int, doc: Document, dialect: str | None) -> list[str]:
    if isinstance(doc, str) or "image" not in doc:
        return []
    if dialect is not None:
        raise InvalidInput(f"documents[{i}] has an image: {dialect} documents are text; send images "
                           "to /v1/rerank as Jina's {\"image\": ...} documents, or as vLLM's "
                           "{\"content\": [...]} on /rerank (a Qwen3-VL reranker serves them)")
    value = doc["image"]
    refs = value if isinstance(value, list) else [value]
    if not refs or not all(isinstance(r, str) for r in refs):
        raise InvalidInput(f"documents[{i}].image must be a data: URL or base64 string, or a list of them")
    return refs


def _text_of(i: int, doc: Document, rank_fields: list[str] | None) -> str:
    if isinstance(doc, str):
        return doc
    if "image" in doc:
        # Jina's image document: its image is ranked, beside its `text` (or the fields named in
        # rank_fields that it has), never beside the image's own string
        named = [f for f in rank_fields or [] if f != "image" and f in doc]
        return object_text(doc, named) if named else _field_text(doc["text"]) if "text" in doc else ""
    if rank_fields:
        return object_text(doc, rank_fields)
    if "text" not in doc:
        raise InvalidInput(f"documents[{i}] has no field 'text' to rank on")
    return _field_text(doc["text"])


def object_text(doc: dict[str, Any], rank_fields: list[str]) -> str:
    """An object ranked on the fields named in `rank_fields` that it has, as "field: value" lines
    in the order given (Cohere's format; `text` alone is its plain value). A named field it
    lacks is left out, as the rows of a sparse collection lack some fields (a missing title
    must not fail the whole request); an object with none of them is ranked on its `text` when
    that is a string, else on its JSON text. Never an error: which keys an object must have,
    when a value names them, is a rule no request schema can state."""
    fields = [f for f in rank_fields if f in doc]
    if fields == ["text"]:
        return _field_text(doc["text"])
    if fields:
        return "\n".join(f"{f}: {_field_text(doc[f])}" for f in fields)
    if isinstance(doc.get("text"), str):
        return doc["text"]
    # the standard encoder: orjson refuses integers beyond 64 bits, which JSON allows
    return json.dumps(doc, ensure_ascii=False)


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def echo(doc: Document) -> dict[str, Any]:
    """The document as Cohere/Jina clients expect it back: always an object with `text`."""
    return {"text": doc} if isinstance(doc, str) else dict(doc)


def search_units(documents: int) -> int:
    """Cohere bills one search unit per query with up to 100 documents."""
    return max(1, math.ceil(documents / 100))


# --- an error shape several clients parse: the common body plus `error` as a plain string -------
# (Elasticsearch's hugging_face service and Weaviate's reranker-transformers module read `error`;
# a body whose `error` is an object, like vLLM's, fails their JSON decoding)
def error_with_string(status: int, detail: str, type_: str, request_id: str) -> tuple[int, dict]:
    status, body = default_error_body(status, detail, type_, request_id)
    return status, {**body, "error": detail}


class StringErrorBody(ErrorBody):
    """The common error body plus `error`, the same sentence as a plain string."""

    error: str = Field(description="= detail (clients that read `error` as a string)")
