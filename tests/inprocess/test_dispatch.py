"""Cross-request batching and priority dispatch (server/scoring/dispatch.py), with a fake engine
that can be held shut or slowed down, which a real engine can't do on demand."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import pytest

from server.state import app_state
from tests.inprocess.conftest import POISON, FakeEngine, running

pytestmark = pytest.mark.anyio

Q = "capital of France"
BULK = {"X-Priority": "bulk"}
SMALL = {"query": Q, "docs": ["Paris is the capital.", "Bananas.", "Lyon."]}


def big(n_docs: int = 8, words: int = 300) -> dict:
    return {"query": Q, "docs": [f"document {i} " + "text " * words for i in range(n_docs)]}


def scores(response) -> dict[str, float]:
    return {r["doc"]: r["score"] for r in response.json()["results"]}


async def test_concurrent_requests_share_engine_calls_and_keep_their_scores(anyio_backend):
    async with running(FakeEngine(delay=0.01), engine_max_calls=1) as (app, client, fake):
        bodies = [{"query": f"{Q} {i}", "docs": SMALL["docs"]} for i in range(24)]
        alone = [scores(await client.post("/v1/rank", json=b)) for b in bodies[:3]]
        fake.calls.clear()
        together = await asyncio.gather(*(client.post("/v1/rank", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in together)
        assert len(fake.calls) < len(bodies) / 2  # coalesced into a few calls
        assert [scores(r) for r in together[:3]] == alone  # and each got its own scores back


async def test_uncoalesced_path_gives_the_same_scores(anyio_backend):
    async with running(batching=False) as (app, client, fake):
        plain = [scores(await client.post("/v1/rank", json=big(3, 50)))]
    async with running() as (app, client, fake):
        assert [scores(await client.post("/v1/rank", json=big(3, 50)))] == plain


async def test_interactive_work_goes_before_queued_bulk_work(anyio_backend):
    fake = FakeEngine()
    async with running(fake, engine_max_calls=1, interactive_max_tokens=1000,
                       batch_max_tokens=2000) as (app, client, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(client.post("/v1/rank", json=big(1, 10)))  # holds the slot
        while not fake.calls:
            await asyncio.sleep(0.001)
        bulk = asyncio.create_task(client.post("/v1/rank", json=big(8, 300)))
        await asyncio.sleep(0.02)
        small = asyncio.create_task(client.post("/v1/rank", json=SMALL))
        await asyncio.sleep(0.02)
        depth = app_state(app).metrics.queue_depth
        assert depth.labels("bulk")._value.get() > 0 and depth.labels("interactive")._value.get() == 3
        fake.gate.set()
        await asyncio.gather(first, bulk, small)
        sizes = [len(call) for call in fake.calls]
        assert sizes[1] == 3, sizes  # the small request was the next call, ahead of the bulk work
        assert depth.labels("bulk")._value.get() == 0


async def test_bulk_never_starves_under_a_steady_small_request_stream(anyio_backend):
    # one call slot and room for two small requests per call: eight small streams keep the
    # interactive queue from ever running empty, so only the bounded wait lets bulk through
    async with running(FakeEngine(delay=0.004), engine_max_calls=1, interactive_max_tokens=1000,
                       batch_max_prompts=6, bulk_max_wait_s=0.2) as (app, client, fake):
        stop = asyncio.Event()

        async def small_stream():
            while not stop.is_set():
                await client.post("/v1/rank", json=SMALL)

        streams = [asyncio.create_task(small_stream()) for _ in range(8)]
        await asyncio.sleep(0.1)
        started = time.monotonic()
        try:  # a starving implementation fails here in seconds instead of hanging the run
            r = await asyncio.wait_for(client.post("/v1/rank", json=big(4, 300)), 5)
        finally:
            waited = time.monotonic() - started
            stop.set()
            await asyncio.gather(*streams)
        assert r.status_code == 200
        assert waited < 1.5, waited  # bounded by bulk_max_wait_s plus a few engine calls


async def test_a_request_cancelled_while_queued_frees_its_place(anyio_backend):
    fake = FakeEngine()
    async with running(fake, engine_max_calls=1) as (app, client, fake):
        fake.gate = asyncio.Event()
        scorer = app_state(app).scorer
        holder = asyncio.create_task(client.post("/v1/rank", json=SMALL))
        while not fake.calls:
            await asyncio.sleep(0.001)
        queued = asyncio.create_task(client.post("/v1/rank", json=big(6, 100)))
        await asyncio.sleep(0.05)
        assert scorer.admission.pairs == 3 + 6
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert scorer.admission.pairs == 3  # its admission is released at once
        fake.gate.set()
        assert (await holder).status_code == 200
        await asyncio.sleep(0.05)
        assert [len(c) for c in fake.calls] == [3]  # its prompts never reached the engine
        assert app_state(app).metrics.queue_depth.labels("bulk")._value.get() == 0


async def test_one_refused_request_does_not_fail_the_others_in_its_batch(anyio_backend):
    fake = FakeEngine(delay=0.01)
    async with running(fake, engine_max_calls=1) as (app, client, fake):
        fake.poison_ids = app_state(app).scorer.encoder.encode_plain([" " + POISON])[0].ids[1:]
        bodies = [SMALL] * 6 + [{"query": Q, "docs": [POISON]}] + [SMALL] * 6
        results = await asyncio.gather(*(client.post("/v1/rank", json=b) for b in bodies))
        assert [r.status_code for r in results] == [200] * 6 + [400] + [200] * 6
        assert "rejected by the engine" in results[6].json()["detail"]


async def test_priority_header_marks_work_and_bad_values_are_refused(anyio_backend):
    fake = FakeEngine()
    async with running(fake, engine_max_calls=1) as (app, client, fake):
        r = await client.post("/v1/rank", json=SMALL, headers={"X-Priority": "bulk"})
        assert r.status_code == 200
        wait = app_state(app).metrics.queue_wait
        assert wait.labels("bulk")._sum.get() >= 0 and _count(wait, "bulk") == 1
        r = await client.post("/v1/rank", json=SMALL, headers={"X-Priority": "urgent"})
        assert r.status_code == 422 and "priority" in r.json()["detail"]


async def until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def _count(histogram, klass: str) -> float:
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count") and sample.labels.get("class") == klass:
                return sample.value
    return 0.0


async def test_identical_concurrent_requests_send_each_prompt_once(anyio_backend):
    async with running(FakeEngine(delay=0.01), engine_max_calls=1) as (app, client, fake):
        first = await client.post("/v1/rank", json=SMALL)
        fake.calls.clear()
        same = await asyncio.gather(*(client.post("/v1/rank", json=SMALL) for _ in range(20)))
        assert all(scores(r) == scores(first) for r in same)
        sent = [p for call in fake.calls for p in call]
        assert len(sent) <= 3 * len(fake.calls)  # at most the 3 distinct prompts per call
        assert len(fake.calls) < 20


async def test_bulk_budget_is_tight_only_while_interactive_work_is_around(anyio_backend):
    fake = FakeEngine()
    async with running(fake, engine_token_budget=1000, bulk_budget_factor=8,
                       interactive_max_tokens=500, batch_max_tokens=1200,
                       interactive_memory_s=30) as (app, client, fake):
        dispatcher = app_state(app).scorer.dispatcher
        dispatcher.last_interactive = float("-inf")  # forget the start-up canary
        fake.gate = asyncio.Event()
        bulk = [asyncio.create_task(client.post("/v1/rank", json=big(3, 80), headers=BULK))
                for _ in range(4)]
        await until(lambda: app_state(app).scorer.admission.pairs == 12)  # all four admitted
        await asyncio.sleep(0.05)
        wide = dispatcher.outstanding
        assert wide > 1000  # no interactive work: bulk fills the engine past the tight budget
        fake.gate.set()
        await asyncio.gather(*bulk)
        fake.gate = asyncio.Event()
        n0 = len(fake.calls)
        small = asyncio.create_task(client.post("/v1/rank", json=SMALL))
        await asyncio.sleep(0.05)
        bulk = [asyncio.create_task(client.post("/v1/rank", json=big(3, 80), headers=BULK))
                for _ in range(4)]
        await until(lambda: app_state(app).scorer.admission.pairs == 15)
        await asyncio.sleep(0.05)
        small_tokens = sum(len(p) for p in fake.calls[n0])  # the small request's call
        # interactive work seen: bulk in the engine stays within the tight budget, the rest waits
        assert 0 < dispatcher.outstanding - small_tokens <= 1000 < wide
        assert app_state(app).metrics.queue_depth.labels("bulk")._value.get() > 0
        fake.gate.set()
        await asyncio.gather(small, *bulk)


async def test_vllm_priority_maps_onto_the_dispatch_classes(anyio_backend):
    async with running(FakeEngine()) as (app, client, fake):
        wait = app_state(app).metrics.queue_wait
        for priority, klass in ((5, "bulk"), (-1, "interactive")):
            before = _count(wait, klass)
            r = await client.post("/score", json={"text_1": Q, "text_2": ["Paris.", "Lyon."],
                                                  "priority": priority})
            assert r.status_code == 200, r.text
            assert _count(wait, klass) == before + 1


async def test_one_large_bulk_request_stays_within_the_tight_budget(anyio_backend):
    # While interactive work is around, a bulk request larger than the budget does not go out
    # whole (one item of up to batch_max_tokens), which a small request would wait behind: it is
    # cut to the room left in the budget (bulk_split_to_budget, the default).
    async with running(FakeEngine(), engine_token_budget=400, bulk_budget_factor=8,
                       interactive_max_tokens=300, batch_max_tokens=4000,
                       interactive_memory_s=30) as (app, client, fake):
        dispatcher = app_state(app).scorer.dispatcher
        dispatcher.last_interactive = float("-inf")
        alone = await client.post("/v1/rank", json=big(8, 80), headers=BULK)
        assert len(fake.calls) == 1, "bulk alone goes whole: one call"
        assert sum(len(p) for p in fake.calls[0]) > 400  # the request is larger than the budget
        await client.post("/v1/rank", json=SMALL)  # interactive work seen: the tight budget holds
        fake.gate, fake.calls[:] = asyncio.Event(), []
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, dispatcher.outstanding)
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        task = asyncio.create_task(client.post("/v1/rank", json=big(8, 80), headers=BULK))
        await until(lambda: len(fake.calls) == 1)
        await asyncio.sleep(0.05)
        assert 0 < peak <= 400, f"{peak} bulk tokens in the engine, budget 400"
        fake.gate.set()
        loaded = await task
        watcher.cancel()
        assert len(fake.calls) > 1  # sent in budget-sized calls
        assert peak <= 400
        assert scores(loaded) == scores(alone)


@asynccontextmanager
async def bulk_held_after_small(**settings):
    """A tight budget of 400 tokens in force (a small request was just answered), the engine
    held shut, and one 8-document bulk request sent: yields (app, client, fake, task) once its
    first engine call is waiting at the gate."""
    async with running(FakeEngine(), engine_token_budget=400, bulk_budget_factor=8,
                       interactive_max_tokens=300, batch_max_tokens=4000, interactive_memory_s=30,
                       **settings) as (app, client, fake):
        await client.post("/v1/rank", json=SMALL)  # interactive work seen
        fake.gate, fake.calls[:] = asyncio.Event(), []
        task = asyncio.create_task(client.post("/v1/rank", json=big(8, 80), headers=BULK))
        await until(lambda: len(fake.calls) == 1)
        yield app, client, fake, task


async def test_without_the_cut_one_large_bulk_request_fills_the_engine(anyio_backend):
    # What bulk_split_to_budget=false gives (and what main did before it): the whole item goes
    # out at once, past the budget, whenever the engine has no bulk in flight.
    async with bulk_held_after_small(bulk_split_to_budget=False) as (app, client, fake, task):
        assert app_state(app).scorer.dispatcher.outstanding > 400
        fake.gate.set()
        assert (await task).status_code == 200


async def test_a_cut_request_cancelled_after_its_first_part_sends_no_more(anyio_backend):
    async with bulk_held_after_small() as (app, client, fake, task):
        first = len(fake.calls[0])
        assert first < 8  # cut: only part of the request was sent
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        fake.gate.set()
        await asyncio.sleep(0.1)
        assert [len(c) for c in fake.calls] == [first]  # the rest was dropped, never sent
        assert app_state(app).scorer.admission.pairs == 0
        assert app_state(app).metrics.queue_depth.labels("bulk")._value.get() == 0
        # and the dispatcher still serves: the next request is answered
        assert (await client.post("/v1/rank", json=SMALL)).status_code == 200


async def test_an_engine_error_in_one_part_of_a_cut_request_fails_it_cleanly(anyio_backend):
    async with bulk_held_after_small() as (app, client, fake, task):
        fake.kill()  # the call held at the gate fails, as a dead vLLM's would
        fake.gate.set()
        r = await asyncio.wait_for(task, 10)
        assert r.status_code == 503 and "detail" in r.json() and r.headers.get("retry-after")
        assert app_state(app).metrics.queue_depth.labels("bulk")._value.get() == 0
