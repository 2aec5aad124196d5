"""The in-process test layer: the real app (create_app), the real tokenizer and prompt, and a
fake engine in place of vLLM. Fast (no vLLM start) and able to force what a real engine can't
show on demand: slowness, a gate held shut, refusals, outages. Real-vLLM behaviour stays in
tests/integration."""

from __future__ import annotations

import asyncio
import functools
import math
from contextlib import asynccontextmanager
from unittest import mock

import httpx
import pytest

from server.app import create_app
from server.scoring.errors import EngineRejected, EngineUnavailable
from server.scoring.prompt import PromptEncoder
from server.scoring.tokenizer import load_tokenizer
from server.settings import Settings
from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, ensure_model

POISON = "POISON-PILL"  # a document the fake engine refuses, as vLLM refuses bad input


class FakeEngine:
    """Stands in for vLLM's /classify: a deterministic score from the prompt's token ids."""

    def __init__(self, delay: float = 0.0) -> None:
        self.model_name = MODEL_NAME
        self.base_url = "fake://engine"
        self.healthy = True
        self.delay = delay
        self.gate: asyncio.Event | None = None   # when set to an Event, calls wait for it
        self.fail: Exception | None = None       # raised by every call while set
        self.poison_ids: list[int] = []          # token ids of POISON: such prompts are refused
        self.calls: list[list[list[int]]] = []
        self.constant: float | None = None       # when set, every prompt scores this (vLLM #27857)
        self.answered = 0                        # calls answered with scores
        # vLLM's routes the shim passes through (/classify, /pooling, ...): what the fake answers
        # them, and what it was sent
        self.answer: tuple[int, bytes] = (200, b'{"id": "classify-1", "object": "list", "created": 0, '
                                               b'"model": "m", "data": [], "usage": {}}')
        self.forwarded: list[tuple[str, str, bytes | None]] = []

    def kill(self) -> None:
        """What the real client sees of a vLLM that died: connection refused, and it marks itself
        down (server/scoring/engine.py); calls held at the gate fail too."""
        self.fail = EngineUnavailable("engine unreachable: connection refused")
        self.healthy = False

    def revive(self) -> None:
        """Restarted: /health answers 200 again (the watcher's next check sees it)."""
        self.fail = None
        self.healthy = True

    @staticmethod
    def logit(prompt: list[int]) -> float:
        tail = prompt[-48:]
        return (sum((i + 1) * t for i, t in enumerate(tail)) % 997) / 997 * 8 - 4

    async def classify(self, prompts: list[list[int]], raw: bool) -> list[float]:
        self.calls.append(prompts)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:  # also a call in flight when the engine was killed
            raise self.fail
        if self.poison_ids and any(_contains(p, self.poison_ids) for p in prompts):
            raise EngineRejected("rejected by the engine: poisoned prompt")
        self.answered += 1
        if self.constant is not None:
            return [self.constant] * len(prompts)
        logits = [self.logit(p) for p in prompts]
        return logits if raw else [1 / (1 + math.exp(-x)) for x in logits]

    async def rerank(self, query, documents, instruction, raw):  # engine_api=rerank is not faked
        raise NotImplementedError

    async def forward(self, method: str, path: str, content: bytes | None = None) -> tuple[int, bytes]:
        self.forwarded.append((method, path, content))
        if self.fail is not None:
            raise self.fail
        return self.answer

    async def check_health(self) -> bool:
        return self.healthy

    async def metrics_text(self) -> str:
        if not self.healthy:
            raise EngineUnavailable("engine metrics unreachable")
        return ("# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{engine="0",model_name="{self.model_name}"}} 0.0\n'
                "# HELP vllm:request_success_total Count of successfully processed requests.\n"
                "# TYPE vllm:request_success_total counter\n"
                f'vllm:request_success_total{{engine="0",model_name="{self.model_name}"}} '
                f"{float(self.answered)}\n")

    async def aclose(self) -> None:
        pass


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def settings(**overrides) -> Settings:
    base = dict(model=str(ensure_model()), served_model_name=MODEL_NAME, max_model_len=MAX_MODEL_LEN,
                rate_limit="", workers=1)
    return Settings(**{**base, **overrides})


@functools.cache
def _encoder(path: str) -> PromptEncoder:
    return PromptEncoder(load_tokenizer(path))


def _shared_encoder(tokenizer) -> PromptEncoder:
    # Building the real tokenizer and encoder costs ~1.3 s; every app here serves the same model,
    # so they share one (it holds only read-only state and a cache of instruction ids).
    return _encoder(str(ensure_model()))


@asynccontextmanager
async def running(fake: FakeEngine | list[FakeEngine] | None = None, **overrides):
    """The app started (lifespan: tokenizer, canary) around `fake`; yields (app, client, fake).
    A list of fakes: several engines behind the one shim (as many URLs in the settings)."""
    fake = fake or FakeEngine()
    fakes = fake if isinstance(fake, list) else [fake]
    if len(fakes) > 1:
        overrides.setdefault("vllm_url", ",".join(f"http://fake-{i}" for i in range(len(fakes))))
    app = create_app(settings(**overrides), engine_factory=lambda s: fakes)
    with mock.patch("server.app.PromptEncoder", _shared_encoder), \
            mock.patch("server.app.load_tokenizer", lambda path: path):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shim") as client:
                for f in fakes:
                    f.calls.clear()  # the start-up canary is not the test's traffic
                yield app, client, fake


@pytest.fixture
def anyio_backend():
    return "asyncio"
