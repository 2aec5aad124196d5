"""The one place that talks to vLLM: a pooled async HTTP client and its failure mapping."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from server.errors import ApiError, EngineUnavailable

# vLLM's uvicorn closes idle keep-alive connections after 5 s; expiring ours first avoids the
# race where a request goes out on a connection the server is closing (facts.md).
KEEPALIVE_EXPIRY_S = 3.0
# Failures that happen before vLLM has seen the request: safe to retry (scoring is idempotent).
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class EngineClient:
    def __init__(self, base_url: str, model_name: str, timeout: float, max_connections: int = 256):
        self.base_url = base_url
        self.model_name = model_name
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=2.0),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections,
                                keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )
        self.healthy = False
        self.last_failure = 0.0

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- scoring ---------------------------------------------------------------------------
    async def classify(self, prompts: list[list[int]], raw: bool) -> list[float]:
        """Scores of fully rendered, tokenised prompts, in order."""
        body = {"model": self.model_name, "input": prompts, "use_activation": not raw}
        data = await self._post("/classify", body)
        return [item["probs"][0] for item in sorted(data["data"], key=lambda d: d["index"])]

    async def rerank(self, query: str, documents: list[str], instruction: str, raw: bool) -> list[float]:
        """Scores through vLLM's own /rerank (vLLM renders the template), in input order."""
        body = {"model": self.model_name, "query": query, "documents": documents,
                "instruction": instruction, "use_activation": not raw}
        data = await self._post("/rerank", body)
        scores = [0.0] * len(documents)
        for item in data["results"]:
            scores[item["index"]] = item["relevance_score"]
        return scores

    async def _post(self, path: str, body: dict) -> dict:
        content = orjson.dumps(body)
        headers = {"content-type": "application/json"}
        for attempt in (0, 1):
            try:
                response = await self._client.post(path, content=content, headers=headers)
            except _RETRYABLE as exc:
                if attempt == 0 and not isinstance(exc, httpx.ConnectError):
                    continue
                self._mark_down()
                raise EngineUnavailable(f"engine unreachable: {type(exc).__name__}") from exc
            except httpx.TimeoutException as exc:
                raise ApiError(504, "the engine did not answer in time", "timeout") from exc
            return self._result(response)
        raise AssertionError("unreachable")

    def _result(self, response: httpx.Response) -> dict:
        if response.status_code == 200:
            self.healthy = True
            return orjson.loads(response.content)
        message = _error_message(response)
        if response.status_code in (400, 422):
            raise ApiError(400, f"rejected by the engine: {message}", "invalid_request")
        if response.status_code in (429, 503):
            raise EngineUnavailable(f"engine busy or unavailable: {message}")
        self._mark_down()
        raise EngineUnavailable(f"engine error {response.status_code}: {message}")

    def _mark_down(self) -> None:
        self.healthy = False
        self.last_failure = time.monotonic()

    # --- health and metrics -------------------------------------------------------------------
    async def check_health(self) -> bool:
        try:
            response = await self._client.get("/health", timeout=2.0)
            self.healthy = response.status_code == 200
        except httpx.HTTPError:
            self.healthy = False
        return self.healthy

    async def watch_health(self, interval: float = 1.0) -> None:
        """Keep `healthy` current so readiness answers without a round trip."""
        while True:
            await self.check_health()
            await asyncio.sleep(interval)

    async def metrics_text(self) -> str:
        try:
            response = await self._client.get("/metrics", timeout=5.0)
        except httpx.HTTPError as exc:
            raise EngineUnavailable("engine metrics unreachable") from exc
        return response.text


def _error_message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(error)[:500]
    return str(data)[:300]
