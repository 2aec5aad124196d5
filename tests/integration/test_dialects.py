"""Every rerank dialect over the one scoring core, against real vLLM (CPU build)."""

import math

import httpx
import pytest

from tests.conftest import MODEL_NAME

pytestmark = pytest.mark.engine

QUERY = "what is the capital of the United States?"
DOCS = ["Carson City is the capital city of the American state of Nevada.",
        "Washington, D.C. is the capital of the United States.",
        "Capital punishment has existed in the United States since before it was a country.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific."]


def by_index(results, key="relevance_score"):
    return {r["index"]: r[key] for r in results}


@pytest.fixture(scope="module")
def truth(service):
    """Scores from the legacy endpoint, in input order: every dialect must agree."""
    results = service.post("/v1/rank", {"query": QUERY, "docs": DOCS}).json()["results"]
    score = {r["doc"]: r["score"] for r in results}
    return [score[d] for d in DOCS]


def assert_sorted(results, key="relevance_score"):
    scores = [r[key] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_cohere_v1_envelope_and_scores(service, truth):
    r = service.post("/v1/rerank", {"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS})
    body = r.json()
    assert r.status_code == 200
    assert body["meta"]["api_version"]["version"] == "1"
    assert body["meta"]["billed_units"]["search_units"] == 1
    assert body["model"] == MODEL_NAME and body["id"]
    assert body["usage"]["total_tokens"] > 0
    assert_sorted(body["results"])
    assert all("document" not in item for item in body["results"])  # omitted, never null
    assert by_index(body["results"]) == pytest.approx(dict(enumerate(truth)), abs=1e-6)


def test_cohere_v1_explicit_nulls_for_every_optional_field(service, truth):
    body = {"model": None, "query": QUERY, "documents": DOCS, "top_n": None, "rank_fields": None,
            "return_documents": None, "max_chunks_per_doc": None, "max_tokens_per_doc": None,
            "instruction": None, "raw_scores": None}
    r = service.post("/v1/rerank", body)
    assert r.status_code == 200, r.text
    assert by_index(r.json()["results"]) == pytest.approx(dict(enumerate(truth)), abs=1e-6)


def test_cohere_v1_object_documents_echo_whole_object(service, truth):
    docs = [{"text": d, "source": f"s{i}"} for i, d in enumerate(DOCS)]
    body = service.post("/v1/rerank", {"query": QUERY, "documents": docs, "return_documents": True,
                                       "top_n": 2}).json()
    assert len(body["results"]) == 2
    for item in body["results"]:
        assert item["document"] == docs[item["index"]]
        assert item["relevance_score"] == pytest.approx(truth[item["index"]], abs=1e-6)
    assert [i["index"] for i in body["results"]] == sorted(range(4), key=lambda i: -truth[i])[:2]


def test_cohere_v1_rank_fields_rank_on_the_named_fields(service, reference):
    docs = [{"title": "Capital", "body": d} for d in DOCS]
    body = service.post("/v1/rerank", {"query": QUERY, "documents": docs,
                                       "rank_fields": ["title", "body"]}).json()
    first = next(r for r in body["results"] if r["index"] == 0)
    assert first["relevance_score"] == pytest.approx(
        reference.score(QUERY, f"title: Capital\nbody: {DOCS[0]}"), abs=1e-3)


def test_cohere_v2_envelope(service, truth):
    body = service.post("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS,
                                       "top_n": 3, "max_tokens_per_doc": 4096}).json()
    assert body["meta"]["api_version"]["version"] == "2"
    assert len(body["results"]) == 3
    assert_sorted(body["results"])
    for item in body["results"]:
        assert item["relevance_score"] == pytest.approx(truth[item["index"]], abs=1e-6)


def test_jina_request_gets_model_usage_and_documents_when_asked(service, truth):
    body = service.post("/v1/rerank", {"model": "jina-reranker-v2-base-multilingual", "query": QUERY,
                                       "documents": DOCS, "top_n": 4, "return_documents": True}).json()
    assert body["model"] == MODEL_NAME
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
    for item in body["results"]:
        assert item["document"] == {"text": DOCS[item["index"]]}


def test_jina_clients_find_detail_in_errors(service):
    r = service.post("/v1/rerank", {"query": QUERY, "documents": "not a list"})
    assert 400 <= r.status_code < 500
    assert "results" not in r.json() and r.json()["detail"]


def test_tei_body_gets_bare_sorted_array(service, truth):
    r = service.post("/rerank", {"query": QUERY, "texts": DOCS, "return_text": True})
    items = r.json()
    assert isinstance(items, list) and len(items) == 4
    assert_sorted(items, "score")
    for item in items:
        assert item["text"] == DOCS[item["index"]]
        assert item["score"] == pytest.approx(truth[item["index"]], abs=1e-6)
    plain = service.post("/rerank", {"query": QUERY, "texts": DOCS}).json()
    assert all("text" not in item for item in plain)


def test_raw_scores_are_the_logit_margin(service, truth):
    items = service.post("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    for item in items:
        assert 1 / (1 + math.exp(-item["score"])) == pytest.approx(truth[item["index"]], abs=1e-5)
    ext = service.post("/v1/rerank", {"query": QUERY, "documents": DOCS, "raw_scores": True}).json()
    assert by_index(ext["results"]) == pytest.approx(by_index(items, "score"), abs=1e-5)


def test_tei_truncate_false_refuses_over_long_text(service):
    long_text = "word " * 5000
    r = service.post("/rerank", {"query": QUERY, "texts": [long_text], "truncate": False})
    assert r.status_code == 422 and "truncate" in r.json()["detail"]
    assert r.json()["error"] and r.json()["error_type"]  # TEI clients read these
    ok = service.post("/rerank", {"query": QUERY, "texts": [long_text]})
    assert ok.status_code == 200


def test_seed_body_gets_seed_and_jina_fields(service, truth):
    r = service.post("/rerank", {"query": QUERY, "documents": DOCS,
                                 "instruction": "Given a web search query, retrieve relevant passages that answer the query"})
    body = r.json()
    assert body["query"] == QUERY and body["total_docs"] == 4
    assert body["processed_in_ms"] > 0
    ranked = body["reranked_documents"]
    assert [d["rank"] for d in ranked] == [1, 2, 3, 4]
    assert {d["document"]: d["score"] for d in ranked} == pytest.approx(dict(zip(DOCS, truth)), abs=1e-6)
    assert by_index(body["results"]) == pytest.approx(dict(enumerate(truth)), abs=1e-6)
    assert body["usage"]["total_tokens"] > 0


def test_instruction_is_accepted_by_every_dialect(service, reference):
    ins = "Given a trivia question, retrieve the answer"
    expected = reference.score(QUERY, DOCS[1], ins)
    got = [
        service.post("/v1/rank", {"query": QUERY, "docs": [DOCS[1]], "instruction": ins}).json()["results"][0]["score"],
        service.post("/v1/rerank", {"query": QUERY, "documents": [DOCS[1]], "instruction": ins}).json()["results"][0]["relevance_score"],
        service.post("/v2/rerank", {"query": QUERY, "documents": [DOCS[1]], "instruction": ins}).json()["results"][0]["relevance_score"],
        service.post("/rerank", {"query": QUERY, "texts": [DOCS[1]], "instruction": ins}).json()[0]["score"],
        service.post("/rerank", {"query": QUERY, "documents": [DOCS[1]], "instruction": ins}).json()["results"][0]["relevance_score"],
    ]
    assert got == pytest.approx([expected] * 5, abs=1e-3)


def test_too_many_documents_names_the_limit(service):
    r = service.post("/v1/rerank", {"query": QUERY, "documents": ["d"] * 1001})
    assert r.status_code == 422
    assert "1000" in r.json()["detail"] and "max_documents" in r.json()["detail"]


def test_openapi_documents_every_endpoint_with_an_example(service):
    spec = httpx.get(service.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def body_models(schema):
        alternatives = [schema] if "$ref" in schema else schema.get("anyOf") or schema.get("oneOf", [])
        # a model, or a model with a condition ({"allOf": [model], "not": ...})
        refs = [a if "$ref" in a else a["allOf"][0] for a in alternatives]
        return [schemas[r["$ref"].rsplit("/", 1)[1]] for r in refs]

    for path in ("/v1/rank", "/v1/rerank", "/v2/rerank", "/rerank"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        models = body_models(body)
        assert models, path
        for model in models:  # every accepted body shape carries a worked example
            assert model.get("examples"), (path, model.get("title"))
            assert set(model["required"]) <= set(model["examples"][0]), (path, model.get("title"))
    assert httpx.get(service.url + "/docs").status_code == 200


def test_request_token_limit_names_the_setting(extra_shim):
    shim = extra_shim(max_request_tokens="50")
    r = httpx.post(shim.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS * 3})
    assert r.status_code == 413
    assert "max_request_tokens" in r.json()["detail"] and "50" in r.json()["detail"]
