"""Cross-request batching on the real engine: concurrent requests coalesced into shared /classify
calls get the scores the one-call-per-request path gives (vLLM CPU build, fp32)."""

import concurrent.futures as cf

import httpx
import pytest

pytestmark = pytest.mark.engine

BODIES = [{"query": f"question number {i} about capitals",
           "docs": [f"City {j} is the capital of country {i + j}." for j in range(3 + i % 4)]}
          for i in range(24)]


def scores_under_load(url: str) -> list[dict[str, float]]:
    with httpx.Client(base_url=url, timeout=120) as client:  # pooled keep-alive, one client IP
        with cf.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda b: client.post("/v1/rank", json=b), BODIES))
    assert all(r.status_code == 200 for r in answers)
    return [{r["doc"]: r["score"] for r in a.json()["results"]} for a in answers]


def test_coalesced_and_uncoalesced_paths_give_the_same_scores(service, extra_shim):
    uncoalesced = extra_shim(batching="false")
    batched, plain = scores_under_load(service.url), scores_under_load(uncoalesced.url)
    for got, want in zip(batched, plain):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, abs=1e-6)
    calls = [line for line in httpx.get(service.url + "/metrics").text.splitlines()
             if line.startswith("reranker_engine_batch_prompts_count")]
    assert calls and float(calls[0].split()[1]) > 0  # the default path did go through dispatch


def _engine_calls(url: str) -> float:
    lines = [line for line in httpx.get(url + "/metrics").text.splitlines()
             if line.startswith("reranker_engine_batch_prompts_count")]
    return float(lines[0].split()[1])


def test_a_bulk_request_cut_across_engine_calls_under_small_traffic_keeps_its_scores(extra_shim):
    """Once small requests have been seen, a bulk request larger than the engine token budget is
    cut into several /classify calls (bulk_split_to_budget, the default); its scores are those of
    the same request sent as one call (bulk alone), through the real engine, with a pooled client,
    also while small requests run alongside. Default settings: the budget is one engine step
    (8,192 tokens on the CPU build), so the request is ~10k tokens (one queued item: under
    batch_max_tokens)."""
    shim = extra_shim(defaults=True)
    docs = [f"Document {i}: " + "the city hosts a port, a university and a cathedral. " * 12
            for i in range(48)]  # ~200 prompt tokens each
    big = {"query": "which city has a cathedral?", "docs": docs}
    bulk = {"X-Priority": "bulk"}

    def scores(r) -> dict[str, float]:
        assert r.status_code == 200, r.text
        return {item["doc"]: item["score"] for item in r.json()["results"]}

    with httpx.Client(base_url=shim.url, timeout=120) as client:
        calls = _engine_calls(shim.url)
        alone = scores(client.post("/v1/rank", json=big, headers=bulk))
        assert _engine_calls(shim.url) == calls + 1  # no small traffic yet: one whole call
        assert client.post("/v1/rank", json=BODIES[0]).status_code == 200  # small traffic seen
        calls = _engine_calls(shim.url)
        cut = scores(client.post("/v1/rank", json=big, headers=bulk))
        assert _engine_calls(shim.url) - calls >= 2  # cut to the budget
        with cf.ThreadPoolExecutor(5) as pool:  # and with small requests running alongside
            small = [pool.submit(client.post, "/v1/rank", json=b) for b in BODIES[:8]]
            loaded = scores(client.post("/v1/rank", json=big, headers=bulk))
            assert all(f.result().status_code == 200 for f in small)
    assert cut == pytest.approx(alone, abs=1e-6)
    assert loaded == pytest.approx(alone, abs=1e-6)
