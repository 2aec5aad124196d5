"""POST /v1/rank: the legacy API our existing backend callers use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from server.dialects.common import Dialect, Query, documents_field, ranking, score
from server.scoring.core import ScoreRequest

router = APIRouter(tags=["legacy"])


def _text_only(value: Any) -> Any:
    if isinstance(value, dict):  # an image or object document: say where images go
        raise PydanticCustomError("string_type", "a document of /v1/rank is a string (text only); "
                                  "send images to /v1/rerank as Jina's {\"image\": ...} documents "
                                  "(a Qwen3-VL reranker serves them)")
    return value


TextDocument = Annotated[str, BeforeValidator(_text_only)]


class RankRequest(BaseModel):
    model_config = ConfigDict(strict=True, json_schema_extra={"examples": [{
        "query": "如何申请差旅报销", "docs": ["员工手册第3章", "财务系统操作指南", "OA审批流程说明"]}]})

    query: Query
    docs: list[TextDocument] = documents_field("the documents to rank (text only)")
    instruction: str | None = Field(None, description="task instruction; server default if absent")


class LegacyRankResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    doc: str
    score: float = Field(description="P(yes) in [0, 1]")
    rank: int = Field(description="1 = most relevant")


class RankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results: list[LegacyRankResult]


@router.post("/v1/rank", summary="Rank documents (legacy API): results sorted by score, rank from 1")
async def rank(body: RankRequest, request: Request) -> RankResponse:
    result = await score(request, ScoreRequest(body.query, body.docs, body.instruction))
    return RankResponse(results=[LegacyRankResult(doc=body.docs[i], score=result.scores[i], rank=r)
                                 for r, i in enumerate(ranking(result, None), start=1)])


DIALECT = Dialect("legacy", router, bench={"shim-rank": ("/v1/rank", "docs")})
