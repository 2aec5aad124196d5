"""Core behaviours through the real app with a fake engine: budget and cuts, chunk-and-max,
dedup, cache keys, admission, and the mapping of domain errors to each dialect's answer."""

from __future__ import annotations

import asyncio

import pytest

from server.scoring import errors as domain
from server.scoring.core import ScoreRequest
from server.state import app_state
from tests.conftest import MAX_MODEL_LEN
from tests.inprocess.conftest import FakeEngine, running

pytestmark = pytest.mark.anyio

Q = "capital of France"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is a city in France."]


async def test_a_long_document_is_cut_so_the_whole_template_fits(anyio_backend):
    async with running() as (app, client, fake):
        r = await client.post("/v1/rerank", json={"query": Q, "documents": ["word " * 6000]})
        assert r.status_code == 200
        (prompt,) = [p for call in fake.calls for p in call]
        enc = app_state(app).scorer.encoder
        assert len(prompt) <= MAX_MODEL_LEN
        assert prompt[: len(enc.template_head)] == enc.template_head
        assert prompt[-len(enc.template_tail):] == enc.template_tail  # the end is never cut


async def test_a_chunked_document_scores_the_max_over_its_chunks(anyio_backend):
    async with running() as (app, client, fake):
        body = {"query": Q, "documents": ["alpha beta gamma " * 2000], "max_chunks_per_doc": 3,
                "raw_scores": True}
        r = await client.post("/v1/rerank", json=body)
        prompts = [p for call in fake.calls for p in call]
        assert len(prompts) == 3
        assert r.json()["results"][0]["relevance_score"] == pytest.approx(
            max(FakeEngine.logit(p) for p in prompts))


async def test_duplicate_documents_reach_the_engine_once(anyio_backend):
    async with running() as (app, client, fake):
        r = await client.post("/v1/rank", json={"query": Q, "docs": [DOCS[0]] * 4 + [DOCS[1]]})
        assert r.status_code == 200 and len(r.json()["results"]) == 5
        assert sum(len(call) for call in fake.calls) == 2


async def test_score_cache_key_covers_everything_that_changes_a_score(anyio_backend):
    async with running(score_cache=True) as (app, client, fake):
        body = {"query": Q, "documents": DOCS}
        first = (await client.post("/v1/rerank", json=body)).json()
        sent = sum(len(c) for c in fake.calls)
        again = (await client.post("/v1/rerank", json=body)).json()
        assert sum(len(c) for c in fake.calls) == sent == 3  # answered from the cache
        assert again["results"] == first["results"]
        for change in ({"instruction": "Find fruit"}, {"raw_scores": True},
                       {"max_tokens_per_doc": 2}, {"query": Q + "?"}):
            before = sum(len(c) for c in fake.calls)
            await client.post("/v1/rerank", json={**body, **change})
            assert sum(len(c) for c in fake.calls) == before + 3, change


async def test_full_server_refuses_with_503_and_retry_after(anyio_backend):
    fake = FakeEngine()
    async with running(fake, max_inflight_pairs=3) as (app, client, fake):
        fake.gate = asyncio.Event()
        first = asyncio.create_task(client.post("/v1/rank", json={"query": Q, "docs": DOCS}))
        while not fake.calls:
            await asyncio.sleep(0.001)
        r = await client.post("/v1/rank", json={"query": Q, "docs": DOCS[:1]})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "in flight" in r.json()["detail"]
        fake.gate.set()
        assert (await first).status_code == 200
        assert (await client.post("/v1/rank", json={"query": Q, "docs": DOCS[:1]})).status_code == 200


@pytest.mark.parametrize("error, status", [
    (domain.EngineUnavailable("engine unreachable: connection refused"), 503),
    (domain.EngineTimeout("the engine did not answer in time"), 504),
    (domain.EngineBadAnswer("the engine returned a score that is not a finite number: nan"), 502),
    (domain.EngineRejected("rejected by the engine: bad"), 400),
])
async def test_engine_failures_map_to_one_status_in_every_dialect_shape(anyio_backend, error, status):
    async with running() as (app, client, fake):
        fake.fail = error
        for path, body in (("/v1/rank", {"query": Q, "docs": DOCS}),
                           ("/v1/rerank", {"query": Q, "documents": DOCS}),
                           ("/rerank", {"query": Q, "texts": DOCS})):
            r = await client.post(path, json=body)
            assert r.status_code == status, (path, r.text)
            assert r.json()["detail"] == error.detail
            if status == 503:
                assert int(r.headers["retry-after"]) >= 1
            if path == "/rerank":  # TEI clients read error / error_type
                assert r.json()["error"] == error.detail and r.json()["error_type"]


