"""POST /tokenize and /detokenize, answered in the shim with the served tokenizer (the ids vLLM
gives); the chat form of /tokenize (`messages`) needs the chat template and is passed to vLLM."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from server.dialects.vllm.passthrough import pass_through
from server.dialects.vllm.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeRequest,
    TokenizeResponse,
    validated,
)
from server.openapi import documented_body
from server.scoring.errors import InvalidInput
from server.state import request_state

router = APIRouter(tags=["vllm"])

# Tokenising more text than this moves to a worker thread, to keep the event loop responsive.
_INLINE_TOKENIZE_CHARS = 20_000


@router.post("/tokenize", summary="vLLM /tokenize with the served tokenizer",
             description="`prompt` is tokenised here with the model's tokenizer (the ids vLLM "
             "gives); the chat form (`messages`) is passed to vLLM.",
             response_model=TokenizeResponse,
             openapi_extra=documented_body(TokenizeRequest, TokenizeChatRequest))
async def tokenize(request: Request, body: Any = Body(None)) -> TokenizeResponse | Response:
    if isinstance(body, dict) and "messages" in body:
        validated(TokenizeChatRequest, body)
        return await pass_through(request, "/tokenize", prompts=1)
    req: TokenizeRequest = validated(TokenizeRequest, body)
    tokenizer = request_state(request).scorer.encoder.tokenizer

    def run():
        ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens).ids
        strs = [tokenizer.id_to_token(i) for i in ids] if req.return_token_strs else None
        return ids, strs

    ids, strs = await asyncio.to_thread(run) if len(req.prompt) > _INLINE_TOKENIZE_CHARS else run()
    return TokenizeResponse(count=len(ids), max_model_len=request_state(request).settings.max_model_len,
                            tokens=ids, token_strs=strs)


@router.post("/detokenize", summary="vLLM /detokenize with the served tokenizer")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    tokenizer = request_state(request).scorer.encoder.tokenizer
    # Ids outside the vocabulary are skipped, as vLLM's tokenizer skips them; ids past 32 bits
    # do not fit the tokenizer's type: a 400, as on vLLM.
    try:
        text = tokenizer.decode(body.tokens, skip_special_tokens=False)
    except OverflowError as exc:
        raise InvalidInput(str(exc)) from None
    return DetokenizeResponse(prompt=text)
