"""POST /invocations (SageMaker's route), dispatched on the body as vLLM dispatches it: the first
of vLLM's request types the body fits answers (classify, then rerank, then score)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from server.dialects.common import priority_header
from server.dialects.vllm.mapping import rerank_answer, score_answer
from server.dialects.vllm.passthrough import is_token_id, pass_through, prompt_count
from server.dialects.vllm.protocol import (
    SCORE_PAIRS,
    EngineAnswer,
    InvocationsClassifyChatRequest,
    InvocationsClassifyRequest,
    ScoreResponse,
    VllmRerankRequest,
    VllmRerankResponse,
    VllmScoreRequest,
    relayed_body,
    validated,
)
from server.openapi import documented_body
from server.responses import model_response

router = APIRouter(tags=["vllm"])

# What _is_classify_body reads as a classification body (the types only; vLLM then validates
# it): rerank and score bodies on /invocations are those that are not.
_CLASSIFY_SHAPE = {"anyOf": [
    {"required": ["input"], "properties": {"input": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]}


def _is_classify_body(body: dict) -> bool:
    """vLLM tries its classification request first: a body with a valid `input` or `messages`."""
    data = body.get("input")
    if isinstance(data, str):
        return True
    if isinstance(data, list):
        return (all(isinstance(x, str) for x in data) or all(is_token_id(x) for x in data)
                or all(isinstance(x, list) and all(is_token_id(t) for t in x) for x in data))
    return isinstance(body.get("messages"), list)


def _try(model: type[BaseModel], body: dict) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError:
        return None


def _shaped_as(body: dict) -> type[BaseModel] | None:
    """The request type whose fields a body carries (vLLM's rerank: query and documents; score:
    one of its pairs), valid or not."""
    if "query" in body and "documents" in body:
        return VllmRerankRequest
    if any(body.get(a) is not None and body.get(b) is not None for a, b in SCORE_PAIRS):
        return VllmScoreRequest
    return None


@router.post("/invocations", summary="SageMaker /invocations: dispatched on the body as vLLM does",
             description="The first of vLLM's request types the body fits answers: classify "
             "(`input`/`messages`: passed to vLLM), rerank (`query`+`documents`), score "
             "(`queries`+`documents`, ...). A rerank- or score-shaped body that fits neither is "
             "refused as that type (400); anything else goes to vLLM, which answers it or says "
             "which shapes it expects.",
             responses={200: {"model": VllmRerankResponse | ScoreResponse | EngineAnswer}},
             openapi_extra=documented_body(
                 InvocationsClassifyRequest, InvocationsClassifyChatRequest,
                 (VllmRerankRequest, {"not": _CLASSIFY_SHAPE}),
                 (VllmScoreRequest, {"not": _CLASSIFY_SHAPE})))
async def invocations(request: Request, body: Any = Body(None)) -> Response:
    if isinstance(body, dict) and not _is_classify_body(body):
        rerank = _try(VllmRerankRequest, body)
        if rerank is not None:
            return model_response(await rerank_answer(request, rerank))
        scoring = _try(VllmScoreRequest, body)
        if scoring is not None:
            return model_response(await score_answer(request, scoring))
        shape = _shaped_as(body)
        if shape is not None:  # the shim's own checks (an empty query, ...), not vLLM's
            validated(shape, body)
    if isinstance(body, dict) and ("input" in body or "messages" in body):
        # a classification body, or one with its fields that fits nothing: checked as one (vLLM
        # would read `[true]` as token ids, for instance)
        relayed_body(body, InvocationsClassifyRequest, InvocationsClassifyChatRequest)
    priority_header(request)  # refused on every body, as where the core scores it
    return await pass_through(request, "/invocations", *prompt_count(body))

