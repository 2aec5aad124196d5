"""POST /classify and /pooling: the client's own prompts (text or token ids, no template),
passed to vLLM as they came, behind the shim's auth, limits, admission and metrics
(server/scoring/relay.py); the answer is vLLM's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from server.dialects.vllm.errors import relayed_answer
from server.dialects.vllm.protocol import (
    ClassifyChatRequest,
    ClassifyRequest,
    EngineAnswer,
    PoolingChatRequest,
    PoolingRequest,
    relayed_body,
)
from server.openapi import documented_body

router = APIRouter(tags=["vllm"])


def is_token_id(value: Any) -> bool:
    """A JSON integer (3 or 3.0, as vLLM reads them), not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def prompt_count(body: Any) -> tuple[int, int]:
    """(prompts, known tokens) of a classify/pooling body, for the limits; vLLM validates it."""
    if not isinstance(body, dict):
        return 1, 0
    data = body.get("input")
    if isinstance(data, list) and data and all(is_token_id(x) for x in data):
        return 1, len(data)  # one tokenised prompt
    if isinstance(data, list):
        return max(1, len(data)), sum(len(x) for x in data if isinstance(x, list))
    return 1, 0


async def pass_through(request: Request, path: str, prompts: int = 1, tokens: int = 0) -> Response:
    """The body as it came, to the same route of vLLM; its answer as it is, with our `detail`
    added to its errors."""
    relay = request.app.state.scorer.relay
    status, payload = await relay.post(path, await request.body(), prompts, tokens)
    return relayed_answer(request, status, payload)


_OWN_PROMPTS = ("For clients that score their own prompts (text or token ids): passed to vLLM "
                "as it is, behind the shim's auth, limits and metrics; the answer is vLLM's.")


@router.post("/classify", summary="vLLM /classify (passed to vLLM)", description=_OWN_PROMPTS,
             responses={200: {"model": EngineAnswer}},
             openapi_extra=documented_body(ClassifyRequest, ClassifyChatRequest))
async def classify(request: Request, body: Any = Body(None)):
    relayed_body(body, ClassifyRequest, ClassifyChatRequest)
    return await pass_through(request, "/classify", *prompt_count(body))


@router.post("/pooling", summary="vLLM /pooling (passed to vLLM)", description=_OWN_PROMPTS,
             responses={200: {"model": EngineAnswer}},
             openapi_extra=documented_body(PoolingRequest, PoolingChatRequest))
async def pooling(request: Request, body: Any = Body(None)):
    relayed_body(body, PoolingRequest, PoolingChatRequest)
    return await pass_through(request, "/pooling", *prompt_count(body))
