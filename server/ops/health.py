"""Probes and metrics routes. None of these need auth, so probes and scrapers always get in.

/livez   the shim process is alive (Kubernetes liveness: never fails while the model loads)
/health  200 {"status": "ok"} when the service can score; 503 otherwise (aliases /healthz, /ping)
/ready   readiness: vLLM up with the model loaded, scoring for real (a canary pair must not score
         the same), and not draining; turns 503 first on SIGTERM

With several engines the pod is ready while at least one engine is up and passed its
canary: the others' traffic moves to it (server/scoring/engines.py), so taking the whole pod out
of the Service for one engine's restart would only turn lost capacity into lost availability.
The answers then list each engine (`engines`), and /metrics has reranker_engine_instance_up and
_verified per engine; capacity lost shows as saturation, which the autoscaler acts on.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from server.errors import ErrorBody
from server.openapi import HEADERS
from server.responses import FastJSONResponse
from server.state import AppState, request_state

router = APIRouter(tags=["operations"])

# vLLM's exposition is passed through as it came; this is the type it is served with
ENGINE_METRICS_TYPE = "text/plain; version=0.0.4"


# --- the bodies: the routes answer these models, and the OpenAPI document describes them ----
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Alive(_Strict):
    status: Literal["alive"]


class EngineState(_Strict):
    engine: str = Field(description="the engine's index (label `engine` of its metrics)")
    up: bool = Field(description="it answers /health")
    verified: bool = Field(description="it passed the readiness canary since it came up")
    outstanding_tokens: int = Field(description="prompt tokens sent to it and not answered")
    inflight_calls: int = Field(description="calls in flight to it")


class ServiceState(_Strict):
    model: str = Field(description="the served model name")
    engine: Literal["up", "down"] = Field(description="vLLM answers its /health (several engines: "
                                          "at least one does)")
    draining: bool = Field(description="SIGTERM received: finishing in-flight work")
    engines: list[EngineState] | None = Field(
        None, description="with several engines per pod only: each engine's state")


class Health(ServiceState):
    status: Literal["ok", "unavailable"]


class Ready(ServiceState):
    status: Literal["ready"]


class NotReady(ServiceState):
    status: Literal["not_ready"]
    reason: str = Field(description="why, as a sentence")


def _text(media_type: str, description: str) -> dict:
    return {200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string"}}}}}


_RETRY = {"Retry-After": {**HEADERS["Retry-After"], "required": True}}


def _service_state(request: Request) -> ServiceState:
    state = request_state(request)
    engines = state.engine
    return ServiceState(
        model=state.settings.model_name, engine="up" if engines.healthy else "down",
        draining=state.draining,
        engines=None if engines.single else [EngineState(**e.state()) for e in engines.members])


def _body(model: BaseModel) -> dict[str, Any]:
    """The answer as sent: `engines` only with several engines."""
    return model.model_dump(exclude_none=True)


@router.get("/livez", summary="Liveness: the shim process answers",
            responses={200: {"model": Alive}})
async def livez() -> dict[str, Any]:
    return _body(Alive(status="alive"))


@router.get("/health", summary="200 when the service can score, 503 otherwise",
            responses={200: {"model": Health, "description": "the engine is up"},
                       503: {"model": Health, "description": "the engine is down",
                             "headers": _RETRY}})
@router.get("/healthz", include_in_schema=False)
@router.get("/ping", include_in_schema=False)   # SageMaker's probe (vLLM answers it too)
@router.post("/ping", include_in_schema=False)
async def health(request: Request) -> FastJSONResponse:
    state = _service_state(request)
    ok = state.engine == "up"
    answer = Health(status="ok" if ok else "unavailable", **state.model_dump())
    return FastJSONResponse(_body(answer), status_code=200 if ok else 503,
                            headers=None if ok else {"Retry-After": "1"})


@router.get("/ready", summary="Readiness: engine loaded and not draining",
            responses={200: {"model": Ready, "description": "ready for traffic"},
                       503: {"model": NotReady, "description": "not ready: `reason` says why"}})
async def ready(request: Request) -> FastJSONResponse:
    state = _service_state(request)
    if state.draining:
        reason = "draining"
    elif state.engine != "up":
        reason = "engine not ready"
    elif not request_state(request).engine_verified:
        reason = ("engine canary not passed: two unrelated documents must score differently "
                  "(checked once a second; the log says what the engine answered)")
    else:
        return FastJSONResponse(_body(Ready(status="ready", **state.model_dump())))
    answer = NotReady(status="not_ready", reason=reason, **state.model_dump())
    return FastJSONResponse(_body(answer), status_code=503)


def publish_state(state: AppState) -> None:
    """Engine, canary and drain state into the gauges, and the saturation integral up to now.
    Every worker's engine watcher calls this once a second (so with several workers no worker's
    multiprocess file holds a stale value), and /metrics calls it before rendering."""
    metrics = state.metrics
    engines = state.started.engine if state.started is not None else None
    metrics.engine_up.set(1 if engines is not None and engines.healthy else 0)
    metrics.engine_verified.set(1 if state.engine_verified else 0)
    for engine in engines.members if engines is not None else ():
        metrics.engine_instance_up.labels(engine.name).set(1 if engine.up else 0)
        metrics.engine_instance_verified.labels(engine.name).set(1 if engine.verified else 0)
    metrics.draining.set(1 if state.draining else 0)
    if state.started is not None:
        state.started.admission.flush()


@router.get("/metrics", summary="Prometheus metrics of the shim", response_class=Response,
            responses=_text(CONTENT_TYPE_LATEST, "Prometheus text exposition"))
async def metrics(request: Request) -> Response:
    state = request_state(request)
    publish_state(state)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


@router.get("/metrics/engine", summary="vLLM's own Prometheus metrics, proxied for scraping",
            response_class=Response,
            responses={**_text(ENGINE_METRICS_TYPE, "vLLM's Prometheus text exposition"),
                       503: {"model": ErrorBody, "description": "the engine is unreachable",
                             "headers": _RETRY}})
async def engine_metrics(request: Request) -> Response:
    text = await request_state(request).engine.metrics_text()
    return Response(text, media_type=ENGINE_METRICS_TYPE)

