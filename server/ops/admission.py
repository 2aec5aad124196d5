"""Admission control: bounded in-flight work, refused at once instead of queued into timeouts."""

from __future__ import annotations

from contextlib import asynccontextmanager

from server.scoring.errors import NoRoom


class Admission:
    def __init__(self, max_pairs: int, max_tokens: int, retry_after: int, metrics) -> None:
        self.max_pairs = max_pairs
        self.max_tokens = max_tokens
        self.retry_after = retry_after
        self.metrics = metrics
        self.pairs = 0
        self.tokens = 0

    @asynccontextmanager
    async def admit(self, pairs: int, tokens: int):
        self._check(pairs, tokens)
        self.pairs += pairs
        self.tokens += tokens
        self.metrics.inflight_pairs.set(self.pairs)
        try:
            yield
        finally:
            self.pairs -= pairs
            self.tokens -= tokens
            self.metrics.inflight_pairs.set(self.pairs)

    def _check(self, pairs: int, tokens: int) -> None:
        # A request bigger than the whole budget could never run: admit it alone rather than
        # refuse it forever (its size is bounded by max_documents / max_request_tokens).
        if self.pairs == 0:
            return
        if self.pairs + pairs > self.max_pairs:
            self._refuse("pairs", f"server busy: {self.pairs} pairs in flight, limit {self.max_pairs}")
        if self.max_tokens and self.tokens + tokens > self.max_tokens:
            self._refuse("tokens", f"server busy: {self.tokens} tokens in flight, limit {self.max_tokens}")

    def _refuse(self, reason: str, detail: str) -> None:
        self.metrics.rejections.labels(reason=reason).inc()
        raise NoRoom(detail, self.retry_after, reason)
