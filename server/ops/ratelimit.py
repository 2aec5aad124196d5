"""Per-client rate limits (per API key when auth is on, else per client IP) via `limits`."""

from __future__ import annotations

import ipaddress
import math
import time

from fastapi import Request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from server.errors import ApiError, retry_after


class RateLimiter:
    def __init__(self, spec: str, trusted_proxies: list[str], metrics) -> None:
        self.item = parse(spec) if spec else None
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.metrics = metrics

    def check(self, request: Request, identity: str | None) -> None:
        if self.item is None:
            return
        key = identity or "ip:" + self.client_ip(request)
        if self.limiter.hit(self.item, key):
            return
        reset_at, _ = self.limiter.get_window_stats(self.item, key)
        wait = math.ceil(reset_at - time.time())
        self.metrics.rejections.labels(reason="rate_limit").inc()
        raise ApiError(429, f"rate limit exceeded: {self.item} per client", "rate_limited",
                       retry_after(wait))

    def client_ip(self, request: Request) -> str:
        """The peer address; X-Forwarded-For is believed only when the peer is a trusted proxy."""
        peer = request.client.host if request.client else "unknown"
        if not self._trusted(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
        for hop in reversed(hops):  # the rightmost address no trusted proxy vouches for
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)
