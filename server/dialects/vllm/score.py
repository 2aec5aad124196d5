"""POST /score and /v1/score: vLLM's Score API, scored by the one core."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.dialects.vllm.mapping import score_answer
from server.dialects.vllm.protocol import ScoreResponse, VllmScoreRequest

router = APIRouter(tags=["vllm"])

_SCORE_DOC = ("vLLM's Score API: `queries`+`documents` (or `queries`+`items`, `data_1`+`data_2`, "
              "`text_1`+`text_2`), 1:1, 1:N or N:N; `data` in input order. Through the one scoring "
              "core: the official prompt, documents cut to fit instead of a 400, "
              "`truncate_prompt_tokens` cuts only the document text (never the template).")


@router.post("/score", summary="vLLM Score API", description=_SCORE_DOC)
async def create_score(body: VllmScoreRequest, request: Request) -> ScoreResponse:
    return await score_answer(request, body)


@router.post("/v1/score", summary="vLLM Score API (the /v1 alias)", description=_SCORE_DOC)
async def create_score_v1(body: VllmScoreRequest, request: Request) -> ScoreResponse:
    return await score_answer(request, body)
