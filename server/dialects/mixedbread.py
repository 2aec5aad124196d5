"""POST /v1/reranking: Mixedbread's reranking API (the `mixedbread` SDK, LangChain's and
LlamaIndex's Mixedbread rerankers).

Body `{"model", "query", "input", "rank_fields"?, "top_k"?, "return_input"?, "rewrite_query"?}`;
answer `{"usage", "model", "data": [{"index", "score", "input"?, "object": "rank_result"}],
"object": "list", "top_k", "return_input"}` (the SDK's RerankResponse), data sorted by score.
`input` items are strings or objects: an object is ranked on those of the fields named in
`rank_fields` it has ("field: value" lines, as Cohere does; a field it lacks is left out, as a
JSON query that finds nothing), else on its `text`, else on its whole JSON text.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from server.dialects.common import (
    Dialect,
    Query,
    documents_field,
    json_integer,
    object_text,
    omitted_when_none,
    ranking,
    score,
)
from server.scoring.core import ScoreRequest
from server.state import request_state

router = APIRouter(tags=["mixedbread"])


class MixedbreadRerankRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{
        "model": "mixedbread-ai/mxbai-rerank-large-v2", "query": "What is the capital of the United States?",
        "input": ["Carson City is the capital city of the American state of Nevada.",
                  "Washington, D.C. is the capital of the United States."],
        "top_k": 2, "return_input": True}]})

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    query: Query
    input: list[str | dict[str, Any]] = documents_field(
        "strings, or objects (ranked on the rank_fields they have, else on `text`, else on their "
        "JSON text)")
    rank_fields: list[str] | None = Field(None, description="object fields to rank on")
    top_k: json_integer(-1) | None = Field(None, description="keep the K best; null, 0 or -1 = all")
    return_input: bool = Field(False, description="echo each document as `input`")
    rewrite_query: bool = Field(False, description="accepted; the query is never rewritten")
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")


class MixedbreadResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    score: float = Field(description="P(yes) in [0, 1]")
    object: str = "rank_result"
    input: str | dict[str, Any] | None = omitted_when_none("only when return_input is true")


class MixedbreadUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int


class MixedbreadRerankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usage: MixedbreadUsage
    model: str
    data: list[MixedbreadResult] = Field(description="sorted by score, highest first")
    object: str = "list"
    top_k: int
    return_input: bool


@router.post("/v1/reranking", summary="Mixedbread reranking: data sorted by score")
async def rerank(body: MixedbreadRerankRequest, request: Request) -> MixedbreadRerankResponse:
    texts = [d if isinstance(d, str) else object_text(d, body.rank_fields or []) for d in body.input]
    result = await score(request, ScoreRequest(body.query, texts, body.instruction))
    top_k = body.top_k if body.top_k and body.top_k > 0 else None
    data = [MixedbreadResult(index=i, score=result.scores[i],
                       input=body.input[i] if body.return_input else None)
            for i in ranking(result, top_k)]
    tokens = result.prompt_tokens
    return MixedbreadRerankResponse(
        usage=MixedbreadUsage(prompt_tokens=tokens, total_tokens=tokens, completion_tokens=0),
        model=request_state(request).settings.model_name, data=data,
        top_k=top_k or len(body.input), return_input=body.return_input)


DIALECT = Dialect("mixedbread", router)
