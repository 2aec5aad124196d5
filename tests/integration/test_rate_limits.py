"""Rate limits under traffic shaped like users': the seed's own load test against DEFAULT settings,
and a limit shared by two shim processes through a real redis-server, including Redis dying.

Real parts: the shared vLLM (CPU build), shim processes, /usr/bin/hey (Debian `hey`),
/usr/bin/redis-server (Debian `redis-server`).
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import shutil
import subprocess
import time

import httpx
import pytest

from tests.conftest import eventually, start_shim
from tests.redisd import RedisServer

pytestmark = pytest.mark.engine

SEED_BODY = '{"query":"如何申请差旅报销","docs":["员工手册第3章","财务系统操作指南","OA审批流程说明"]}'
LIMIT = 20
STORE_RETRY_S = 2.0  # server/ops/ratelimit.py _STORE_RETRY_S


def test_seed_hey_load_test_against_default_settings_is_all_200(extra_shim):
    """The seed document's command, verbatim, against a shim left at its defaults."""
    hey = shutil.which("hey") or "/usr/bin/hey"
    shim = extra_shim(defaults=True)
    out = subprocess.run([hey, "-n", "5000", "-c", "50", "-m", "POST", "-H", "content-type: application/json",
                          "-d", SEED_BODY, f"{shim.url}/v1/rank"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    codes = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out.stdout)}
    assert codes == {200: 5000}, out.stdout[-2000:]
    assert "Error distribution" not in out.stdout, out.stdout[-2000:]
    assert "rate limiting off" in shim.log()


# --- a limit shared by two shim processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def shared_pair(service, redis_server):
    """Two shims (think: two replicas) with one limit in one Redis; they trust 127.0.0.1 as their
    proxy, so each test speaks for a client address of its own through X-Forwarded-For."""
    settings = dict(rate_limit=f"{LIMIT}/minute", rate_limit_storage=redis_server.uri,
                    trusted_proxies="127.0.0.1/32")
    shims = [start_shim(service.vllm_url, **settings) for _ in range(2)]
    yield shims
    for shim in shims:
        shim.stop(timeout=30)


def alternate(shims, client_ip: str, n: int, client: httpx.Client) -> list[httpx.Response]:
    body = {"query": "capital of France", "docs": ["Paris is the capital of France.", "Bananas."]}
    return [client.post(shims[i % 2].url + "/v1/rank", json=body, timeout=60,
                        headers={"X-Forwarded-For": client_ip}) for i in range(n)]


def assert_limited(responses: list[httpx.Response], admitted: int) -> None:
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes  # never a 5xx, whatever the store does
    assert codes.count(200) == admitted, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["detail"].startswith(f"rate limit exceeded: {LIMIT}/minute per client")
        else:
            assert len(r.json()["results"]) == 2


def test_one_limit_holds_exactly_across_two_shims(shared_pair, redis_server):
    with httpx.Client() as client:  # one pooled keep-alive client, alternating between the shims
        assert_limited(alternate(shared_pair, "203.0.113.1", 50, client), LIMIT)  # not 2 x LIMIT

    # and under concurrency: 8 pooled clients at once, one client address
    def burst(_):
        with httpx.Client() as client:
            return alternate(shared_pair, "203.0.113.2", 10, client)

    with cf.ThreadPoolExecutor(8) as pool:
        assert_limited([r for rs in pool.map(burst, range(8)) for r in rs], LIMIT)
    assert f"shared store {redis_server.uri}" in shared_pair[0].log()


def test_redis_killed_mid_traffic_falls_back_to_per_process_limits_then_recovers(shared_pair, redis_server):
    with httpx.Client() as client:
        assert_limited(alternate(shared_pair, "203.0.113.3", 10, client), 10)
        redis_server.kill()
        # Documented policy: fail open to per-process limits. Each shim now counts on its own,
        # so the client gets LIMIT from each; nobody gets an error because Redis is gone.
        assert_limited(alternate(shared_pair, "203.0.113.4", 50, client), 2 * LIMIT)
        for shim in shared_pair:
            metrics = client.get(shim.url + "/metrics").text
            errors = float(re.search(r"^reranker_ratelimit_store_errors_total (\S+)$", metrics, re.M).group(1))
            assert errors >= 1
            failed = [line for line in shim.log().splitlines() if "rate-limit store" in line and "failed" in line]
            assert len(failed) == 1, "warned once, not per request"
        redis_server.start()  # same port, empty (no persistence)
        time.sleep(STORE_RETRY_S + 0.2)
        assert_limited(alternate(shared_pair, "203.0.113.5", 50, client), LIMIT)
    assert all(eventually(lambda s=s: "answers again" in s.log()) for s in shared_pair)
