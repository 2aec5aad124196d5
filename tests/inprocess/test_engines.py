"""Several engines behind one shim (server/scoring/engines.py; issue 16), with fake engines: they
can be held shut, killed mid-call and revived on demand, which real engines can't. The same with
two real CPU vLLMs: tests/integration/test_multi_engine.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.app import watch_engine_once
from server.ops.metrics import Metrics
from server.scoring.engines import EngineSet
from server.state import app_state
from tests.inprocess.conftest import FakeEngine, running

pytestmark = pytest.mark.anyio

Q = "capital of France"
BULK = {"X-Priority": "bulk"}
SMALL = {"query": Q, "docs": ["Paris is the capital.", "Bananas.", "Lyon."]}


def big(n_docs: int, words: int) -> dict:
    return {"query": Q, "docs": [f"document {i} " + "text " * words for i in range(n_docs)]}


def scores(response) -> dict[str, float]:
    return {r["doc"]: r["score"] for r in response.json()["results"]}


async def until(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


def sample(app, name: str, engine: str) -> float:
    return app_state(app).metrics.registry.get_sample_value(name, {"engine": engine})


async def test_concurrent_requests_spread_over_both_engines_and_keep_their_scores(anyio_backend):
    bodies = [{"query": f"{Q} {i}", "docs": SMALL["docs"]} for i in range(40)]
    async with running(FakeEngine(delay=0.01)) as (app, client, one):
        alone = [scores(r) for r in await asyncio.gather(*(client.post("/v1/rank", json=b) for b in bodies))]
    a, b = FakeEngine(delay=0.01), FakeEngine(delay=0.01)
    async with running([a, b], batch_max_prompts=6) as (app, client, _):  # 2 requests a call
        together = await asyncio.gather(*(client.post("/v1/rank", json=body) for body in bodies))
        assert [r.status_code for r in together] == [200] * 40
        assert [scores(r) for r in together] == alone  # each request got its own scores back
        assert a.calls and b.calls, (len(a.calls), len(b.calls))
        for i, fake in enumerate((a, b)):
            # the metric counts what each engine got (+1: its start-up canary)
            assert sample(app, "reranker_engine_instance_calls_total", str(i)) == len(fake.calls) + 1


async def test_a_call_goes_to_the_engine_with_the_fewest_outstanding_tokens(anyio_backend):
    a, b = FakeEngine(), FakeEngine()
    async with running([a, b], engine_max_calls=8) as (app, client, _):  # room for 6 held calls
        a.gate, b.gate = asyncio.Event(), asyncio.Event()
        large = asyncio.create_task(client.post("/v1/rank", json=big(4, 300), headers=BULK))
        await until(lambda: a.calls or b.calls)
        loaded, other = (a, b) if a.calls else (b, a)
        smalls = []
        for i in range(5):  # each waits in `other` too, so its outstanding tokens grow: still fewer
            smalls.append(asyncio.create_task(
                client.post("/v1/rank", json={"query": f"{Q} {i}", "docs": SMALL["docs"]})))
            await until(lambda n=i + 1: len(other.calls) == n)
        assert len(loaded.calls) == 1
        engines = {e["engine"]: e for e in (await client.get("/ready")).json()["engines"]}
        assert engines["0"]["outstanding_tokens"] > 0 and engines["1"]["outstanding_tokens"] > 0
        a.gate.set()
        b.gate.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(large, *smalls))


def test_ties_go_to_the_engine_with_fewer_calls_in_flight():
    class Client:
        healthy, model_name = True, "m"

    engines = EngineSet([Client(), Client(), Client()], Metrics())
    first, second, third = engines.members
    for engine in engines.members:
        engine.verified = True
    first.acquire(100)
    second.acquire(60)
    second.acquire(40)   # the same 100 tokens as `first`, in two calls
    third.acquire(100)
    third.release(100)
    third.acquire(300)   # more tokens: last whatever its calls
    assert engines.choose() is first
    first.acquire(0)     # now two calls as well: of the tied ones, the one chosen longest ago
    assert engines.choose() is second
    first.release(0)
    first.acquire(1)
    assert engines.choose() is second


def test_idle_engines_take_turns_so_a_lightly_loaded_worker_uses_them_all():
    """Each shim worker counts only its own calls, so under light load it sees every engine idle
    at every choice: the engine chosen longest ago goes first, or engine 0 would get nearly all
    the work (four engines on one GPU: two of them idle)."""
    class Client:
        healthy, model_name = True, "m"

    engines = EngineSet([Client() for _ in range(4)], Metrics())
    for engine in engines.members:
        engine.verified = True
    picks = []
    for _ in range(40):  # one call at a time: each returns before the next is chosen
        engine = engines.choose()
        engine.acquire(30)
        picks.append(engine.name)
        engine.release(30)
    assert {name: picks.count(name) for name in "0123"} == {"0": 10, "1": 10, "2": 10, "3": 10}


async def test_fake_engine_killed_mid_call_its_call_moves_and_clients_see_no_error(anyio_backend):
    a, b = FakeEngine(), FakeEngine()
    async with running([a, b]) as (app, client, _):
        a.gate = asyncio.Event()
        held = asyncio.create_task(client.post("/v1/rank", json=SMALL))
        await until(lambda: a.calls)  # ties go to the first engine
        a.kill()
        a.gate.set()  # the call in flight on the dead engine now fails: it is sent to b
        r = await held
        assert r.status_code == 200, r.text
        assert b.calls and sample(app, "reranker_engine_failovers_total", "0") == 1
        n = len(a.calls)
        after = await asyncio.gather(*(client.post("/v1/rank", json={"query": f"{Q} {i}", "docs": SMALL["docs"]})
                                       for i in range(20)))
        assert [x.status_code for x in after] == [200] * 20
        assert len(a.calls) == n  # marked down: skipped, no more calls wasted on it
        await watch_engine_once(app)
        ready = await client.get("/ready")
        assert ready.status_code == 200  # one engine is enough to serve
        engines = {e["engine"]: e for e in ready.json()["engines"]}
        assert (engines["0"]["up"], engines["0"]["verified"]) == (False, False)
        assert (engines["1"]["up"], engines["1"]["verified"]) == (True, True)
        text = (await client.get("/metrics")).text
        assert 'reranker_engine_instance_up{engine="0"} 0.0' in text
        assert 'reranker_engine_instance_up{engine="1"} 1.0' in text
        assert "reranker_engine_up 1.0" in text  # the pod's engine is up


async def test_a_killed_fake_engine_gets_work_again_once_its_health_and_canary_pass(anyio_backend):
    a, b = FakeEngine(delay=0.005), FakeEngine(delay=0.005)
    async with running([a, b], engine_max_calls=1) as (app, client, _):
        a.kill()
        await watch_engine_once(app)
        body = [{"query": f"{Q} {i}", "docs": SMALL["docs"]} for i in range(16)]
        assert all(r.status_code == 200 for r in await asyncio.gather(*(client.post("/v1/rank", json=x) for x in body)))
        assert not a.calls
        a.revive()
        await watch_engine_once(app)  # /health answers: the canary runs on a alone
        assert a.calls and all(len(call) == 2 for call in a.calls)  # the canary's two documents
        a.calls.clear()
        ready = (await client.get("/ready")).json()
        assert all(e["up"] and e["verified"] for e in ready["engines"])
        assert all(r.status_code == 200 for r in await asyncio.gather(*(client.post("/v1/rank", json=x) for x in body)))
        assert a.calls and b.calls  # back in the rotation


async def test_all_fake_engines_killed_gives_503_with_retry_after_at_once(anyio_backend):
    a, b = FakeEngine(), FakeEngine()
    async with running([a, b]) as (app, client, _):
        a.kill()
        b.kill()
        started = time.monotonic()
        r = await client.post("/v1/rank", json=SMALL)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert time.monotonic() - started < 1.0
        await watch_engine_once(app)
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "engine not ready"


async def test_an_engine_that_fails_its_canary_takes_no_traffic_while_another_passed(anyio_backend):
    broken, good = FakeEngine(), FakeEngine()
    broken.constant = 0.5  # loaded, answers /health, scores everything the same (vLLM #27857)
    async with running([broken, good]) as (app, client, _):
        assert (await client.get("/ready")).status_code == 200
        rs = await asyncio.gather(*(client.post("/v1/rank", json={"query": f"{Q} {i}", "docs": SMALL["docs"]})
                                    for i in range(10)))
        assert all(r.status_code == 200 for r in rs)
        assert not broken.calls and good.calls
        assert len({r.json()["results"][0]["score"] for r in rs}) > 1  # real scores, not 0.5
        text = (await client.get("/metrics")).text
        assert 'reranker_engine_instance_verified{engine="0"} 0.0' in text
        assert 'reranker_engine_instance_verified{engine="1"} 1.0' in text


async def test_the_bulk_token_budget_is_per_engine(anyio_backend):
    a, b = FakeEngine(), FakeEngine()
    async with running([a, b], engine_token_budget=1000, interactive_max_tokens=500,
                       batch_max_tokens=1200, interactive_memory_s=30) as (app, client, _):
        await client.post("/v1/rank", json=SMALL)  # interactive work seen: the tight budget holds
        a.gate, b.gate = asyncio.Event(), asyncio.Event()
        bulk = [asyncio.create_task(client.post("/v1/rank", json=big(3, 80), headers=BULK))
                for _ in range(8)]
        await until(lambda: app_state(app).scorer.admission.pairs == 24)
        await asyncio.sleep(0.05)
        held = [e.outstanding for e in app_state(app).engine.members]
        assert all(0 < t <= 1000 for t in held), held  # each engine within its own budget
        assert sum(held) > 1000, held                   # together more than one engine's
        assert app_state(app).metrics.queue_depth.labels("bulk")._value.get() > 0  # the rest waits
        a.gate.set()
        b.gate.set()
        assert all(r.status_code == 200 for r in await asyncio.gather(*bulk))


async def test_engine_metrics_of_both_engines_merge_with_an_engine_label(anyio_backend):
    a, b = FakeEngine(), FakeEngine()
    async with running([a, b]) as (app, client, _):
        await asyncio.gather(*(client.post("/v1/rank", json={"query": f"{Q} {i}", "docs": SMALL["docs"]})
                               for i in range(10)))
        text = (await client.get("/metrics/engine")).text
        assert text.count("# TYPE vllm:num_requests_running gauge") == 1
        for i, fake in enumerate((a, b)):
            assert f'vllm:request_success_total{{engine="{i}",model_name="{fake.model_name}"}} ' \
                   f"{float(fake.answered)}" in text
        b.kill()
        text = (await client.get("/metrics/engine")).text  # the live engine's metrics still come
        assert 'engine="0"' in text and 'engine="1"' not in text


async def test_ready_and_health_bodies_with_two_engines_are_the_documented_ones(anyio_backend):
    from server.ops.health import Health, NotReady, Ready

    a, b = FakeEngine(), FakeEngine()
    async with running([a, b]) as (app, client, _):
        Ready.model_validate((await client.get("/ready")).json())
        Health.model_validate((await client.get("/health")).json())
        a.kill()
        b.kill()
        await watch_engine_once(app)
        r = await client.get("/ready")
        assert r.status_code == 503
        body = NotReady.model_validate(r.json())
        assert [(e.engine, e.up) for e in body.engines] == [("0", False), ("1", False)]


async def test_four_engines_on_one_gpu_saturate_as_that_one_gpu():
    """The autoscaling signal (reranker_engine_saturation) is in-flight tokens over the pod's
    capacity: four engines sharing one GPU have one GPU's capacity, not four, so the HPA scales
    the pod out as early as with one engine on it. Two engines on two GPUs have two."""
    async with running([FakeEngine() for _ in range(4)], engines=4, engines_per_gpu=4,
                       saturation_capacity_tokens=75_000) as (app, _, _):
        assert app_state(app).started.admission.capacity_tokens == 75_000
    async with running([FakeEngine() for _ in range(2)], saturation_capacity_tokens=75_000) as (app, _, _):
        assert app_state(app).started.admission.capacity_tokens == 150_000
