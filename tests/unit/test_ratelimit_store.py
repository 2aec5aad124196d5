"""The shared store against a real redis-server: a hung Redis costs a request at most the store
timeout, then the limiter fails open to per-process limits and comes back when Redis does."""

import asyncio
import time

import pytest

from server.errors import ApiError
from server.ops import ratelimit
from server.ops.metrics import Metrics
from server.settings import Settings
from tests.redisd import RedisServer


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.kill()


async def admitted(rl, key: str, n: int) -> list[bool]:
    out = []
    for _ in range(n):
        try:
            await rl.check(None, key)
            out.append(True)
        except ApiError as err:
            assert err.status == 429 and int(err.headers["Retry-After"]) >= 1
            out.append(False)
    return out


def test_two_processes_share_one_budget_and_a_hung_store_fails_open_fast(redis_server, monkeypatch, caplog):
    monkeypatch.setattr(ratelimit, "_STORE_RETRY_S", 0.5)
    settings = Settings(rate_limit="6/minute", rate_limit_storage=redis_server.uri,
                        rate_limit_storage_timeout=0.1)

    async def scenario():
        a, b = one_process(settings), one_process(settings)
        both = [x for pair in zip(await admitted(a, "key:k1", 5), await admitted(b, "key:k1", 5)) for x in pair]
        assert sum(both) == 6, "one budget for both limiters, not 6 each"

        redis_server.freeze()
        started = time.monotonic()
        assert await admitted(a, "key:k2", 1) == [True]  # served, from a's own counters
        took = time.monotonic() - started
        assert took < 0.5, f"a hung store cost the request {took:.2f} s"
        # inside the retry pause the store is not even tried: no timeout to pay
        started = time.monotonic()
        assert await admitted(a, "key:k2", 9) == [True] * 5 + [False] * 4  # still limited, per process
        assert time.monotonic() - started < 0.1
        assert a.metrics.ratelimit_store_errors._value.get() == 1

        redis_server.thaw()
        await asyncio.sleep(0.6)
        assert await admitted(a, "key:k3", 7) == [True] * 6 + [False]
        assert await admitted(b, "key:k3", 1) == [False], "shared again once Redis answers"

    with caplog.at_level("WARNING", logger="server"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed (TimeoutError" in m or "failed (StorageError" in m for m in messages) == 1, messages
    assert any("answers again" in m for m in messages)


def one_process(settings):  # one "process" of the shim, as create_app builds it
    return ratelimit.RateLimiter(settings, Metrics(), auth_enabled=True)
