"""Products that cannot run here (Elasticsearch, OpenSearch, Weaviate, Milvus, Dify, RAGFlow,
Open WebUI, NIM clients), pointed at the service as docs/integrations.md says: each test sends the
exact body and headers the product's source sends (file named in the test) to the URL the guide
gives, and reads the answer the way that source parses it. Every check: one score per document,
valid indices, the same ordering as /v1/rerank for the same pairs. Real vLLM (CPU build)."""

from __future__ import annotations

import json
import math

import httpx
import pytest
import requests

pytestmark = pytest.mark.engine

QUERY = "what is the capital of the United States?"
DOCS = ["Carson City is the capital city of the American state of Nevada.",
        "Washington, D.C. is the capital of the United States.",
        "Capital punishment has existed in the United States since before it was a country.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific."]
KEY = {"Authorization": "Bearer any-key"}  # auth is off by default: a key is sent and ignored


@pytest.fixture(scope="module")
def cohere_order(service) -> tuple[list[int], dict[int, float]]:
    """/v1/rerank's ranking and scores of QUERY x DOCS: what every integration must agree with."""
    r = service.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    return [x["index"] for x in results], {x["index"]: x["relevance_score"] for x in results}


def post_raw(service, path: str, body: dict, headers: dict) -> httpx.Response:
    """A body sent as bytes with exactly these headers (httpx adds no Content-Type to bytes)."""
    return httpx.post(service.url + path, content=json.dumps(body).encode(), headers=headers, timeout=120)


def check(pairs: list[tuple[int, float]], cohere_order, n: int = len(DOCS)) -> None:
    """(index, score) as the product read them: one per document, valid indices, /v1/rerank's order."""
    order, _ = cohere_order
    indices = [i for i, _ in pairs]
    assert len(pairs) == n and sorted(indices) == list(range(n)), pairs
    assert all(math.isfinite(s) for _, s in pairs)
    assert [i for i, _ in sorted(pairs, key=lambda p: -p[1])] == order


# --- Elasticsearch -------------------------------------------------------------------------------
def test_elasticsearch_hugging_face_rerank_service(service, cohere_order):
    """x-pack/plugin/inference .../huggingface/request/rerank/HuggingFaceRerankRequest.java and
    HuggingFaceRerankRequestEntity.java (body, Bearer header); the answer parsed as
    .../huggingface/response/HuggingFaceRerankResponseEntity.java does: a top-level array whose
    items may only hold index, score | relevance_score, text | document."""
    body = {"documents": DOCS, "query": QUERY, "return_documents": True, "top_n": 4}
    r = post_raw(service, "/hf/rerank", body, {"Content-Type": "application/json", **KEY})
    assert r.status_code == 200, r.text
    items = r.json()
    assert isinstance(items, list)
    for item in items:
        assert set(item) <= {"index", "score", "relevance_score", "text", "document"}, item
        assert item["text"] == DOCS[item["index"]]
    check([(x["index"], x["score"]) for x in items], cohere_order)
    _, scores = cohere_order
    assert {x["index"]: x["score"] for x in items} == pytest.approx(scores, abs=1e-6)
    # the task-settings form: no return_documents, top_n 2 -> two items, no text
    r = post_raw(service, "/hf/rerank", {"documents": DOCS, "query": QUERY, "top_n": 2},
                 {"Content-Type": "application/json", **KEY})
    assert [x["index"] for x in r.json()] == cohere_order[0][:2]
    assert all(set(x) == {"index", "score"} for x in r.json())


def test_elasticsearch_hugging_face_reads_a_string_error(service):
    """HuggingFaceErrorResponseEntity.java reads `error` as a string."""
    r = post_raw(service, "/hf/rerank", {"documents": [], "query": QUERY},
                 {"Content-Type": "application/json", **KEY})
    assert r.status_code == 422 and isinstance(r.json()["error"], str) and r.json()["error"]


