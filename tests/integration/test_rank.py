"""POST /v1/rank, the legacy API, against real vLLM (CPU build) through the launcher."""

import concurrent.futures as cf

import pytest

pytestmark = pytest.mark.engine

SEED_QUERY = "如何申请差旅报销"
SEED_DOCS = ["员工手册第3章", "财务系统操作指南", "OA审批流程说明"]


def rank(service, body):
    r = service.post("/v1/rank", body)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def assert_well_ranked(results, docs):
    assert sorted(r["doc"] for r in results) == sorted(docs)
    assert [r["rank"] for r in results] == list(range(1, len(docs) + 1))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_readme_example_returns_three_ranked_results(service, reference):
    results = rank(service, {"query": SEED_QUERY, "docs": SEED_DOCS})
    assert_well_ranked(results, SEED_DOCS)
    for r in results:
        assert r["score"] == pytest.approx(reference.score(SEED_QUERY, r["doc"]), abs=1e-3)


def test_one_document(service):
    results = rank(service, {"query": "capital of France", "docs": ["Paris is the capital of France."]})
    assert len(results) == 1 and results[0]["rank"] == 1 and 0 < results[0]["score"] < 1


def test_hundred_documents_ranked(service):
    docs = [f"Document {i}: notes about topic {i % 7} and item {i * 13 % 101}." for i in range(100)]
    results = rank(service, {"query": "topic 3", "docs": docs})
    assert_well_ranked(results, docs)
    assert len({r["score"] for r in results}) > 50  # real per-document scores, not a constant


def test_chinese_text(service, reference):
    docs = ["报销需要在OA系统提交差旅申请单并附上发票。", "今天天气很好。", "财务部负责审核报销单据。"]
    results = rank(service, {"query": SEED_QUERY, "docs": docs})
    assert_well_ranked(results, docs)
    for r in results:
        assert r["score"] == pytest.approx(reference.score(SEED_QUERY, r["doc"]), abs=1e-3)


def test_twenty_concurrent_requests_each_get_their_own_right_order(service):
    bodies = [{"query": f"query number {i}", "docs": [f"doc {i}-{j} about {j * i}" for j in range(8)]}
              for i in range(20)]
    alone = [rank(service, b) for b in bodies]
    with cf.ThreadPoolExecutor(20) as pool:
        together = list(pool.map(lambda b: rank(service, b), bodies))
    for a, t in zip(alone, together):
        assert [r["doc"] for r in t] == [r["doc"] for r in a]
        assert [r["score"] for r in t] == pytest.approx([r["score"] for r in a], abs=1e-5)


def test_custom_instruction_changes_scores(service, reference):
    docs = ["The Eiffel Tower is in Paris.", "Bananas are rich in potassium."]
    plain = {r["doc"]: r["score"] for r in rank(service, {"query": "Paris", "docs": docs})}
    instruction = "Given a fruit name, find nutrition facts"
    custom = {r["doc"]: r["score"] for r in rank(service, {"query": "Paris", "docs": docs, "instruction": instruction})}
    assert any(abs(plain[d] - custom[d]) > 0.01 for d in docs)
    for d in docs:
        assert custom[d] == pytest.approx(reference.score("Paris", d, instruction), abs=1e-3)
