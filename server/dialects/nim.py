"""POST /v1/ranking: NVIDIA NIM's ranking API (Haystack `NvidiaRanker`, RAGFlow's NVIDIA provider,
LangChain's `NVIDIARerank`, any client of a NeMo Retriever reranking NIM).

Body `{"model", "query": {"text"}, "passages": [{"text"}], "truncate": "NONE" | "END"}`, answer
`{"rankings": [{"index", "logit"}]}` sorted by logit, highest first. `logit` is what a NIM returns,
a raw relevance logit: here logit(yes) - logit(no) of the official prompt (P(yes) is its sigmoid).
`truncate` is NIM's: NONE (its default) refuses a passage that does not fit the model (422),
END cuts it. Lenient beyond NIM: `query` and each passage may also be a bare string; `top_n`
(RAGFlow sends it) keeps the first N rankings; `instruction` is the Qwen3 task instruction.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from server.dialects.common import (
    Dialect,
    Query,
    documents_field,
    json_integer,
    ranking,
    score,
    too_long,
)
from server.scoring.core import ScoreRequest
from server.scoring.errors import DocumentTooLong

router = APIRouter(tags=["nvidia nim"])


class NimText(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    text: str


class NimQuery(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    text: Query


def _or_string(model: type[BaseModel], text: Any) -> Any:
    """`{"text": ...}` or a bare string. The tags are named after the JSON types so that a schema
    error names the field (`query.text`), not the union member (server/errors.py drops them)."""
    return Annotated[Annotated[model, Tag("dict")] | Annotated[text, Tag("str")],
                     Discriminator(lambda v: "str" if isinstance(v, str) else "dict")]


class RankingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{
        "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2",
        "query": {"text": "What is the capital of the United States?"},
        "passages": [{"text": "Carson City is the capital city of the American state of Nevada."},
                     {"text": "Washington, D.C. is the capital of the United States."}],
        "truncate": "END"}]})

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    query: _or_string(NimQuery, Query) = Field(description="`{\"text\": ...}` (a bare string is taken too)")
    passages: list[_or_string(NimText, str)] = documents_field(
        "the passages to rank, each `{\"text\": ...}` (a bare string is taken too)")
    truncate: Literal["NONE", "END"] = Field(
        "NONE", description="NONE (NIM's default): a passage longer than the model takes is an "
                            "error (422); END: it is cut at its end")
    top_n: Annotated[json_integer(0) | None, Field(
        description="extension (RAGFlow sends it): keep the first N rankings; null/0 = all")] = None
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")


class Ranking(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="the passage's position in the request")
    logit: float = Field(description="logit(yes) - logit(no); higher is more relevant")


class RankingResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rankings: list[Ranking] = Field(description="sorted by logit, highest first")


def _text(item: NimText | NimQuery | str) -> str:
    return item if isinstance(item, str) else item.text


@router.post("/v1/ranking", summary="NVIDIA NIM ranking: passages sorted by logit")
async def rank(body: RankingRequest, request: Request) -> RankingResponse:
    texts = [_text(p) for p in body.passages]
    req = ScoreRequest(_text(body.query), texts, body.instruction, raw=True,
                       refuse_truncation=body.truncate == "NONE")
    try:
        result = await score(request, req)
    except DocumentTooLong as exc:
        raise too_long(exc, "passages", 'truncate is NONE; send "truncate": "END" to cut it') from None
    return RankingResponse(rankings=[Ranking(index=i, logit=result.scores[i])
                                     for i in ranking(result, body.top_n)])


DIALECT = Dialect("nim", router)
