"""Rate-limit settings and keying: what an operator writes is what each process enforces.

The shared-store behaviours (exact across processes, Redis down or hung) run against a real
redis-server in test_ratelimit_store.py and tests/integration/test_rate_limits.py.
"""

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from server.ops.metrics import Metrics
from server.ops.ratelimit import RateLimiter, parse_limit, redact, worker_share
from server.settings import Settings


def limiter(**settings) -> RateLimiter:
    return RateLimiter(Settings(**settings), Metrics(), auth_enabled=False)


def request(peer: str, forwarded: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return Request({"type": "http", "client": (peer, 40000), "headers": headers})


def test_rate_limiting_is_off_by_default():
    rl = limiter()
    assert Settings().rate_limit == "" and not rl.enabled
    assert Settings().rate_limit_storage == "memory://"
    assert rl.describe().startswith("rate limiting off")


@pytest.mark.parametrize("spec", ["300/minute", "300 per minute", "300/Minute", " 300 / minute "])
def test_every_spelling_limits_accepts_splits_into_the_same_worker_share(spec):
    # "300 per minute" used to become "75/" (split by hand), which no worker could parse
    s = Settings(rate_limit=spec, workers=4)
    assert parse_limit(s.per_worker().rate_limit).amount == 300, "per_worker leaves the spec alone"
    rl = RateLimiter(s.per_worker(), Metrics())
    assert (rl.item.amount, rl.item.get_expiry()) == (75, 60)
    assert "75/minute each" in rl.describe() and "split over 4 workers" in rl.describe()


def test_worker_share_rounds_up_and_keeps_the_period():
    assert str(worker_share(parse_limit("10/2 minutes"), 3)) == "4 per 2 minute"
    assert worker_share(parse_limit("1/minute"), 4).amount == 1
    assert worker_share(parse_limit("5/second"), 1).amount == 5


def test_a_shared_store_is_never_split_but_its_fallback_is():
    rl = limiter(rate_limit="300/minute", workers=4, rate_limit_storage="redis://127.0.0.1:1/0")
    assert rl.shared and rl.item.amount == 300 and rl.local_item.amount == 75
    text = rl.describe()
    assert "shared store redis://127.0.0.1:1/0" in text and "exact across workers and replicas" in text


@pytest.mark.parametrize("spec, message", [
    ("300", "not a rate limit"), ("lots/minute", "not a rate limit"), ("0/minute", "admits nothing"),
    ("10/second;100/minute", "one rate limit only"),
])
def test_bad_rate_limits_are_refused_with_the_accepted_forms(spec, message):
    with pytest.raises(ValidationError) as err:
        Settings(rate_limit=spec)
    assert message in str(err.value) and "N/minute" in str(err.value)


@pytest.mark.parametrize("uri", ["memcached://127.0.0.1:11211", "redis", "http://x"])
def test_unsupported_stores_are_refused(uri):
    with pytest.raises(ValidationError, match="unsupported rate-limit storage"):
        Settings(rate_limit_storage=uri)


@pytest.mark.parametrize("uri", ["redis://h:6379/0", "rediss://h:6380/1", "redis+sentinel://h:26379/mymaster",
                                 "redis+cluster://h1:7000,h2:7000", "async+redis://h:6379"])
def test_redis_uris_are_accepted(uri):
    assert Settings(rate_limit_storage=uri).rate_limit_storage == uri
    limiter(rate_limit="5/second", rate_limit_storage=uri)  # builds without connecting


def test_passwords_never_reach_the_log():
    assert redact("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("rediss://user:s3cret@redis:6380") == "rediss://user:***@redis:6380"
    rl = limiter(rate_limit="5/second", rate_limit_storage="redis://:s3cret@redis:6379/0")
    assert "s3cret" not in rl.describe()


def test_bad_trusted_proxy_is_refused():
    with pytest.raises(ValidationError, match="not an IP network"):
        Settings(trusted_proxies="10.0.0.0/33")


def test_client_ip_believes_forwarded_for_only_from_trusted_proxies(caplog):
    rl = limiter(rate_limit="5/second", trusted_proxies="10.0.0.0/8")
    # through the ingress (trusted): the rightmost address it did not vouch for
    assert rl.client_ip(request("10.1.2.3", "198.51.100.9, 203.0.113.7")) == "203.0.113.7"
    assert rl.client_ip(request("10.1.2.3", "203.0.113.7, 10.4.4.4")) == "203.0.113.7"
    # a direct caller: its own address, whatever header it sends (no fresh budget by spoofing)
    with caplog.at_level("WARNING", logger="server"):
        assert rl.client_ip(request("192.0.2.50", "203.0.113.7")) == "192.0.2.50"
        assert rl.client_ip(request("192.0.2.50", "203.0.113.8")) == "192.0.2.50"
    warnings = [r.getMessage() for r in caplog.records if "not in trusted_proxies" in r.getMessage()]
    assert len(warnings) == 1, "said once a minute, not per request"
    assert "192.0.2.50" in warnings[0] and "RERANKER_TRUSTED_PROXIES" in warnings[0]


def test_start_up_line_says_how_clients_are_keyed():
    assert "per client IP (the TCP peer; X-Forwarded-For ignored" in limiter(rate_limit="5/second").describe()
    assert "believed from 10.0.0.0/8" in limiter(rate_limit="5/second", trusted_proxies="10.0.0.0/8").describe()
    keyed = RateLimiter(Settings(rate_limit="5/second"), Metrics(), auth_enabled=True)
    assert "5/second per API key" in keyed.describe()