async def test_invalid_input_is_422_with_a_detail_naming_the_problem(anyio_backend):
    async with running(max_documents=2) as (app, client, fake):
        cases = [({"query": " ", "docs": DOCS[:1]}, "query"),
                 ({"query": Q, "docs": []}, "at least one"),
                 ({"query": Q, "docs": DOCS}, "max_documents")]
        for body, words in cases:
            r = await client.post("/v1/rank", json=body)
            assert r.status_code == 422 and words in r.json()["detail"], r.text
        assert not fake.calls


async def test_an_echoed_document_with_a_huge_integer_is_answered_not_a_500(anyio_backend):
    async with running() as (app, client, fake):
        doc = {"text": "Paris is the capital of France.", "id": 2**70}
        r = await client.post("/v1/rerank", json={"query": Q, "documents": [doc], "return_documents": True})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["document"]["id"] == 2**70


# --- refusing a document that would be cut (ScoreRequest.refuse_truncation) ----------------------
LONG = "word " * 3000  # more tokens than MAX_MODEL_LEN


async def test_a_document_that_would_be_cut_is_refused_with_its_facts_before_any_engine_work(anyio_backend):
    async with running() as (app, client, fake):
        scorer = app_state(app).scorer
        docs = [DOCS[0], LONG, LONG + "more", DOCS[1]]
        with pytest.raises(domain.DocumentTooLong) as refused:
            await scorer.score(ScoreRequest(Q, docs, refuse_truncation=True))
        assert not fake.calls  # refused before the engine saw anything
        err = refused.value
        budget = MAX_MODEL_LEN - scorer.encoder.template_tokens - len(
            scorer.encoder.head(Q, app_state(app).settings.default_instruction))
        assert (err.index, err.limit, err.tokens_exact) == (1, budget, True)  # the first one cut
        assert err.tokens == len(scorer.encoder.encode_plain([" " + LONG])[0]) > budget
        assert "documents[1]" in err.detail and str(err.tokens) in err.detail

        cut = await scorer.score(ScoreRequest(Q, docs))  # without the flag: cut and scored
        assert cut.truncated == [False, True, True, False]
        whole = await scorer.score(ScoreRequest(Q, DOCS, refuse_truncation=True))  # nothing to cut
        assert whole.truncated == [False] * len(DOCS)


async def test_a_document_that_fits_in_its_chunks_is_not_refused(anyio_backend):
    async with running() as (app, client, fake):
        scorer = app_state(app).scorer
        result = await scorer.score(ScoreRequest(Q, [LONG], max_chunks_per_doc=3, refuse_truncation=True))
        assert result.truncated == [False] and len(fake.calls[0]) == 2  # two chunks, no cut
        with pytest.raises(domain.DocumentTooLong) as refused:
            await scorer.score(ScoreRequest(Q, [LONG * 3], max_chunks_per_doc=2, refuse_truncation=True))
        assert refused.value.limit > MAX_MODEL_LEN  # two chunks' worth of document tokens


async def test_a_cut_document_in_the_score_cache_is_still_refused(anyio_backend):
    async with running(score_cache=True) as (app, client, fake):
        scorer = app_state(app).scorer
        await scorer.score(ScoreRequest(Q, [LONG]))  # cached, as cut
        with pytest.raises(domain.DocumentTooLong) as refused:
            await scorer.score(ScoreRequest(Q, [LONG], refuse_truncation=True))
        assert refused.value.index == 0 and refused.value.tokens > refused.value.limit


async def test_text_far_past_the_budget_is_refused_with_a_lower_bound(anyio_backend):
    async with running() as (app, client, fake):
        with pytest.raises(domain.DocumentTooLong) as refused:
            await app_state(app).scorer.score(ScoreRequest(Q, ["x" * 500_000], refuse_truncation=True))
        assert not refused.value.tokens_exact and "at least" in refused.value.detail


@pytest.mark.parametrize("path, body, field", [
    ("/v1/ranking", {"query": {"text": Q}, "passages": [{"text": DOCS[0]}, {"text": LONG}],
                     "truncate": "NONE"}, "passages[1]"),
    ("/v1/rerank", {"query": Q, "documents": [DOCS[0], LONG], "truncation": False}, "documents[1]"),
    ("/pinecone/rerank", {"query": Q, "documents": [DOCS[0], LONG], "parameters": {"truncate": "NONE"}},
     "documents[1]"),
    ("/rerank", {"query": Q, "texts": [DOCS[0], LONG], "truncate": False}, "texts[1]"),
])
async def test_each_dialect_words_the_refusal_with_its_own_field(anyio_backend, path, body, field):
    async with running() as (app, client, fake):
        r = await client.post(path, json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(field + " has "), r.text
        assert not fake.calls
        if path == "/rerank":  # TEI clients read error / error_type
            assert r.json()["error"] == r.json()["detail"]
