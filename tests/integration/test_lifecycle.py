"""Engine death and graceful drain, on a launcher of its own (these tests end their service)."""

import json
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import eventually, start_launcher, wait_until_ready
from tests.pooled_load import PooledLoad

pytestmark = [pytest.mark.engine, pytest.mark.restart, pytest.mark.launcher]

BODY = {"query": "capital of France", "docs": [f"Paris fact number {i}." for i in range(12)]}


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    # a cache directory of its own, empty: the first start is a cold one, the restart after a
    # kill a warm one (test_a_restart_skips_the_cold_phase_and_both_timelines_are_printed)
    cache = tmp_path_factory.mktemp("lifecycle-cache")
    svc = start_launcher("lifecycle", "--drain-timeout", "30", "--cache-dir", str(cache),
                         "--vllm-restart-backoff", "1", "--vllm-shutdown-timeout", "10",
                         wait_ready=False)  # the first test watches it load
    yield svc
    svc.stop(signal.SIGKILL)


def timelines(svc) -> list[dict]:
    """The launcher's `startup timeline` lines: the first start, then each restart."""
    out = []
    for line in svc.log().splitlines():
        if line.startswith("{") and '"startup timeline"' in line:
            out.append(json.loads(line))
    return out


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
    # the health watcher notices within a second
    assert eventually(lambda: httpx.get(own.url + "/health").status_code == 503, timeout=1.5)
    assert httpx.get(own.url + "/ready").status_code == 503
    assert httpx.get(own.url + "/livez").status_code == 200  # liveness does not restart the pod
    wait_until_ready(own, budget=600)
    assert httpx.post(own.url + "/v1/rank", json=BODY, timeout=60).status_code == 200
    assert "restarting vLLM" in own.log()


def test_a_restart_skips_the_cold_phase_and_both_timelines_are_printed(own):
    """The restart above found the caches the first start wrote: vLLM's model-info inspection (a
    subprocess that imports vLLM again when its cache misses) is gone from it. Both timelines
    are printed phase by phase. The totals are printed, not compared: on a shared 2-core host the
    import and engine-core phases swing by tens of seconds with other load."""
    assert eventually(lambda: len(timelines(own)) >= 2, timeout=30)
    cold, warm = timelines(own)[:2]
    print(f"cold start {cold['seconds']:.1f} s: {cold['durations']}")
    print(f"restart    {warm['seconds']:.1f} s: {warm['durations']}")
    assert cold["durations"]["model_info"] > 3.0, cold  # the inspection ran: a cold start
    assert warm["durations"].get("model_info", 0) < 1.0, warm  # answered from the cache


def test_sigterm_under_pooled_load_loses_no_accepted_request(own):
    """SIGTERM to the launcher (the pod's main process) while 16 pooled keep-alive clients score
    through the real engine: readiness fails at once, the drain window answers them (with
    Connection: close), in-flight engine calls finish, and only then does vLLM stop. Accepted and
    lost are defined in tests/pooled_load.py. Default drain window."""
    wait_until_ready(own, budget=600)
    with PooledLoad(own.url, BODY, clients=16) as load:
        load.wait_warm()
        time.sleep(2)
        load.mark()
        own.proc.send_signal(signal.SIGTERM)
        # readiness fails first, while requests are served
        assert eventually(lambda: httpx.get(own.url + "/ready", timeout=5).status_code == 503, timeout=1.0)
        assert own.proc.wait(120) == 0
        outcomes = load.stop()
    print(f"launcher SIGTERM: {outcomes.summary()}")
    assert not outcomes.lost, (outcomes.summary(), outcomes.lost[:5])
    assert outcomes.ok > 50, outcomes.summary()
    assert outcomes.ok_after_mark >= 16, outcomes.summary()  # the window kept serving
    log = own.log()
    assert log.index("stopping shim") < log.index("stopping vLLM")
