"""Score fidelity: the service's scores equal the official scoring computed with transformers on
the same weights (softmax over the "no"/"yes" logits of the last token), within 1e-3."""

import httpx
import pytest

from tests.conftest import MAX_MODEL_LEN, MODEL_NAME

pytestmark = pytest.mark.engine

PAIRS = {
    "english": ("what is the capital of France", "Paris is the capital and largest city of France.", None),
    "chinese": ("如何申请差旅报销", "员工出差前需在OA系统提交差旅申请，返回后凭发票报销。", None),
    "custom_instruction": ("python sort list", "Use sorted() to get a new sorted list.",
                           "Given a programming question, retrieve code snippets that answer it"),
}


def long_document(tokenizer, tokens: int) -> str:
    words = ("Retrieval augmented generation combines a retriever with a generator; the reranker "
             "orders candidate passages by relevance before they reach the language model. ").split()
    text = " ".join(words[i % len(words)] for i in range(tokens))
    while len(tokenizer.encode(" " + text).ids) > tokens:
        text = text[: int(len(text) * 0.95)]
    return text


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_service_score_equals_transformers_reference(service, reference, case):
    query, doc, instruction = PAIRS[case]
    body = {"query": query, "docs": [doc]} | ({"instruction": instruction} if instruction else {})
    got = service.post("/v1/rank", body).json()["results"][0]["score"]
    assert got == pytest.approx(reference.score(query, doc, instruction), abs=1e-3)


def test_long_document_score_equals_reference(service, reference, tokenizer):
    doc = long_document(tokenizer, MAX_MODEL_LEN - 200)  # long, but fits: no cut on either side
    got = service.post("/v1/rank", {"query": "what does a reranker do", "docs": [doc]}).json()
    assert got["results"][0]["score"] == pytest.approx(
        reference.score("what does a reranker do", doc), abs=1e-3)


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_vllm_own_rerank_with_shipped_template_equals_reference(service, reference, case):
    """vLLM's /rerank (rendering our --chat-template itself) scores the official prompt too."""
    query, doc, instruction = PAIRS[case]
    body = {"model": MODEL_NAME, "query": query, "documents": [doc]}
    if instruction:
        body["instruction"] = instruction
    got = httpx.post(service.vllm_url + "/rerank", json=body, timeout=60).json()
    assert got["results"][0]["relevance_score"] == pytest.approx(
        reference.score(query, doc, instruction), abs=1e-3)


def test_vllm_scores_the_same_token_ids_as_the_reference(service, reference):
    """/tokenize of the rendered prompt on vLLM gives the official token ids."""
    from server.scoring.prompt import render
    from server.settings import DEFAULT_INSTRUCTION

    query, doc, _ = PAIRS["chinese"]
    text = render(query, doc, DEFAULT_INSTRUCTION)
    got = httpx.post(service.vllm_url + "/tokenize",
                     json={"model": MODEL_NAME, "prompt": text, "add_special_tokens": True}, timeout=30).json()
    assert got["tokens"] == reference.ids(query, doc)


def test_rerank_engine_api_gives_the_same_scores_as_the_token_path(service, extra_shim):
    """--engine-api rerank (vLLM renders the template) and the default token path agree."""
    shim = extra_shim(engine_api="rerank")
    for query, doc, instruction in PAIRS.values():
        body = {"query": query, "docs": [doc, "unrelated text"]}
        if instruction:
            body["instruction"] = instruction
        via_text = {r["doc"]: r["score"] for r in httpx.post(shim.url + "/v1/rank", json=body).json()["results"]}
        via_ids = {r["doc"]: r["score"] for r in service.post("/v1/rank", body).json()["results"]}
        assert via_text == pytest.approx(via_ids, abs=1e-5)
