"""POST /rerank: TEI's shape or the seed shape, told apart by the body.

A body with `texts` is TEI (the rule llama.cpp uses): the answer is TEI's bare array
`[{index, score, text?}]`, errors TEI's. Any other body is the seed shape (`query`, `documents`,
`instruction`), which is also vLLM's rerank body (`/rerank` is vLLM's route): every vLLM field is
honoured, and the answer is the seed fields plus vLLM's whole answer (`id`, `model`, `usage`,
`results[{index, document, relevance_score}]`), errors vLLM's (server/dialects/vllm/).
A seed `results` item also carries `truncated: true` when its document was cut to fit the model
(the key is absent otherwise).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from server.dialects import vllm
from server.dialects.common import (
    Dialect,
    Query,
    documents_field,
    errors_as,
    json_integer,
    omitted_when_none,
    ranking,
    score,
    too_long,
)
from server.dialects.vllm.mapping import (
    as_list,
    parts_of,
    rerank_results,
    response_id,
    score_request,
    served_vl,
    usage,
)
from server.dialects.vllm.protocol import RerankUsage, VllmRerankRequest, VllmRerankResult
from server.errors import ErrorBody, default_error_body
from server.scoring.core import ScoreRequest
from server.scoring.errors import DocumentTooLong
from server.state import request_state

router = APIRouter(tags=["tei / seed"])


class TeiRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{
        "query": "What is Deep Learning?", "texts": ["Deep Learning is not...", "Deep learning is..."],
        "return_text": True}]})

    query: Query
    texts: list[str] = documents_field("the texts to rank")
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = Field(None, description="false: over-long texts are an error (422)")
    # TEI's values are Left/Right; lower case is taken too
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = Field(
        None, description="accepted; cuts are always right")
    instruction: str | None = None


class SeedRequest(VllmRerankRequest):
    """The seed body, a superset of vLLM's RerankRequest: vLLM's fields (use_activation,
    truncate_prompt_tokens, max_tokens_per_query, request_id, ...) mean what they mean on vLLM."""

    # `not required texts`: a body with `texts` is TEI's, whatever else it holds (see _dialect)
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={
        "not": {"required": ["texts"]},
        "examples": [{"query": "如何申请差旅报销", "documents": ["员工手册第3章", "财务系统操作指南", "OA审批流程说明"],
                      "instruction": "Given a question, retrieve documents that answer it"}]})

    top_n: json_integer(0) | None = Field(None, description="null/0 = all")
    return_documents: bool = True
    raw_scores: bool = False
    max_tokens_per_doc: json_integer(0) | None = Field(
        None, description="cut each document to N tokens (0/null: no cut)")
    max_chunks_per_doc: json_integer(1) | None = Field(
        None, description="split long documents into up to N chunks; score = max over chunks")


def _dialect(body: Any) -> str:
    return "tei" if isinstance(body, dict) and "texts" in body else "seed"


# The body parameter is `Annotated[RerankBody, Body()]`: as `body: RerankBody = Body()` FastAPI
# drops the discriminator and tries both models (errors then name fields of the other shape too).
RerankBody = Annotated[
    Annotated[TeiRequest, Tag("tei")] | Annotated[SeedRequest, Tag("seed")],
    Discriminator(_dialect),
]


class TeiRank(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    score: float
    text: str | None = omitted_when_none("only when return_text is true")


class SeedRanked(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int
    score: float
    document: str
    index: int


class SeedResult(VllmRerankResult):
    truncated: bool | None = omitted_when_none(
        "present (true) only when the document was cut to fit the model; absent otherwise (the "
        "playground marks such documents)")


class SeedResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    reranked_documents: list[SeedRanked]
    total_docs: int
    processed_in_ms: float
    results: list[SeedResult]
    usage: RerankUsage
    model: str
    id: str


RerankAnswer = list[TeiRank] | SeedResponse

# errors answer in the dialect the body speaks
_errors_as_spoken = errors_as(vllm.DIALECT, lambda body: _dialect(body) == "seed")


@router.post("/rerank", summary="TEI (body has `texts`), or seed-style / vLLM rerank",
             responses={200: {"description": "TEI's bare array for a TEI body, else the seed shape"}})
async def rerank(request: Request, body: Annotated[RerankBody, Body()],
                 _=Depends(_errors_as_spoken)) -> RerankAnswer:
    # Annotated[..., Body()], not "= Body()": only this form keeps the discriminator, so schema
    # errors name the fields of the body's own dialect.
    if isinstance(body, TeiRequest):
        return await _tei(body, request)
    return await _seed(body, request)


async def _tei(body: TeiRequest, request: Request) -> list[TeiRank]:
    req = ScoreRequest(body.query, body.texts, body.instruction, body.raw_scores,
                       refuse_truncation=body.truncate is False)
    try:
        result = await score(request, req)
    except DocumentTooLong as exc:
        raise too_long(exc, "texts", "truncate is false") from None
    return [TeiRank(index=i, score=result.scores[i], text=body.texts[i] if body.return_text else None)
            for i in ranking(result, None)]


async def _seed(body: SeedRequest, request: Request) -> SeedResponse:
    documents = as_list(body.documents)
    vl = served_vl(request)
    [(query, query_images)] = parts_of([body.query], "query", vl)
    docs = parts_of(documents, "documents", vl)
    texts = [text for text, _ in docs]
    req = score_request(body, query, texts, raw=body.raw_scores,
                        max_chunks_per_doc=body.max_chunks_per_doc, query_images=query_images,
                        document_images=[images for _, images in docs])
    result = await score(request, req)
    order = ranking(result, body.top_n)
    # vLLM's results, with the playground's truncation mark only on items whose document was
    # cut, so that other bodies stay exactly vLLM's
    results = [SeedResult(**dict(item), truncated=True if result.truncated[item.index] else None)
               for item in rerank_results(result, documents, body.top_n, body.return_documents)]
    return SeedResponse(
        query=query,
        reranked_documents=[SeedRanked(rank=r, score=result.scores[i], document=texts[i], index=i)
                            for r, i in enumerate(order, start=1)],
        total_docs=len(texts),
        processed_in_ms=round(result.elapsed_ms, 3),
        results=results,
        usage=usage(result.prompt_tokens),
        model=request_state(request).settings.model_name,
        id=response_id(request, body),
    )


def _error(status: int, detail: str, type_: str, request_id: str) -> tuple[int, dict]:
    """TEI clients read `error` and `error_type`; everyone else reads `detail`/`message`."""
    status, body = default_error_body(status, detail, type_, request_id)
    return status, {**body, "error": detail, "error_type": type_}


class TeiErrorBody(ErrorBody):
    """The common error body plus TEI's own two fields (same sentence and kind)."""

    error: str = Field(description="= detail (TEI clients read this)")
    error_type: str = Field(description="= type (TEI clients read this)")


DIALECT = Dialect("tei", router, error=_error, error_model=TeiErrorBody, shared_with=(vllm.DIALECT,),
                  images=frozenset({"/rerank"}))