def test_elasticsearch_custom_service_configured_for_v1_rerank(service, cohere_order):
    """The `custom` service (x-pack/plugin/inference .../services/custom/): the request template of
    docs/integrations.md with ${query}, ${input}, ${top_n}, ${return_documents} filled in, and the
    response parser's JSONPaths `$.results[*].relevance_score` and `$.results[*].index`."""
    body = {"query": QUERY, "documents": DOCS, "top_n": 4, "return_documents": False}
    r = post_raw(service, "/v1/rerank", body, {"Content-Type": "application/json", **KEY})
    results = r.json()["results"]
    check([(x["index"], x["relevance_score"]) for x in results], cohere_order)


# --- OpenSearch ----------------------------------------------------------------------------------
def test_opensearch_cohere_rerank_connector_blueprint(service, cohere_order):
    """ml-commons docs/remote_inference_blueprints/cohere-rerank-connector-blueprint.md: the
    connector's request_body template `{"documents": ${parameters.documents}, "query":
    "${parameters.query}", "model": "${parameters.model}", "top_n": ${parameters.top_n}}` and
    `connector.post_process.cohere.rerank` (reads results[].index and relevance_score)."""
    body = {"documents": DOCS, "query": QUERY, "model": "rerank-english-v3.0", "top_n": 4}
    r = post_raw(service, "/v1/rerank", body, {"Content-Type": "application/json", **KEY})
    check([(x["index"], x["relevance_score"]) for x in r.json()["results"]], cohere_order)


# --- Weaviate ------------------------------------------------------------------------------------
def test_weaviate_reranker_transformers(service, cohere_order):
    """weaviate modules/reranker-transformers/clients/startup.go (GET /.well-known/ready until a
    2xx), ranker_meta.go (GET /meta, a JSON object), ranker.go (POST /rerank with
    json.Marshal(RankInput{query, documents, property}): no Content-Type, no Authorization;
    reads scores[].document/score in order)."""
    base = service.url + "/weaviate"
    assert httpx.get(base + "/.well-known/ready", timeout=30).status_code <= 299
    assert isinstance(httpx.get(base + "/meta", timeout=10).json(), dict)
    body = json.dumps({"query": QUERY, "documents": DOCS, "property": ""}, separators=(",", ":")).encode()
    r = httpx.post(base + "/rerank", content=body, timeout=120)
    assert "content-type" not in r.request.headers  # as Go's http.NewRequest sends it
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert [s["document"] for s in scores] == DOCS  # the module pairs scores with documents in order
    check(list(enumerate(s["score"] for s in scores)), cohere_order)


def test_weaviate_reranker_transformers_reads_a_string_error(service):
    """ranker.go: on a non-200 it unmarshals the body into RankResponse and reports `error` (a string)."""
    r = httpx.post(service.url + "/weaviate/rerank", content=b'{"query":"","documents":["a"],"property":""}',
                   timeout=30)
    assert r.status_code == 422 and isinstance(r.json()["error"], str) and "query" in r.json()["error"]


def test_weaviate_reranker_cohere(service, cohere_order):
    """weaviate modules/reranker-cohere/clients/ranker.go: POST {baseURL}/v2/rerank with
    `{documents, query, model, return_documents: false}` and a Bearer key; reads results[]."""
    body = {"documents": DOCS, "query": QUERY, "model": "rerank-v3.5", "return_documents": False}
    r = post_raw(service, "/v2/rerank", body, {"Content-Type": "application/json", **KEY})
    check([(x["index"], x["relevance_score"]) for x in r.json()["results"]], cohere_order)


