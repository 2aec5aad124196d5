"""Admission control: bounded in-flight work, refused at once instead of queued into timeouts.

It also measures saturation, the autoscaling signal: prompt tokens in flight to the engine over
`capacity_tokens` (Settings.saturation_capacity_tokens, the whole pod's capacity; with several
workers each reports its own tokens over the pod's capacity, and the values add up).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from server.scoring.errors import NoRoom


class Admission:
    def __init__(self, max_pairs: int, max_tokens: int, retry_after: int, metrics,
                 capacity_tokens: int = 0, max_image_bytes: int = 0) -> None:
        self.max_pairs = max_pairs
        self.max_tokens = max_tokens
        self.max_image_bytes = max_image_bytes
        self.retry_after = retry_after
        self.metrics = metrics
        self.capacity_tokens = capacity_tokens
        self.pairs = 0
        self.tokens = 0
        self.image_bytes = 0
        self._accounted_at = time.monotonic()

    @asynccontextmanager
    async def admit(self, pairs: int, tokens: int, image_bytes: int = 0):
        """Hold `pairs`, `tokens` and the decoded `image_bytes` of a request's images
        (server.images.decoded_bytes) while it runs, or raise NoRoom at once."""
        self._check(pairs, tokens, image_bytes)
        self.flush()
        self.pairs += pairs
        self.tokens += tokens
        self.image_bytes += image_bytes
        self.metrics.inflight_pairs.set(self.pairs)
        self._publish_saturation()
        try:
            yield
        finally:
            self.flush()
            self.pairs -= pairs
            self.tokens -= tokens
            self.image_bytes -= image_bytes
            self.metrics.inflight_pairs.set(self.pairs)
            self._publish_saturation()

    @property
    def saturation(self) -> float:
        return self.tokens / self.capacity_tokens if self.capacity_tokens else 0.0

    def flush(self) -> None:
        """Add the saturation since the last change to its time integral. Called on every
        change and once a second by the engine watcher, so a long request shows up in the
        counter while it runs, not only when it ends."""
        now = time.monotonic()
        if self.tokens and self.capacity_tokens:
            self.metrics.saturation_seconds.inc(self.saturation * (now - self._accounted_at))
        self._accounted_at = now

    def _publish_saturation(self) -> None:
        if self.capacity_tokens:
            self.metrics.saturation.set(self.saturation)

    def _check(self, pairs: int, tokens: int, image_bytes: int = 0) -> None:
        # A request bigger than the whole budget could never run: admit it alone rather than
        # refuse it forever (its size is bounded by max_documents / max_request_tokens).
        if self.pairs == 0:
            return
        if self.pairs + pairs > self.max_pairs:
            self._refuse("pairs", f"server busy: {self.pairs} pairs in flight, limit {self.max_pairs}")
        if self.max_tokens and self.tokens + tokens > self.max_tokens:
            self._refuse("tokens", f"server busy: {self.tokens} tokens in flight, limit {self.max_tokens}")
        if self.max_image_bytes and self.image_bytes + image_bytes > self.max_image_bytes:
            self._refuse("image_bytes", f"server busy: {self.image_bytes} decoded image bytes in "
                         f"flight, limit {self.max_image_bytes}")

    def _refuse(self, reason: str, detail: str) -> None:
        self.metrics.rejections.labels(reason=reason).inc()
        raise NoRoom(detail, self.retry_after, reason)
