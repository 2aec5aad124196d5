"""The one place that talks to vLLM: a pooled async HTTP client and its failure mapping.

aiohttp, not httpx, on this hot path: httpx's connection pool scans every pooled connection and
checks socket readability on each request, which dominates the shim's CPU in front of a fast
engine; aiohttp's C parsers and pool do not (benchmarks/RESULTS.md, "Shim overhead").
"""

from __future__ import annotations

import asyncio
import math

import aiohttp
import orjson

from server.scoring.errors import EngineBadAnswer, EngineRejected, EngineTimeout, EngineUnavailable

# vLLM's uvicorn closes idle keep-alive connections after VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s by
# default, 30 s as the launcher starts it); expiring ours first avoids the race where a request
# goes out on a connection the server is closing.
KEEPALIVE_EXPIRY_S = 3.0
# Failures after the connection was made but before any response: the request may have been
# sent on a connection the server was closing. Scoring is idempotent, so one retry is safe.
_RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_JSON = {"content-type": "application/json"}


class EngineClient:
    def __init__(self, base_url: str, model_name: str, timeout: float, max_connections: int = 512,
                 sigmoid_in_shim: bool = False):
        self.base_url = base_url
        self.model_name = model_name
        # Deterministic mode: ask vLLM for the logit and take P(yes) = sigmoid(logit) here, one
        # value at a time. vLLM applies it to the whole batch at once, and on CPU its vectorised
        # sigmoid rounds some elements differently from the scalar tail: the same pair scored
        # 1 ulp apart alone and in a batch (docs/deployment.md, "Start-up and deterministic
        # scores").
        self.sigmoid_in_shim = sigmoid_in_shim
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=2.0)
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_EXPIRY_S),
            timeout=self._timeout,
        )
        self.healthy = False

    async def aclose(self) -> None:
        await self._session.close()

    # --- scoring ---------------------------------------------------------------------------
    async def classify(self, prompts: list[list[int]], raw: bool) -> list[float]:
        """Scores of fully rendered, tokenised prompts, in order."""
        body = {"model": self.model_name, "input": prompts, "use_activation": self._vllm_activation(raw)}
        data = await self._post("/classify", body)
        scores = [item["probs"][0] for item in sorted(data["data"], key=lambda d: d["index"])]
        return self._activate(_finite(scores), raw)

    async def rerank(self, query: str | dict, documents: list[str] | list[str | dict], instruction: str,
                     raw: bool) -> list[float]:
        """Scores through vLLM's own /rerank (vLLM renders the template), in input order. A query
        or document is text or vLLM's multimodal {"content": [image_url and text parts]}."""
        body = {"model": self.model_name, "query": query, "documents": documents,
                "instruction": instruction, "use_activation": self._vllm_activation(raw)}
        data = await self._post("/rerank", body)
        scores = [0.0] * len(documents)
        for item in data["results"]:
            scores[item["index"]] = item["relevance_score"]
        return self._activate(_finite(scores), raw)

    def _vllm_activation(self, raw: bool) -> bool:
        return not raw and not self.sigmoid_in_shim

    def _activate(self, scores: list[float], raw: bool) -> list[float]:
        return [_sigmoid(x) for x in scores] if self.sigmoid_in_shim and not raw else scores

    async def _post(self, path: str, body: dict) -> dict:
        return self._result(*await self._request("POST", path, orjson.dumps(body)))

    async def forward(self, method: str, path: str, content: bytes | None = None) -> tuple[int, bytes]:
        """A vLLM route passed through as it is (vLLM's own /classify, /pooling, /version, ...):
        its status and JSON body come back for the caller to relay, 4xx included. Failures to
        get an answer, and vLLM's 5xx (but 501: "not supported", a client matter), are domain
        errors like every other engine call's."""
        status, payload = await self._request(method, path, content)
        if status < 500 or status == 501:
            return status, payload
        self._result(status, payload)  # raises the mapped domain error
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, content: bytes | None) -> tuple[int, bytes]:
        """One call to vLLM, retried once when it failed before any response byte; failures to
        get an answer become domain errors."""
        for attempt in (0, 1):
            try:
                async with self._session.request(method, path, data=content, headers=_JSON) as response:
                    return response.status, await response.read()
            except aiohttp.ClientConnectorError as exc:  # nothing listens: the engine is down
                self._mark_down()
                raise EngineUnavailable("engine unreachable: connection refused") from exc
            except _RETRYABLE as exc:
                if attempt == 0:
                    continue
                self._mark_down()
                raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from exc
            except asyncio.TimeoutError as exc:
                raise EngineTimeout("the engine did not answer in time") from exc
        raise AssertionError("unreachable")

    def _result(self, status: int, payload: bytes) -> dict:
        if status == 200:
            self.healthy = True
            return orjson.loads(payload)
        message = _error_message(payload)
        if status in (400, 422):
            raise EngineRejected(f"rejected by the engine: {message}")
        if status in (429, 503):
            raise EngineUnavailable(f"engine busy or unavailable: {message}")
        self._mark_down()
        raise EngineUnavailable(f"engine error {status}: {message}")

    def _mark_down(self) -> None:
        self.healthy = False

    # --- health and metrics -------------------------------------------------------------------
    async def check_health(self) -> bool:
        try:
            async with self._session.get("/health", timeout=aiohttp.ClientTimeout(total=2.0)) as r:
                self.healthy = r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.healthy = False
        return self.healthy

    async def metrics_text(self) -> str:
        try:
            async with self._session.get("/metrics", timeout=aiohttp.ClientTimeout(total=5.0)) as r:
                return await r.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise EngineUnavailable("engine metrics unreachable") from exc


def _finite(scores: list) -> list[float]:
    # A broken engine (overflow under some quantisation) answers NaN, which JSON encoders turn
    # into null: that must not reach a client as a score, nor sort as one.
    for score in scores:
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise EngineBadAnswer(f"the engine returned a score that is not a finite number: {score!r}")
    return scores


def _sigmoid(x: float) -> float:
    """P(yes) from logit(yes) - logit(no), in float64, without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _error_message(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:300].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(error)[:500]
    return str(data)[:300]
