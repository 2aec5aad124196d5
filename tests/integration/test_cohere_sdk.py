"""The official `cohere` Python SDK (v1 and v2 clients), pointed at our base URL."""

import cohere
import pytest

pytestmark = pytest.mark.engine

QUERY = "What is the capital of the United States?"
DOCS = ["Carson City is the capital city of the American state of Nevada.",
        "Washington, D.C. is the capital of the United States.",
        "Capital punishment has existed in the United States since before it was a country."]


def legacy_scores(service):
    results = service.post("/v1/rank", {"query": QUERY, "docs": DOCS}).json()["results"]
    return {DOCS.index(r["doc"]): r["score"] for r in results}


def test_cohere_v1_client_reranks_with_documents(service):
    co = cohere.Client(api_key="dummy-key", base_url=service.url)  # SDKs insist on a key
    response = co.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2,
                         return_documents=True)
    truth = legacy_scores(service)
    assert len(response.results) == 2
    for result in response.results:
        assert result.relevance_score == pytest.approx(truth[result.index], abs=1e-6)
        assert result.document.text == DOCS[result.index]
    assert response.results[0].relevance_score >= response.results[1].relevance_score
    assert response.meta.billed_units.search_units == 1


def test_cohere_v2_client_reranks(service):
    co = cohere.ClientV2(api_key="dummy-key", base_url=service.url)
    response = co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3, max_tokens_per_doc=512)
    truth = legacy_scores(service)
    assert [r.index for r in response.results] == sorted(truth, key=lambda i: -truth[i])
    for result in response.results:
        assert result.relevance_score == pytest.approx(truth[result.index], abs=1e-6)


def test_cohere_client_can_pass_an_instruction(service, reference):
    co = cohere.ClientV2(api_key="dummy-key", base_url=service.url)
    ins = "Given a question about US geography, retrieve the answer"
    response = co.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS,
                         request_options={"additional_body_parameters": {"instruction": ins}})
    for result in response.results:
        assert result.relevance_score == pytest.approx(reference.score(QUERY, DOCS[result.index], ins), abs=1e-3)


def test_cohere_client_gets_a_typed_error_for_bad_input(service):
    co = cohere.ClientV2(api_key="dummy-key", base_url=service.url)
    with pytest.raises(cohere.core.api_error.ApiError) as err:
        co.rerank(model="rerank-v3.5", query="", documents=DOCS)
    assert err.value.status_code == 422
