"""SIGTERM under pooled keep-alive load: nothing the shim accepted is lost.

Each round starts a shim (score cache on, one repeated body: cache hits, the highest request rate
this box reaches), loads it from 16 threads with one reused `httpx.Client` each, sends SIGTERM and
keeps the load on until the process has exited. What "accepted" and "lost" mean: tests/pooled_load.py.
Before the drain window (uvicorn closed idle keep-alive connections at shutdown while clients were
sending on them) these rounds lost requests: see the commit that added this file.
"""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest

from tests.pooled_load import PooledLoad

pytestmark = pytest.mark.engine

BODY = {"query": "capital of France", "docs": ["Paris is the capital of France.", "Bananas are yellow."]}
LOAD_BEFORE_TERM_S = 1.0  # of steady load, every client warm


@pytest.mark.parametrize("round_", range(3))
def test_sigterm_under_pooled_load_loses_no_accepted_request(extra_shim, round_):
    shim = extra_shim(score_cache="true", drain_window="2")
    assert httpx.post(shim.url + "/v1/rank", json=BODY, timeout=60).status_code == 200  # cached now
    with PooledLoad(shim.url, BODY, clients=16) as load:
        load.wait_warm()
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


def test_real_vllm_keeps_an_idle_connection_past_its_default_5_s(service):
    """The launcher raises vLLM's keep-alive (VLLM_HTTP_TIMEOUT_KEEP_ALIVE) and the vLLM build we
    ship reads it: a connection idle for longer than vLLM's default 5 s still answers."""
    host, port = service.vllm_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        for wait in (0, 6):
            time.sleep(wait)
            conn.sendall(b"GET /health HTTP/1.1\r\nhost: vllm\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), f"no answer after {wait} s idle"
