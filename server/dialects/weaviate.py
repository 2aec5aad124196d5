"""Weaviate's `reranker-transformers` module, under /weaviate: set the module's inference URL
(`RERANKER_INFERENCE_API`) to `http://<host>:8000/weaviate`.

What the module does (weaviate modules/reranker-transformers/clients/): at start-up it polls
`GET {url}/.well-known/ready` until a 2xx (startup.go) and reads `GET {url}/meta` (ranker_meta.go);
then `POST {url}/rerank` with `{"query", "documents", "property": ""}` in slices of 32 documents,
with no Content-Type header and no Authorization header (ranker.go), and reads
`{"scores": [{"document", "score"}]}`, or on an error status a string `error`. Its body would be
the seed shape on `/rerank` (same keys), which answers something else, hence the own base path.
The body is read as JSON whatever the Content-Type (FastAPI would take a body without one as
bytes and refuse it).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.dialects.common import (
    Dialect,
    Query,
    StringErrorBody,
    documents_field,
    error_with_string,
    score,
)
from server.openapi import ENGINE, documented_body
from server.scoring.core import ScoreRequest
from server.scoring.errors import EngineTimeout, EngineUnavailable, NoRoom, ScoringError
from server.state import request_state

router = APIRouter(tags=["weaviate reranker-transformers"])

READY, META, RERANK = "/weaviate/.well-known/ready", "/weaviate/meta", "/weaviate/rerank"


class WeaviateRerankRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{
        "query": "What is the capital of the United States?",
        "documents": ["Carson City is the capital city of the American state of Nevada.",
                      "Washington, D.C. is the capital of the United States."],
        "property": ""}]})

    query: Query
    documents: list[str] = documents_field("the documents to rank (Weaviate sends up to 32)")
    property: str | None = Field(None, description="sent by Weaviate (empty); ignored")
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")


class DocumentScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    document: str
    score: float = Field(description="P(yes) in [0, 1]")


class WeaviateRerankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    scores: list[DocumentScore] = Field(description="one per document, in the request's order")


class WeaviateReady(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool


class WeaviateMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: dict[str, str | int] = Field(description="the served model's name and max_model_len")


async def _body(request: Request) -> WeaviateRerankRequest:
    """The body as JSON with or without a Content-Type, failing as FastAPI's own parsing does
    (400 for JSON that does not parse, 422 for a schema violation)."""
    try:
        data: Any = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body",),
                                       "msg": "JSON decode error", "input": {}}]) from None
    try:
        return WeaviateRerankRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@router.post(RERANK, openapi_extra=documented_body(WeaviateRerankRequest),
             summary="Weaviate reranker-transformers: one score per document, in order (the body "
                     "is JSON with or without a Content-Type header)")
async def rerank(request: Request) -> WeaviateRerankResponse:
    body = await _body(request)
    result = await score(request, ScoreRequest(body.query, body.documents, body.instruction))
    return WeaviateRerankResponse(query=body.query, scores=[
        DocumentScore(document=d, score=s) for d, s in zip(body.documents, result.scores)])


@router.get(READY, summary="Weaviate's start-up probe: 200 once a document can be scored now")
async def ready(request: Request) -> WeaviateReady:
    """A real round trip through the core (any engine), so the module's start-up waits for a
    service that scores, not only one that listens; 503 while draining or when it cannot."""
    state = request_state(request)
    if state.draining or not state.engine_verified:
        raise EngineUnavailable("not ready: the engine is starting, restarting or draining")
    try:
        await state.scorer.score(ScoreRequest("ready", ["ready"]))
    except (EngineUnavailable, EngineTimeout, NoRoom):
        raise
    except ScoringError as exc:  # an engine that answers but does not score is not ready either
        raise EngineUnavailable(f"not ready: {exc.detail}") from None
    return WeaviateReady(ready=True)


@router.get(META, summary="The served model (Weaviate shows it in /v1/meta)")
async def meta(request: Request) -> WeaviateMeta:
    settings = request_state(request).settings
    return WeaviateMeta(model={"name": settings.model_name, "max_model_len": settings.max_model_len})


DIALECT = Dialect("weaviate", router, error=error_with_string, error_model=StringErrorBody,
                  answers={READY: frozenset({ENGINE}), META: frozenset()})
