"""GET /version and /v1/models: what is served. /version is vLLM's own answer (asked once);
/v1/models is answered by the shim from its settings, so it works while vLLM restarts."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Request

from server.dialects.vllm.errors import relayed_answer
from server.dialects.vllm.protocol import ModelCard, ModelList, ModelPermission, VersionResponse
from server.state import request_state

router = APIRouter(tags=["vllm"])


@router.get("/version", summary="The vLLM version serving the model",
            responses={200: {"model": VersionResponse}})
async def version(request: Request):
    status, payload = await request_state(request).scorer.relay.version()
    return relayed_answer(request, status, payload)


@router.get("/v1/models", summary="The served model, as vLLM lists it (with max_model_len)")
async def models(request: Request) -> ModelList:
    settings = request_state(request).settings
    now = int(time.time())
    permission = ModelPermission(
        id=f"modelperm-{secrets.token_hex(8)}", object="model_permission", created=now,
        allow_create_engine=False, allow_sampling=True, allow_logprobs=True,
        allow_search_indices=False, allow_view=True, allow_fine_tuning=False, organization="*",
        group=None, is_blocking=False)
    return ModelList(object="list", data=[ModelCard(
        id=settings.model_name, object="model", created=now, owned_by="vllm",
        root=settings.model_path, parent=None, max_model_len=settings.max_model_len,
        permission=[permission])])


