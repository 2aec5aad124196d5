"""Duplicate documents are scored once; the optional score cache answers repeats without vLLM."""

import time

import httpx
import pytest

pytestmark = pytest.mark.engine

QUERY = "capital of France"
DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "Lyon is in France."]


def metric(svc, name: str) -> float:
    for line in httpx.get(svc.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_duplicate_documents_are_scored_once(service):
    once = service.post("/v1/rerank", {"query": QUERY, "documents": DOCS[:1]}).json()
    twice = service.post("/v1/rerank", {"query": QUERY, "documents": DOCS[:1] * 5}).json()
    assert twice["usage"]["prompt_tokens"] == once["usage"]["prompt_tokens"]
    assert sorted(r["index"] for r in twice["results"]) == [0, 1, 2, 3, 4]
    assert {r["relevance_score"] for r in twice["results"]} == {once["results"][0]["relevance_score"]}


def test_score_cache_answers_repeats_and_expires(extra_shim):
    shim = extra_shim(score_cache="true", score_cache_ttl="3")
    first = httpx.post(shim.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert metric(shim, "reranker_score_cache_misses_total") == 3
    again = httpx.post(shim.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert metric(shim, "reranker_score_cache_hits_total") == 3
    assert again["results"] == first["results"]
    other = httpx.post(shim.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                       "instruction": "Find fruit facts"}).json()
    assert metric(shim, "reranker_score_cache_misses_total") == 6  # instruction is part of the key
    assert other["results"] != first["results"]
    time.sleep(3.5)
    httpx.post(shim.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert metric(shim, "reranker_score_cache_misses_total") == 9  # entries expired after the TTL
