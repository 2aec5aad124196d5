"""Per-client rate limits through the `limits` library (async API: the guard runs in the event loop).

Who is a client: the API key / JWT subject when auth is on, else the client IP. The IP is the TCP
peer, or, when the peer is one of `trusted_proxies`, the rightmost X-Forwarded-For address no
trusted proxy vouches for. Without trusted proxies, everyone behind one proxy shares one budget:
the shim says so in its log (once a minute) when it sees X-Forwarded-For from an untrusted peer.

Where the counters live (`rate_limit_storage`):
- `memory://` (default): in the process. With N shim workers each enforces ceil(limit / N), and
  each replica counts on its own, so a client may get up to R x limit from R replicas.
- a shared store (`redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`): one exact
  moving-window budget per client across every worker of every replica; nothing is split.

Shared store down or slower than `rate_limit_storage_timeout`: fail OPEN to per-process limits.
Requests are served and still limited, as if the store were `memory://`, so a Redis outage never
turns into errors for callers (the rate limit is a fairness tool; overload is admission control's
job) nor into no limit at all. Each failure counts in `reranker_ratelimit_store_errors_total`,
a warning is logged at most once a minute, and the store is tried again after a short pause.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from typing import Any

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from server.errors import ApiError, retry_after
from server.limit_spec import SCHEMES, parse_limit, redact, storage_scheme

log = logging.getLogger("server")

KEY_PREFIX = "reranker"
_WARN_EVERY_S = 60.0
# After a store failure, requests skip the store for this long: a blackholed Redis would
# otherwise cost every request the full timeout.
_STORE_RETRY_S = 2.0


def worker_share(item: RateLimitItem, workers: int) -> RateLimitItem:
    """ceil(amount / workers) per the same period: the share of one process of in-process counters."""
    if workers <= 1:
        return item
    return type(item)(math.ceil(item.amount / workers), item.multiples, item.namespace)


def _make_store(uri: str, timeout: float):
    scheme = storage_scheme(uri)
    if scheme == "memory":
        return MemoryStorage()
    # Socket timeouts bound every Redis call inside redis-py; the guard adds an outer bound.
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if scheme == "redis+sentinel":
        options["sentinel_kwargs"] = dict(options)
    return storage_from_string("async+" + uri.removeprefix("async+"), implementation="redispy",
                               key_prefix=KEY_PREFIX, wrap_exceptions=True, **options)


class RateLimiter:
    def __init__(self, settings, metrics, auth_enabled: bool = False) -> None:
        self.spec = settings.rate_limit
        self.metrics = metrics
        self.keyed_by = "API key" if auth_enabled else "client IP"
        self.proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]
        self.storage_uri = settings.rate_limit_storage
        self.shared = SCHEMES[storage_scheme(self.storage_uri)]
        self.workers = settings.shim_workers
        self.timeout = settings.rate_limit_storage_timeout
        self.fallback_retry_after = settings.retry_after_seconds
        self._xff_warned_at = self._store_warned_at = float("-inf")
        self._store_retry_at = 0.0
        self._store_failing = False
        if not self.spec:
            self.item = None
            return
        configured = parse_limit(self.spec)
        self.spec = _text(configured)
        # The per-process share: the whole budget for a shared store, else 1/N per worker.
        self.local_item = worker_share(configured, self.workers)
        self.item = configured if self.shared else self.local_item
        self.local = MovingWindowRateLimiter(MemoryStorage())
        self.store = MovingWindowRateLimiter(_make_store(self.storage_uri, self.timeout)) \
            if self.shared else None

    @property
    def enabled(self) -> bool:
        return self.item is not None

    def describe(self) -> str:
        """One line for the start-up log: what is limited, how it is keyed, where it is counted."""
        if not self.enabled:
            return ("rate limiting off (set RERANKER_RATE_LIMIT, e.g. 600/minute, to limit each "
                    "client; see docs/deployment.md)")
        if self.keyed_by == "API key":
            key = "per API key / JWT subject"
        elif self.proxies:
            key = ("per client IP (the peer; X-Forwarded-For believed from "
                   + ", ".join(map(str, self.proxies)) + ")")
        else:
            key = "per client IP (the TCP peer; X-Forwarded-For ignored: no trusted_proxies)"
        if self.shared:
            where = (f"shared store {redact(self.storage_uri)}: exact across workers and replicas; "
                     "if it fails, per-process limits apply")
        elif self.workers > 1:
            where = (f"in-process counters split over {self.workers} workers "
                     f"({_text(self.local_item)} each); every replica counts separately")
        else:
            where = "in-process counters; every replica counts separately"
        assert self.item is not None
        return f"rate limiting {_text(self.item)} {key}, {where}"

    async def start(self) -> None:
        """At start-up: say what is limited, and whether the shared store answers."""
        log.info(self.describe(), extra={"rate_limit": self.spec or None,
                                         "rate_limit_storage": redact(self.storage_uri),
                                         "keyed_by": self.keyed_by if self.enabled else None})
        if self.enabled and self.store is not None:
            try:
                ok = await asyncio.wait_for(self.store.storage.check(), 2 * self.timeout + 1)
            except Exception:  # noqa: BLE001 - any failure means "not reachable now"
                ok = False
            if not ok:
                log.warning("rate-limit store %s not reachable at start-up: per-process limits "
                            "apply until it answers", redact(self.storage_uri))

    async def check(self, request, identity: str | None) -> None:
        if self.item is None:
            return
        key = identity or "ip:" + self.client_ip(request)
        allowed = await self._hit_shared(key) if self.store is not None else None
        limiter, item = (self.store, self.item) if allowed is not None else (self.local, self.local_item)
        if allowed is None:
            allowed = await self.local.hit(item, key)
        if allowed:
            return
        self.metrics.rejections.labels(reason="rate_limit").inc()
        wait = await self._seconds_to_wait(limiter, item, key)
        raise ApiError(429, f"rate limit exceeded: {self.spec} per client ({self.keyed_by}); "
                       f"retry in {wait} s", "rate_limited", retry_after(wait))

    async def _hit_shared(self, key: str) -> bool | None:
        """True/False from the shared store, or None when it failed (the caller falls back)."""
        if time.monotonic() < self._store_retry_at:
            return None
        try:
            assert self.store is not None and self.item is not None
            allowed = await asyncio.wait_for(self.store.hit(self.item, key), 2 * self.timeout)
        # Fail open on anything the store raises (connection refused, timeouts, protocol or
        # auth errors): a request must never fail because the limiter's store did.
        except Exception as exc:  # noqa: BLE001
            self._store_failed(exc)
            return None
        if self._store_failing:
            self._store_failing = False
            log.warning("rate-limit store %s answers again: shared limits apply",
                        redact(self.storage_uri))
        return allowed

    def _store_failed(self, exc: Exception) -> None:
        self.metrics.ratelimit_store_errors.inc()
        self._store_failing = True
        now = time.monotonic()
        self._store_retry_at = now + _STORE_RETRY_S
        if now - self._store_warned_at >= _WARN_EVERY_S:
            self._store_warned_at = now
            log.warning("rate-limit store %s failed (%s: %s): serving with per-process limits "
                        "(%s per process) until it answers", redact(self.storage_uri),
                        type(exc).__name__, exc, _text(self.local_item))

    async def _seconds_to_wait(self, limiter, item: RateLimitItem, key: str) -> int:
        try:
            reset_at, _ = await asyncio.wait_for(limiter.get_window_stats(item, key),
                                                 2 * self.timeout)
        except Exception as exc:  # noqa: BLE001 - the store failed between two calls
            if limiter is self.store:
                self._store_failed(exc)
            return self.fallback_retry_after
        return max(1, math.ceil(reset_at - time.time()))

    def client_ip(self, request) -> str:
        """The peer address; X-Forwarded-For is believed only when the peer is a trusted proxy."""
        peer = request.client.host if request.client else "unknown"
        forwarded = request.headers.get("x-forwarded-for", "")
        if not self._trusted(peer):
            if forwarded:
                self._warn_untrusted_proxy(peer)
            return peer
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):  # the rightmost address no trusted proxy vouches for
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _warn_untrusted_proxy(self, peer: str) -> None:
        # A proxy in front that is not trusted makes every client behind it one "client".
        # (Limiting by the peer is still right: believing the header would let anyone pick a
        # fresh budget by sending one.)
        now = time.monotonic()
        if now - self._xff_warned_at >= _WARN_EVERY_S:
            self._xff_warned_at = now
            log.warning("X-Forwarded-For from %s, which is not in trusted_proxies: rate limits "
                        "count every client behind it as one; if %s is your proxy or ingress, "
                        "add its address or CIDR to RERANKER_TRUSTED_PROXIES", peer, peer)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)


def _text(item: RateLimitItem) -> str:
    """300/minute, 10/2 minutes: the way operators write limits."""
    unit = item.GRANULARITY.name
    period = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
    return f"{item.amount}/{period}"
