"""POST /pinecone/rerank: Pinecone's inference rerank API (the `pinecone` SDK with
`host=http://<host>:8000/pinecone`, the `rerankers` Pinecone provider, any client of
api.pinecone.io/rerank given a base URL).

Body `{"model", "query", "documents", "rank_fields"? (["text"]), "top_n"? (all),
"return_documents"? (true), "parameters"? ({"truncate": "END" | "NONE"})}`; answer
`{"model", "data": [{"index", "score", "document"?}], "usage": {"rerank_units"}}`, data sorted by
score. Documents are strings (echoed as `{"text": ...}`) or objects ranked on the `rank_fields`
they have ("field: value" lines when there are several; a field an object lacks is left out, as
Cohere's are). `parameters.truncate` NONE refuses a document
longer than the model takes (422); END (Pinecone's default) cuts it. The SDK calls `{host}/rerank`,
which is the TEI/seed route here, hence the own base path. Pinecone clients send `Api-Key`, not
`Authorization`: with auth on, a proxy must map one onto the other (docs/integrations.md).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from server.dialects.common import (
    Dialect,
    Query,
    document_texts,
    documents_field,
    echo,
    json_integer,
    omitted_when_none,
    ranking,
    score,
    search_units,
    too_long,
)
from server.scoring.core import ScoreRequest
from server.scoring.errors import DocumentTooLong
from server.state import request_state

router = APIRouter(tags=["pinecone"])


class PineconeParameters(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    truncate: Literal["END", "NONE"] = Field(
        "END", description="END (default): cut long documents; NONE: a long document is an error (422)")


# Without rank_fields an object document is ranked on `text`, so it must have one. With
# rank_fields it is ranked on the named fields it has (common.object_text): nothing to require.
_TEXT_UNLESS_RANK_FIELDS = {
    "if": {"required": ["rank_fields"],
           "properties": {"rank_fields": {"type": "array", "minItems": 1}}},
    "else": {"properties": {"documents": {"items": {"anyOf": [
        {"type": "string"}, {"type": "object", "required": ["text"]}]}}}},
}


class PineconeRerankRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={
        **_TEXT_UNLESS_RANK_FIELDS, "examples": [{
            "model": "bge-reranker-v2-m3", "query": "What is the capital of the United States?",
            "documents": [{"id": "a", "text": "Carson City is the capital city of the American state of Nevada."},
                          {"id": "b", "text": "Washington, D.C. is the capital of the United States."}],
            "top_n": 2, "return_documents": True, "parameters": {"truncate": "END"}}]})

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    query: Query
    documents: list[str | dict[str, Any]] = documents_field(
        "strings, or objects ranked on the fields named in rank_fields (default [\"text\"]) that "
        "each has (a field an object lacks is left out; one with none of them is ranked on its "
        "`text`, else on its JSON text)")
    rank_fields: list[str] | None = Field(None, description="object fields to rank on (default [\"text\"])")
    top_n: json_integer(0) | None = Field(None, description="keep the N best; null/0 = all")
    return_documents: bool = Field(True, description="echo each document (strings as {\"text\": ...})")
    parameters: PineconeParameters | None = None
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")


class RankedDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    score: float = Field(description="P(yes) in [0, 1]")
    document: dict[str, Any] | None = omitted_when_none("only when return_documents is true")


class PineconeUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rerank_units: int = Field(description="one per 100 documents, as Pinecone bills")


class PineconeRerankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    data: list[RankedDocument] = Field(description="sorted by score, highest first")
    usage: PineconeUsage


@router.post("/pinecone/rerank", summary="Pinecone inference rerank: data sorted by score")
async def rerank(body: PineconeRerankRequest, request: Request) -> PineconeRerankResponse:
    texts = document_texts(body.documents, body.rank_fields)
    truncate = body.parameters.truncate if body.parameters else "END"
    req = ScoreRequest(body.query, texts, body.instruction, refuse_truncation=truncate == "NONE")
    try:
        result = await score(request, req)
    except DocumentTooLong as exc:
        raise too_long(exc, "documents", "parameters.truncate is NONE; send END to cut it") from None
    data = [RankedDocument(index=i, score=result.scores[i],
                           document=echo(body.documents[i]) if body.return_documents else None)
            for i in ranking(result, body.top_n)]
    return PineconeRerankResponse(model=request_state(request).settings.model_name, data=data,
                                  usage=PineconeUsage(rerank_units=search_units(len(texts))))


DIALECT = Dialect("pinecone", router)
