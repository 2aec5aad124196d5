"""Engine death and graceful drain, on a launcher of its own (these tests end their service)."""

import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import eventually, start_launcher, wait_until_ready

pytestmark = [pytest.mark.engine, pytest.mark.restart]

BODY = {"query": "capital of France", "docs": [f"Paris fact number {i}." for i in range(12)]}


@pytest.fixture(scope="module")
def own():
    svc = start_launcher("lifecycle", "--drain-delay", "2", "--drain-timeout", "30",
                         "--vllm-restart-backoff", "1", "--vllm-shutdown-timeout", "10",
                         wait_ready=False)  # the first test watches it load
    yield svc
    svc.stop(signal.SIGKILL)


def vllm_process(svc) -> psutil.Process:
    port = svc.vllm_url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmd and port in cmd:
            return proc
    raise AssertionError("vLLM process not found")


def test_while_the_model_loads_clients_get_503_with_retry_after_not_refused(own):
    """The shim starts alongside vLLM: during the (long) model load it is alive, not ready, and
    tells clients to come back, instead of refusing connections."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            live = httpx.get(own.url + "/livez", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert live.status_code == 200
    ready = httpx.get(own.url + "/ready")
    assert ready.status_code == 503 and ready.json()["reason"] == "engine not ready"
    r = httpx.post(own.url + "/v1/rank", json=BODY, timeout=30)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and r.json()["detail"]
    wait_until_ready(own, budget=600)
    assert httpx.post(own.url + "/v1/rank", json=BODY, timeout=60).status_code == 200


def test_killed_engine_gives_503_at_once_then_recovers_without_a_human(own):
    wait_until_ready(own, budget=600)
    vllm_process(own).send_signal(signal.SIGKILL)
    started = time.monotonic()
    r = httpx.post(own.url + "/v1/rank", json=BODY, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["detail"]
    assert time.monotonic() - started < 1.0
    time.sleep(1.5)  # the health watcher notices within a second
    assert httpx.get(own.url + "/health").status_code == 503
    assert httpx.get(own.url + "/ready").status_code == 503
    assert httpx.get(own.url + "/livez").status_code == 200  # liveness does not restart the pod
    wait_until_ready(own, budget=600)
    assert httpx.post(own.url + "/v1/rank", json=BODY, timeout=60).status_code == 200
    assert "restarting vLLM" in own.log()


def test_sigterm_under_load_loses_no_accepted_request(own):
    wait_until_ready(own, budget=600)
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            sent = time.monotonic()
            try:  # a fresh connection per request: "accepted" = the server took the connection
                r = httpx.post(own.url + "/v1/rank", json=BODY, timeout=60)
                outcomes.append((sent, str(r.status_code)))
            except httpx.ConnectError:
                outcomes.append((sent, "refused"))
                time.sleep(0.05)
            except httpx.HTTPError as exc:
                outcomes.append((sent, type(exc).__name__))

    # daemon threads and a finally: a failed assert must not leave clients looping forever
    threads = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        term_at = time.monotonic()
        own.proc.send_signal(signal.SIGTERM)
        # readiness fails first, while requests are served
        assert eventually(lambda: httpx.get(own.url + "/ready", timeout=5).status_code == 503, timeout=1.0)
        assert own.proc.wait(120) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(90)

    kinds = {kind for _, kind in outcomes}
    assert kinds <= {"200", "refused"}, [o for o in outcomes if o[1] not in ("200", "refused")]
    served_after_term = [o for o in outcomes if o[0] > term_at and o[1] == "200"]
    assert len([o for o in outcomes if o[1] == "200"]) > 20
    assert served_after_term  # the drain window kept serving while load balancers caught up
    log = own.log()
    assert log.index("stopping shim") < log.index("stopping vLLM")
