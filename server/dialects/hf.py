"""POST /hf/rerank: what Elasticsearch's `hugging_face` rerank inference service sends to its `url`.

Elasticsearch (x-pack/plugin/inference, services/huggingface/request/rerank/
HuggingFaceRerankRequestEntity.java) sends `{"documents", "query", "return_documents"?, "top_n"?,
"max_chunks_per_doc"?}` with `Authorization: Bearer <api_key>`, and parses
(HuggingFaceRerankResponseEntity.java) a top-level JSON array of `{index, score | relevance_score,
text | document}`, failing on any other key; errors are read from a string `error`
(HuggingFaceErrorResponseEntity.java). `/rerank` cannot answer this body: it is the seed/vLLM
shape there, which answers an object. So this path answers it: TEI's bare array, sorted by score,
`text` only when return_documents is true, cut to top_n.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from server.dialects.common import (
    Dialect,
    Query,
    StringErrorBody,
    documents_field,
    error_with_string,
    json_integer,
    omitted_when_none,
    ranking,
    score,
)
from server.scoring.core import ScoreRequest

router = APIRouter(tags=["elasticsearch hugging_face"])


class HfRerankRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{
        "documents": ["Carson City is the capital city of the American state of Nevada.",
                      "Washington, D.C. is the capital of the United States."],
        "query": "What is the capital of the United States?", "return_documents": True, "top_n": 2}]})

    query: Query
    documents: list[str] = documents_field("the documents to rank")
    return_documents: bool | None = Field(None, description="add each document's `text` (default false)")
    top_n: json_integer(0) | None = Field(None, description="keep the N best; null/0 = all")
    max_chunks_per_doc: json_integer(1) | None = Field(
        None, description="split long documents into up to N chunks; score = max over chunks")
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")


class HfRank(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    score: float = Field(description="P(yes) in [0, 1]")
    text: str | None = omitted_when_none("only when return_documents is true")


@router.post("/hf/rerank", summary="Elasticsearch `hugging_face` rerank service: a bare array sorted by score")
async def rerank(body: HfRerankRequest, request: Request) -> list[HfRank]:
    req = ScoreRequest(body.query, body.documents, body.instruction,
                       max_chunks_per_doc=body.max_chunks_per_doc)
    result = await score(request, req)
    return [HfRank(index=i, score=result.scores[i],
                   text=body.documents[i] if body.return_documents else None)
            for i in ranking(result, body.top_n)]


DIALECT = Dialect("hf", router, error=error_with_string, error_model=StringErrorBody)