# --- Milvus (no auth header: auth off, or a proxy adds it) ----------------------------------------
def test_milvus_vllm_rerank_provider(service, cohere_order):
    """milvus internal/util/function/rerank (vllm provider): POST {endpoint}/v2/rerank with
    `{query, documents, truncate_prompt_tokens}`, no Authorization header; reads results[]."""
    body = {"query": QUERY, "documents": DOCS, "truncate_prompt_tokens": 1024}
    r = post_raw(service, "/v2/rerank", body, {"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    check([(x["index"], x["relevance_score"]) for x in r.json()["results"]], cohere_order)


def test_milvus_tei_rerank_provider(service, cohere_order):
    """milvus internal/util/function/rerank (tei provider): POST {endpoint}/rerank with
    `{query, texts, truncate, truncation_direction}`, no Authorization header; reads the array."""
    body = {"query": QUERY, "texts": DOCS, "truncate": True, "truncation_direction": "Right"}
    r = post_raw(service, "/rerank", body, {"Content-Type": "application/json"})
    check([(x["index"], x["score"]) for x in r.json()], cohere_order)


# --- Dify, RAGFlow, Open WebUI ------------------------------------------------------------------
def test_dify_openai_api_compatible_rerank(service, cohere_order):
    """dify-plugins openai_api_compatible models/rerank/rerank.py: POST {endpoint_url}/rerank
    (endpoint http://host:8000/v1) with `{model, query, documents, top_n}`; the credential check
    sends top_n null. Reads results[].index/relevance_score."""
    for top_n in (None, 4):
        body = {"model": "qwen3-reranker", "query": QUERY, "documents": DOCS, "top_n": top_n}
        r = post_raw(service, "/v1/rerank", body, {"Content-Type": "application/json", **KEY})
        assert r.status_code == 200, r.text
        check([(x["index"], x["relevance_score"]) for x in r.json()["results"]], cohere_order)


def test_ragflow_nvidia_rerank(service, cohere_order):
    """infiniflow/ragflow rag/llm/rerank_model.py (NvidiaRerank): POST {base_url}/ranking
    (base http://host:8000/v1) with `{model, query: {text}, passages: [{text}], truncate: "END",
    top_n}` and a Bearer key; reads rankings[].index/logit."""
    body = {"model": "nvidia/nv-rerankqa-mistral-4b-v3", "query": {"text": QUERY},
            "passages": [{"text": d} for d in DOCS], "truncate": "END", "top_n": len(DOCS)}
    r = post_raw(service, "/v1/ranking", body, {"Content-Type": "application/json", "accept": "application/json", **KEY})
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    check([(x["index"], x["logit"]) for x in rankings], cohere_order)
    _, scores = cohere_order
    for x in rankings:  # logit = logit(yes) - logit(no): its sigmoid is the P(yes) of /v1/rerank
        assert 1 / (1 + math.exp(-x["logit"])) == pytest.approx(scores[x["index"]], abs=1e-5)


def test_ragflow_openai_api_compatible_rerank(service, cohere_order):
    """infiniflow/ragflow rag/llm/rerank_model.py (OpenAI_APIRerank): POST {base_url}/rerank
    (base http://host:8000/v1) with `{model, query, documents, top_n}`, documents cut to 500 tokens
    client-side; reads results[].index/relevance_score."""
    body = {"model": "qwen3-reranker", "query": QUERY, "documents": DOCS, "top_n": len(DOCS)}
    r = post_raw(service, "/v1/rerank", body, {"Content-Type": "application/json", **KEY})
    check([(x["index"], x["relevance_score"]) for x in r.json()["results"]], cohere_order)


def test_ragflow_xinference_rerank_string_booleans(service, cohere_order):
    """infiniflow/ragflow rag/llm/rerank_model.py (XInferenceRerank): POST {base_url}/v1/rerank
    with `{model, query, return_documents: "true", return_len: "true", documents}` (string
    booleans); reads results[].relevance_score and the token counts."""
    body = {"model": "qwen3-reranker", "query": QUERY, "return_documents": "true", "return_len": "true",
            "documents": DOCS}
    r = post_raw(service, "/v1/rerank", body, {"Content-Type": "application/json", "accept": "application/json"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    check([(x["index"], x["relevance_score"]) for x in results], cohere_order)
    assert all(x["document"] == {"text": DOCS[x["index"]]} for x in results)  # "true" meant true
    assert r.json()["meta"]["tokens"]["input_tokens"] > 0
    no_docs = service.post("/v1/rerank", {**body, "return_documents": "false"}).json()["results"]
    assert all("document" not in x for x in no_docs)
    assert service.post("/v1/rerank", {**body, "return_documents": "yes"}).status_code == 422


def test_sglang_instruct_field_is_the_instruction(service, reference):
    """SGLang's /v1/rerank (python/sglang/srt/entrypoints/openai/protocol.py V1RerankReqInput)
    and DashScope spell the instruction `instruct`; it is scored as the instruction."""
    ins = "Given a trivia question, retrieve the answer"
    body = {"query": QUERY, "documents": [DOCS[1]], "instruct": ins}
    got = service.post("/v1/rerank", body).json()["results"][0]["relevance_score"]
    assert got == pytest.approx(reference.score(QUERY, DOCS[1], ins), abs=1e-3)
    assert got != pytest.approx(reference.score(QUERY, DOCS[1]), abs=1e-6)


def test_open_webui_external_reranker(service, cohere_order):
    """open-webui backend/open_webui/retrieval/models/external.py: POST to the configured URL
    (http://host:8000/v1/rerank) with `{model, query, documents, top_n}` and `Authorization:
    Bearer <key>`, which may be an empty key (sent here with `requests`, as Open WebUI does: httpx
    refuses a header value that ends in a space); reads results[].index/relevance_score."""
    for auth in ("Bearer any-key", "Bearer "):
        body = {"model": "qwen3-reranker", "query": QUERY, "documents": DOCS, "top_n": len(DOCS)}
        r = requests.post(service.url + "/v1/rerank", json=body, headers={"Authorization": auth}, timeout=120)
        assert r.status_code == 200, r.text
        check([(x["index"], x["relevance_score"]) for x in r.json()["results"]], cohere_order)


# --- NIM: what NIM itself answers for its own fields -------------------------------------------
def test_nim_truncate_none_refuses_a_passage_too_long_and_end_cuts_it(service):
    long_passage = "word " * 5000
    body = {"model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "query": {"text": QUERY},
            "passages": [{"text": DOCS[1]}, {"text": long_passage}]}
    refused = service.post("/v1/ranking", {**body, "truncate": "NONE"})
    assert refused.status_code == 422 and "passages[1]" in refused.json()["detail"]
    assert service.post("/v1/ranking", body).status_code == 422  # NONE is NIM's default
    cut = service.post("/v1/ranking", {**body, "truncate": "END"})
    assert cut.status_code == 200 and sorted(x["index"] for x in cut.json()["rankings"]) == [0, 1]


# --- Pinecone's own field ----------------------------------------------------------------------
def test_pinecone_truncate_none_refuses_and_object_documents_come_back_whole(service, cohere_order):
    docs = [{"id": f"d{i}", "text": d} for i, d in enumerate(DOCS)]
    body = {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": docs, "top_n": 4,
            "return_documents": True, "parameters": {"truncate": "END"}}
    r = post_raw(service, "/pinecone/rerank", body,
                 {"Content-Type": "application/json", "Api-Key": "k", "X-Pinecone-API-Version": "2025-04"})
    data = r.json()["data"]
    check([(x["index"], x["score"]) for x in data], cohere_order)
    assert all(x["document"] == docs[x["index"]] for x in data)
    assert r.json()["usage"] == {"rerank_units": 1}
    long_doc = {**body, "documents": [{"text": "word " * 5000}], "parameters": {"truncate": "NONE"}}
    assert service.post("/pinecone/rerank", long_doc).status_code == 422


# --- Voyage's own fields on /v1/rerank ------------------------------------------------------------
def test_voyage_truncation_false_refuses_and_top_k_cuts(service, cohere_order):
    body = {"query": QUERY, "documents": DOCS, "model": "rerank-2", "top_k": 2, "return_documents": True}
    r = service.post("/v1/rerank", body)
    assert r.status_code == 200 and r.json()["object"] == "list", r.text
    assert [x["index"] for x in r.json()["data"]] == cohere_order[0][:2]
    assert all(x["document"] == DOCS[x["index"]] for x in r.json()["data"])
    long_doc = {**body, "documents": [DOCS[0], "word " * 5000], "truncation": False}
    refused = service.post("/v1/rerank", long_doc)
    assert refused.status_code == 422 and "documents[1]" in refused.json()["detail"]
    assert service.post("/v1/rerank", {**long_doc, "truncation": True}).status_code == 200
