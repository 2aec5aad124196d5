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
