"""Cohere v1/v2 and Jina on POST /v1/rerank and /v2/rerank.

One liberal request schema (Cohere v1 ⊇ Jina ⊇ Cohere v2, plus what gateways still send to v2)
and one union response envelope that every client family parses: Cohere SDKs read `results`
and `meta`, Jina clients (LangChain, LlamaIndex, Haystack) read `results`, `model`, `usage`.
`document` is left out, never null, when documents are not requested (LiteLLM rejects null).
A body carrying a field only vLLM's rerank has (`use_activation`, `truncate_prompt_tokens`,
`request_id`, ...: `VLLM_ONLY_FIELDS`), or a query or document in vLLM's multimodal form
(`{"content": [{"type": "image_url", ...}]}`), is a vLLM client's (`vllm.protocol.speaks_vllm`):
it gets vLLM's answer (documents echoed unless return_documents is false) with Cohere's `meta`,
and vLLM's errors. A body carrying a
field only Voyage has (`top_k`, `truncation`: voyage.VOYAGE_ONLY_FIELDS) gets Voyage's answer.
Lenient where real clients are loose: `return_documents` may be the string "true"/"false"
(RAGFlow's Xinference provider), and `instruct` (SGLang's, DashScope's spelling) is taken for
`instruction`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from server.dialects import vllm, voyage
from server.dialects.common import (
    Dialect,
    Document,
    LooseBool,
    Query,
    document_texts,
    documents_field,
    echo,
    errors_as,
    image_documents,
    json_integer,
    omitted_when_none,
    ranking,
    score,
    search_units,
)
from server.dialects.vllm.mapping import as_list, rerank_answer
from server.dialects.vllm.protocol import VLLM_BODY_SCHEMA, VllmRerankRequest, VllmRerankResponse, speaks_vllm
from server.openapi import documented_body, family_schema
from server.scoring.core import ScoreRequest
from server.state import request_state

router = APIRouter(tags=["cohere / jina"])

_EXAMPLE = {
    "model": "qwen3-reranker", "query": "What is the capital of the United States?",
    "documents": ["Carson City is the capital city of the American state of Nevada.",
                  "Washington, D.C. is the capital of the United States."],
    "top_n": 2, "return_documents": True,
}


# Without rank_fields (absent, null or []) an object document is ranked on `text`, so it must have
# one. With rank_fields it is ranked on the named fields it has (common.object_text): nothing to
# require. Jina's image documents ({"image": ...}) are taken on /v1/rerank when a Qwen3-VL
# reranker is served; the document lists them only then.
_JINA_IMAGE = {"type": "object", "required": ["image"], "description": (
    "Jina's image document: `image` is a data: URL (data:image/png;base64,...) or base64 of a PNG, "
    "JPEG, WebP, GIF, BMP or TIFF image (or a list of them), `text` optional; /v1/rerank only "
    "(Cohere v2 documents are text)"),
    "properties": {"image": {"anyOf": [{"type": "string"},
                                       {"type": "array", "items": {"type": "string"}, "minItems": 1}]}}}
_TEXT_UNLESS_RANK_FIELDS = {
    "if": {"required": ["rank_fields"],
           "properties": {"rank_fields": {"type": "array", "minItems": 1}}},
    "else": {"properties": {"documents": {"items": family_schema(
        text={"anyOf": [{"type": "string"},
                        {"type": "object", "required": ["text"], "not": {"required": ["image"]}}]},
        vl={"anyOf": [{"type": "string"}, {"type": "object", "required": ["text"]}, _JINA_IMAGE]})}}},
}


class RerankRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow",
                              json_schema_extra={**_TEXT_UNLESS_RANK_FIELDS, "examples": [_EXAMPLE]})

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    query: Query
    documents: list[Document] = documents_field(
        "strings, or objects ranked on `text`, or on the fields named in rank_fields that each "
        "has (a field an object lacks is left out; one with none of them is ranked on its `text`, "
        "else on its JSON text); with a Qwen3-VL reranker served, Jina's image documents "
        "{\"image\": ...} on /v1/rerank (422 otherwise)")
    top_n: json_integer(0) | None = Field(None, description="null/0 = all")
    return_documents: LooseBool | None = Field(None, description="echo documents (default false)")
    rank_fields: list[str] | None = Field(None, description="Cohere v1: object fields to rank on")
    max_chunks_per_doc: json_integer(1) | None = Field(
        None, description="split long documents into up to N chunks; score = max over chunks")
    max_tokens_per_doc: json_integer(1) | None = Field(None, description="cut each document to N tokens")
    instruction: str | None = Field(None, description="extension: Qwen3 task instruction")
    instruct: str | None = Field(None, description="the same as instruction (SGLang's and DashScope's "
                                                   "name); instruction wins when both are given")
    raw_scores: bool | None = Field(None, description="extension: logit(yes)-logit(no) not P(yes)")


class RerankResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    relevance_score: float
    document: dict[str, Any] | None = omitted_when_none("only when return_documents")


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int
    total_tokens: int


class ApiVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="1 on /v1/rerank, 2 on /v2/rerank")


class BilledUnits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    search_units: int = Field(description="one per 100 documents, as Cohere bills")


class MetaTokens(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int
    output_tokens: int


class CohereMeta(BaseModel):
    """Cohere's `meta`: what its SDKs read for the API version and billing."""

    model_config = ConfigDict(extra="forbid")

    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: MetaTokens


class RerankResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    results: list[RerankResult]
    usage: Usage
    meta: CohereMeta


class VllmRerankWithMeta(VllmRerankResponse):
    """vLLM's answer to a vLLM body on these routes, with Cohere's `meta` added."""

    meta: CohereMeta


def _meta(version: str, documents: int, tokens: int) -> CohereMeta:
    return CohereMeta(api_version=ApiVersion(version=version),
                billed_units=BilledUnits(search_units=search_units(documents)),
                tokens=MetaTokens(input_tokens=tokens, output_tokens=0))


async def _rerank(body: RerankRequest, request: Request, version: str) -> RerankResponse:
    texts = document_texts(body.documents, body.rank_fields)
    images = image_documents(body.documents, "Cohere v2" if version == "2" else None)
    req = ScoreRequest(body.query, texts, body.instruction or body.instruct, bool(body.raw_scores),
                       body.max_tokens_per_doc, body.max_chunks_per_doc, document_images=images)
    result = await score(request, req)
    results = [RerankResult(index=i, relevance_score=result.scores[i],
                            document=echo(body.documents[i]) if body.return_documents else None)
               for i in ranking(result, body.top_n)]
    tokens = result.prompt_tokens
    return RerankResponse(
        id=request.scope.get("request_id", ""),
        model=request_state(request).settings.model_name,
        results=results,
        usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        meta=_meta(version, len(texts), tokens),
    )


def _speaks(body: Any) -> str:
    if speaks_vllm(body):
        return "vllm"
    return "voyage" if voyage.speaks_voyage(body) else "cohere"


RerankBody = Annotated[
    Annotated[RerankRequest, Tag("cohere")] | Annotated[VllmRerankRequest, Tag("vllm")]
    | Annotated[voyage.VoyageRerankRequest, Tag("voyage")],
    Discriminator(_speaks),
]


# errors answer in the dialect the body speaks
_errors_as_spoken = errors_as(vllm.DIALECT, lambda body: _speaks(body) == "vllm")
# the body as documented: a vLLM body is one with a vLLM-only field or vLLM's multimodal form
# (see _speaks)
_VLLM_FIELD = VLLM_BODY_SCHEMA
# a Voyage body: one with a Voyage-only field and not a vLLM one
_VOYAGE_FIELD = {"anyOf": [{"required": [name]} for name in sorted(voyage.VOYAGE_ONLY_FIELDS)]}
_BODY = documented_body((RerankRequest, {"not": {"anyOf": [_VLLM_FIELD, _VOYAGE_FIELD]}}),
                        (VllmRerankRequest, _VLLM_FIELD),
                        (voyage.VoyageRerankRequest, {**_VOYAGE_FIELD, "not": _VLLM_FIELD}))
RerankAnswer = RerankResponse | VllmRerankWithMeta | voyage.VoyageRerankResponse


async def _answer(body: RerankRequest | VllmRerankRequest | voyage.VoyageRerankRequest,
                  request: Request, version: str) -> RerankAnswer:
    if isinstance(body, RerankRequest):
        return await _rerank(body, request, version)
    if isinstance(body, voyage.VoyageRerankRequest):
        return await voyage.answer(request, body)
    answer = await rerank_answer(request, body)
    meta = _meta(version, len(as_list(body.documents)), answer.usage.prompt_tokens)
    return VllmRerankWithMeta(**dict(answer), meta=meta)


@router.post("/v1/rerank", openapi_extra=_BODY,
             summary="Cohere v1 / Jina rerank (and vLLM's or Voyage's, for bodies with their own fields)")
async def rerank_v1(request: Request, body: Annotated[RerankBody, Body()],
                    _=Depends(_errors_as_spoken)) -> RerankAnswer:
    return await _answer(body, request, "1")


@router.post("/v2/rerank", openapi_extra=_BODY,
             summary="Cohere v2 rerank (and vLLM's or Voyage's, for bodies with their own fields)")
async def rerank_v2(request: Request, body: Annotated[RerankBody, Body()],
                    _=Depends(_errors_as_spoken)) -> RerankAnswer:
    return await _answer(body, request, "2")


DIALECT = Dialect("cohere", router, shared_with=(vllm.DIALECT,),
                  images=frozenset({"/v1/rerank", "/v2/rerank"}),
                  bench={"shim": ("/v1/rerank", "documents")})
