"""Two real CPU vLLM engines behind one shim (issue 16), on a launcher of its own (`--engines 2`,
the tiny model, the real Qwen tokenizer): pooled keep-alive clients' work reaches both engines; one
engine SIGKILLed under that load costs no client a request (a call in flight on it moves to the
other engine), the pod stays ready, the launcher restarts that engine alone and it gets work
again; SIGTERM drains the shim, then stops both engines. The rules themselves, with fakes that
can be held shut: tests/inprocess/test_engines.py."""

import re
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import eventually, start_launcher
from tests.pooled_load import PooledLoad

pytestmark = [pytest.mark.engine, pytest.mark.restart, pytest.mark.launcher]

BODY = {"query": "capital of France", "docs": [f"Paris fact number {i}." for i in range(12)]}
CLIENTS = 4


@pytest.fixture(scope="module")
def pair():
    svc = start_launcher("multi-engine", "--vllm-restart-backoff", "1", "--vllm-shutdown-timeout", "10",
                         engines=2)
    # the pod is ready once one engine is; the tests need both (on a busy host the second engine
    # can finish loading well after the first)
    assert eventually(lambda: _both_verified(svc), timeout=300, interval=0.5), svc.log()[-3000:]
    yield svc
    svc.stop(signal.SIGKILL)


def vllm_process(url: str) -> psutil.Process:
    port = url.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmd and port in cmd:
            return proc
    raise AssertionError(f"no vLLM on port {port}")


def engines(svc) -> dict[str, dict]:
    return {e["engine"]: e for e in httpx.get(svc.url + "/ready", timeout=5).json()["engines"]}


def _both_verified(svc) -> bool:
    found = engines(svc)
    return len(found) == 2 and all(e["up"] and e["verified"] for e in found.values())


def shim_calls(svc) -> dict[str, float]:
    """Calls the shim sent to each engine (reranker_engine_instance_calls_total)."""
    text = httpx.get(svc.url + "/metrics", timeout=5).text
    return {m[0]: float(m[1]) for m in
            re.findall(r'^reranker_engine_instance_calls_total\{engine="(\d+)"\} (\S+)$', text, re.M)}


def engine_prompt_tokens(svc) -> dict[str, float]:
    """Prompt tokens each vLLM itself processed, from /metrics/engine (both engines' metrics
    merged, labelled by engine)."""
    text = httpx.get(svc.url + "/metrics/engine", timeout=10).text
    found: dict[str, float] = {}
    for labels, value in re.findall(r"^vllm:prompt_tokens_total\{([^}]*)\} (\S+)$", text, re.M):
        engine = re.search(r'engine="([^"]+)"', labels).group(1)
        found[engine] = found.get(engine, 0.0) + float(value)
    return found


def test_pooled_clients_work_reaches_both_engines(pair):
    before = shim_calls(pair)
    with PooledLoad(pair.url, BODY, clients=CLIENTS) as load:
        load.wait_warm()
        # until each engine has had calls of this load (at most the 3 s this used to wait)
        eventually(lambda: all(shim_calls(pair).get(e, 0) > before.get(e, 0) for e in ("0", "1")), timeout=3)
        outcomes = load.stop()
    print(f"two engines, {CLIENTS} pooled clients: {outcomes.summary()}")
    assert not outcomes.lost, outcomes.lost[:5]
    after = shim_calls(pair)
    sent = {e: after[e] - before.get(e, 0) for e in ("0", "1")}
    assert sent["0"] > 0 and sent["1"] > 0, sent
    tokens = engine_prompt_tokens(pair)  # what the engines say they did, not what the shim sent
    assert tokens.get("0", 0) > 0 and tokens.get("1", 0) > 0, tokens


def test_both_engines_give_identical_scores_for_the_same_prompts(pair):
    """Whichever engine a call lands on, a pair gets the same score: the same official prompts
    (token ids, as the shim sends them) posted to each engine's /classify, bit for bit."""
    from tokenizers import Tokenizer

    from server.scoring.prompt import render
    from server.settings import DEFAULT_INSTRUCTION
    from tests.conftest import MODEL_DIR, MODEL_NAME

    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    docs = [*BODY["docs"][:4], "The Eiffel Tower is in Paris.", "如何申请差旅报销", "x " * 300]
    prompts = [tok.encode(render(BODY["query"], d, DEFAULT_INSTRUCTION), add_special_tokens=False).ids
               for d in docs]
    scores = []
    for url in pair.vllm_urls:
        body = {"model": MODEL_NAME, "input": prompts, "use_activation": False}
        data = httpx.post(url + "/classify", json=body, timeout=60).json()["data"]
        scores.append([d["probs"][0] for d in sorted(data, key=lambda d: d["index"])])
    assert len(set(map(tuple, scores))) == 1, scores
    assert len(set(scores[0])) > 1  # the documents really differ in score


def test_sigkill_of_one_engine_loses_no_request_and_the_engine_comes_back(pair):
    assert all(e["up"] and e["verified"] for e in engines(pair).values())
    failovers_before = _failovers(pair)
    with PooledLoad(pair.url, BODY, clients=CLIENTS) as load:
        load.wait_warm()
        time.sleep(1)
        load.mark()
        vllm_process(pair.vllm_urls[1]).kill()
        # the pod keeps serving: ready (the other engine is verified), engine 1 seen down
        assert eventually(lambda: not engines(pair)["1"]["up"], timeout=5)
        assert httpx.get(pair.url + "/ready", timeout=5).status_code == 200
        time.sleep(2)
        outcomes = load.stop()
    print(f"engine 1 SIGKILLed under load: {outcomes.summary()}, "
          f"{_failovers(pair) - failovers_before:.0f} calls moved to engine 0")
    assert not outcomes.lost, outcomes.lost[:5]  # no client saw an error
    assert outcomes.ok_after_mark > 0
    # the launcher restarts engine 1 alone (engine 0 keeps its process) ...
    engine0 = vllm_process(pair.vllm_urls[0]).pid
    started = time.monotonic()
    assert eventually(lambda: all(e["up"] and e["verified"] for e in engines(pair).values()),
                      timeout=300, interval=0.5), engines(pair)
    print(f"engine 1 back (restarted, canary passed) {time.monotonic() - started:.0f} s after the kill was seen")
    assert vllm_process(pair.vllm_urls[0]).pid == engine0
    assert re.search(r'restarting vLLM.*"engine": "1"', pair.log())
    # ... and it gets work again
    before = shim_calls(pair)
    with PooledLoad(pair.url, BODY, clients=CLIENTS) as load:
        load.wait_warm()
        time.sleep(2)
        outcomes = load.stop()
    assert not outcomes.lost, outcomes.lost[:5]
    assert shim_calls(pair)["1"] > before["1"]


def test_sigterm_drains_the_shim_then_stops_both_engines(pair):
    procs = [vllm_process(url) for url in pair.vllm_urls]
    pair.proc.send_signal(signal.SIGTERM)
    assert pair.proc.wait(120) == 0
    log = pair.log()
    shim_stop = log.index("stopping shim")
    assert all(m.start() > shim_stop for m in re.finditer("stopping vLLM", log))
    assert len(re.findall("stopping vLLM", log[shim_stop:])) == 2
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)


def _failovers(svc) -> float:
    text = httpx.get(svc.url + "/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^reranker_engine_failovers_total\{[^}]*\} (\S+)$", text, re.M))
