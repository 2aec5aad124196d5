"""The shim's application state: one typed object on the FastAPI app, made in create_app.

Routes and middleware read it through `app_state(app)` / `request_state(request)`, so a type
checker sees every attribute and no route adds one of its own. What start-up builds (the engines,
admission, the scorer) is `Started`, set once the lifespan has loaded the tokenizer; reading it
before then is a programming error and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from starlette.applications import Starlette
from starlette.requests import Request

if TYPE_CHECKING:
    from server.dialects.common import Dialect
    from server.ops.admission import Admission
    from server.ops.auth import Authenticator
    from server.ops.metrics import Metrics
    from server.ops.ratelimit import RateLimiter
    from server.scoring.core import Scorer
    from server.scoring.engines import EngineSet
    from server.settings import Settings

_ATTRIBUTE = "reranker"  # the one attribute on Starlette's app.state


@dataclass
class Started:
    """What the lifespan builds at start-up."""

    engine: EngineSet
    admission: Admission
    scorer: Scorer


@dataclass
class AppState:
    settings: Settings  # this worker's share (Settings.per_worker)
    metrics: Metrics
    auth: Authenticator
    ratelimiter: RateLimiter
    dialect_of: dict[str, Dialect]  # route path -> the dialect that owns it (error shape, docs)
    draining: bool = False  # SIGTERM seen (server/ops/drain.py): readiness fails
    engine_verified: bool = False  # some engine is up and passed its canary
    started: Started | None = None

    def _started(self) -> Started:
        if self.started is None:
            raise RuntimeError("the shim has not started: engines, admission and scorer are made "
                               "in create_app's lifespan")
        return self.started

    @property
    def engine(self) -> EngineSet:
        return self._started().engine

    @property
    def admission(self) -> Admission:
        return self._started().admission

    @property
    def scorer(self) -> Scorer:
        return self._started().scorer


def install_state(app: Starlette, state: AppState) -> AppState:
    setattr(app.state, _ATTRIBUTE, state)
    return state


def app_state(app: Starlette) -> AppState:
    return cast(AppState, getattr(app.state, _ATTRIBUTE))


def request_state(request: Request) -> AppState:
    return app_state(request.app)
