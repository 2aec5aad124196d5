"""SIGTERM under pooled keep-alive load: nothing the shim accepted is lost.

Each round starts a shim (score cache on, one repeated body: cache hits, the highest request rate
this box reaches), loads it from 16 threads with one reused `httpx.Client` each, sends SIGTERM and
keeps the load on until the process has exited. What "accepted" and "lost" mean: tests/pooled_load.py.
Before the drain window (uvicorn closed idle keep-alive connections at shutdown while clients were
sending on them) these rounds lost requests: see the commit that added this file.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.pooled_load import PooledLoad

pytestmark = pytest.mark.engine

BODY = {"query": "capital of France", "docs": ["Paris is the capital of France.", "Bananas are yellow."]}
LOAD_BEFORE_TERM_S = 1.5


@pytest.mark.parametrize("round_", range(3))
def test_sigterm_under_pooled_load_loses_no_accepted_request(extra_shim, round_):
    shim = extra_shim(score_cache="true", drain_window="2")
    assert httpx.post(shim.url + "/v1/rank", json=BODY, timeout=60).status_code == 200  # cached now
    with PooledLoad(shim.url, BODY, clients=16) as load:
        time.sleep(LOAD_BEFORE_TERM_S)
        load.mark()
        shim.proc.send_signal(signal.SIGTERM)
        assert shim.proc.wait(60) == 0
        outcomes = load.stop()
    print(f"round {round_}: {outcomes.summary()}")
    assert outcomes.ok > 200, outcomes.summary()  # real load, not a trickle
    assert not outcomes.lost, (outcomes.summary(), outcomes.lost[:5])
    # the drain window kept answering the pooled clients after SIGTERM
    assert outcomes.ok_after_mark >= 16, outcomes.summary()
