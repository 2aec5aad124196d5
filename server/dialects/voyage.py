"""Voyage's rerank body on POST /v1/rerank (the `voyageai` SDK, the `rerankers` Voyage provider,
LangChain's and LlamaIndex's Voyage rerankers given a base URL).

Voyage posts to the same path as Cohere and Jina, so the route is cohere.py's: a body carrying a
field only Voyage has (`top_k`, `truncation`: VOYAGE_ONLY_FIELDS) is Voyage's and gets Voyage's
answer `{"object": "list", "data": [{"index", "relevance_score", "document"?}], "model",
"usage": {"total_tokens"}}`, data sorted by score. Fields and defaults are Voyage's: `top_k` keeps
the K best (null = all), `return_documents` (false) adds `document` (the string), `truncation`
(true) cuts a document that does not fit the model, false refuses it (422). Errors are the common
body, whose `detail` is what Voyage clients read.
"""

from __future__ import annotations

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from server.dialects.common import (
    Query,
    documents_field,
    json_integer,
    omitted_when_none,
    ranking,
    score,
    too_long,
)
from server.scoring.core import ScoreRequest
from server.scoring.errors import DocumentTooLong
from server.state import request_state

VOYAGE_ONLY_FIELDS = frozenset({"top_k", "truncation"})


class VoyageRerankRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{
        "query": "What is the capital of the United States?",
        "documents": ["Carson City is the capital city of the American state of Nevada.",
                      "Washington, D.C. is the capital of the United States."],
        "model": "rerank-2", "top_k": 2, "return_documents": True, "truncation": True}]})

    query: Query
    documents: list[str] = documents_field("the documents to rank")
    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    top_k: json_integer(1) | None = Field(None, description="keep the K best; null = all")
    return_documents: bool = Field(False, description="add each document as `document`")
    truncation: bool = Field(True, description="true: cut a document that does not fit the model; "
                                               "false: refuse it (422)")
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")


class VoyageResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    relevance_score: float = Field(description="P(yes) in [0, 1]")
    document: str | None = omitted_when_none("only when return_documents is true")


class VoyageUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    total_tokens: int


class VoyageRerankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: str = "list"
    data: list[VoyageResult] = Field(description="sorted by relevance_score, highest first")
    model: str
    usage: VoyageUsage


def speaks_voyage(body: object) -> bool:
    return isinstance(body, dict) and not VOYAGE_ONLY_FIELDS.isdisjoint(body)


async def answer(request: Request, body: VoyageRerankRequest) -> VoyageRerankResponse:
    req = ScoreRequest(body.query, body.documents, body.instruction,
                       refuse_truncation=not body.truncation)
    try:
        result = await score(request, req)
    except DocumentTooLong as exc:
        raise too_long(exc, "documents", 'truncation is false; send "truncation": true to cut it') from None
    data = [VoyageResult(index=i, relevance_score=result.scores[i],
                         document=body.documents[i] if body.return_documents else None)
            for i in ranking(result, body.top_k)]
    return VoyageRerankResponse(data=data, model=request_state(request).settings.model_name,
                                usage=VoyageUsage(total_tokens=result.prompt_tokens))
