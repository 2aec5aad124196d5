"""create_app(settings) -> FastAPI: the shim, with no import-time state."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials

from server import playground
from server.dialects import DIALECTS
from server.errors import install_error_handlers
from server.openapi import error_responses, install_openapi, refresh_openapi, scoring_answers, with_images
from server.ops import health
from server.ops.admission import Admission
from server.ops.auth import Authenticator, bearer_scheme
from server.ops.metrics import Metrics
from server.ops.middleware import ServiceMiddleware
from server.ops.ratelimit import RateLimiter
from server.responses import FastJSONResponse
from server.scoring.core import Scorer, canary_passes
from server.scoring.engine import EngineClient
from server.scoring.engines import Engine, EngineSet
from server.scoring.family import read_family
from server.scoring.prompt import PromptEncoder
from server.scoring.tokenizer import load_tokenizer
from server.settings import Settings
from server.state import AppState, Started, app_state, install_state, request_state

DESCRIPTION = """Qwen3-Reranker behind every rerank dialect: legacy `/v1/rank`, Cohere `/v1/rerank` and
`/v2/rerank` (Jina- and Voyage-compatible on `/v1/rerank`), TEI and seed-style `/rerank`, vLLM's own
API (`/rerank`, `/score`, `/tokenize`, `/classify`, `/pooling`, `/invocations`, ...), NVIDIA NIM
`/v1/ranking`, Mixedbread `/v1/reranking`, and under their own base URLs Elasticsearch's
`hugging_face` service (`/hf/rerank`), Weaviate `reranker-transformers` (`/weaviate/...`) and
Pinecone (`/pinecone/rerank`). Scores are
P(yes) of the official Qwen3-Reranker prompt; `raw_scores` gives logit(yes) - logit(no)."""


_CANARY_WARN_EVERY_S = 60.0


async def guard(request: Request,
                credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:
    """Auth then rate limit: the one dependency every scoring route carries."""
    state = request_state(request)
    identity = state.auth.identify(credentials)
    await state.ratelimiter.check(request, identity)


async def rate_guard(request: Request) -> None:
    """The guard when auth is off: rate limit only. No bearer dependency, so the OpenAPI
    document does not claim a security scheme the server does not check."""
    await request_state(request).ratelimiter.check(request, None)


async def watch_engine_once(app: FastAPI) -> None:
    """Refresh every engine's health; each time an engine (re)appears, prove it scores for real
    (its own canary, on it alone). The pod may take traffic while one engine has."""
    state = app_state(app)
    engines = state.engine
    if engines.single:
        await _watch(state, engines.members[0])
    else:
        await asyncio.gather(*(_watch(state, engine) for engine in engines.members))
    state.engine_verified = engines.verified


async def _watch(state: AppState, engine: Engine) -> None:
    up = await engine.client.check_health()
    if not up:
        engine.verified = False
    elif not engine.verified:
        try:
            scores = await state.scorer.canary(on=engine)
        except Exception:  # any failure to score means not verified; the next tick retries
            _warn_canary(state, engine, "engine canary failed", exc_info=True)
            engine.verified = False
            return
        engine.verified = canary_passes(scores)
        if not engine.verified:
            _warn_canary(state, engine, "engine canary failed: two unrelated documents scored "
                                        f"{scores[0]!r} and {scores[1]!r}; not taking traffic")


def _warn_canary(state: AppState, engine: Engine, message: str, **kwargs: Any) -> None:
    """The watcher retries every second: say why once a minute, not every tick."""
    now = time.monotonic()
    if now - engine.warned_at >= _CANARY_WARN_EVERY_S:
        engine.warned_at = now
        extra = None if state.engine.single else {"engine": engine.name}
        logging.getLogger("server").warning(message, extra=extra, **kwargs)


async def watch_engine(app: FastAPI, interval: float = 1.0) -> None:
    """Keep health and the canary verdict current so probes answer without a round trip."""
    while True:
        await asyncio.sleep(interval)
        await watch_engine_once(app)
        health.publish_state(app_state(app))


def create_app(settings: Settings | None = None, engine_factory=None) -> FastAPI:
    """The shim. `engine_factory(settings)` builds the engine clients at start-up, one or a list
    (default: a real vLLM client per upstream URL); in-process tests pass fake engines here
    (tests/inprocess)."""
    settings = (settings or Settings()).per_worker()
    metrics = Metrics()
    # text or Qwen3-VL reranker: the scorer's path and the routes' documented errors depend on it
    family = settings.model_family if settings.model_family != "auto" else read_family(settings.model_path)
    make_engines = engine_factory or (
        lambda s: [EngineClient(url, s.model_name, s.upstream_timeout, sigmoid_in_shim=s.deterministic)
                   for url in s.upstream_urls])

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        assert settings is not None  # (narrowed above; a closure does not see that)
        encoder = PromptEncoder(load_tokenizer(settings.tokenizer or settings.model_path))
        made = make_engines(settings)
        engine = EngineSet(list(made) if isinstance(made, (list, tuple)) else [made], metrics,
                           weight=settings.engine_weight)
        # saturation_capacity_tokens is one engine's (one GPU's); engines sharing a GPU count once
        capacity = round(settings.saturation_capacity_tokens * settings.capacity_units)
        admission = Admission(settings.max_inflight_pairs, settings.max_inflight_tokens,
                              settings.retry_after_seconds, metrics, capacity_tokens=capacity,
                              max_image_bytes=settings.max_inflight_image_bytes)
        state.started = Started(engine, admission,
                                Scorer(settings, encoder, engine, admission, metrics, family=family))
        await state.ratelimiter.start()
        refresh_openapi(app)  # now with the tokenizer's bounds (token ids)
        await watch_engine_once(app)
        health.publish_state(app_state(app))
        watcher = asyncio.create_task(watch_engine(app))
        try:
            yield
        finally:
            watcher.cancel()
            await state.scorer.aclose()
            await engine.aclose()

    app = FastAPI(title="Qwen3 Reranker", description=DESCRIPTION, version="0.1.0",
                  lifespan=lifespan, default_response_class=FastJSONResponse)
    auth = Authenticator(settings)
    state = install_state(app, AppState(
        settings=settings, metrics=metrics, auth=auth,
        ratelimiter=RateLimiter(settings, metrics, auth_enabled=auth.enabled),
        dialect_of={path: d for d in DIALECTS for path in d.paths}))
    install_error_handlers(app)
    app.include_router(health.router)
    if settings.playground:  # the page is public; the scoring calls it makes are guarded below
        app.include_router(playground.router)
    # With neither auth nor rate limits configured, the guard would only cost time per request.
    limiter = state.ratelimiter
    auth_on, limit = auth.enabled, limiter.spec if limiter.enabled else None
    dependencies = [Depends(guard)] if auth_on else [Depends(rate_guard)] if limit else []
    answers = scoring_answers(settings, auth_on, limit)
    for dialect in DIALECTS:
        documented = with_images(dialect) if family == "vl" else dialect
        for route in dialect.router.routes:  # one at a time: each documents its own errors
            assert isinstance(route, APIRoute)
            one = APIRouter()
            one.routes.append(route)
            app.include_router(one, dependencies=dependencies,
                               responses=error_responses(documented, route.path, answers))
    app.add_middleware(ServiceMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                       dialect_of=state.dialect_of)
    install_openapi(app, settings)
    return app
