"""Requests passed to vLLM as they came: the client's own prompts (vLLM's /classify, /pooling,
the chat form of /tokenize, /invocations bodies the shim does not score) and GET /version.

Nothing is templated or cut here: the client built its prompts. What the shim adds is what it
adds to scoring, so a relayed request cannot get round the limits: at most `max_documents`
inputs, admission control (the same in-flight pairs and tokens that scoring counts), and the
prompt-token metric from vLLM's `usage`. The answer is vLLM's status and body, as they are;
shaping its errors is the dialect's.
"""

from __future__ import annotations

import orjson

from server.scoring.errors import InvalidInput


class Relay:
    def __init__(self, settings, engine, admission, metrics) -> None:
        self.settings = settings
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self._version: bytes | None = None

    async def post(self, path: str, content: bytes, prompts: int = 1, tokens: int = 0) -> tuple[int, bytes]:
        """POST `content` to vLLM's `path`. `prompts` and `tokens` are what admission counts:
        the inputs of the body, and the token ids among them (text inputs count 0 tokens: only
        vLLM tokenises them)."""
        limit = self.settings.max_documents
        if prompts > limit:
            raise InvalidInput(f"too many inputs: {prompts} > limit {limit} (max_documents); split the request")
        async with self.admission.admit(prompts, tokens):
            status, payload = await self.engine.forward("POST", path, content)
        if status == 200:
            self._count_tokens(payload)
        return status, payload

    async def version(self) -> tuple[int, bytes]:
        """vLLM's GET /version. Asked once and kept: a restart brings back the same vLLM."""
        if self._version is not None:
            return 200, self._version
        status, payload = await self.engine.forward("GET", "/version")
        if status == 200:
            self._version = payload
        return status, payload

    def _count_tokens(self, payload: bytes) -> None:
        try:
            prompt_tokens = orjson.loads(payload).get("usage", {}).get("prompt_tokens")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(prompt_tokens, int):
            self.metrics.tokens.inc(prompt_tokens)
