"""Long documents never fail a call: cut from the document text only, or chunked (max over chunks)."""

import pytest

from server.scoring.prompt import PromptEncoder
from server.settings import DEFAULT_INSTRUCTION
from tests.conftest import MAX_MODEL_LEN

pytestmark = pytest.mark.engine

QUERY = "how does the retriever interact with the reranker"


@pytest.fixture(scope="module")
def long_doc(tokenizer):
    rng_words = ("retriever reranker passage query score index vector latency cache token batch "
                 "document relevance model GPU prefix chunk window budget answer").split()
    words = [rng_words[(i * 7 + i // 13) % len(rng_words)] for i in range(18500)]
    text = " ".join(words)
    n = len(tokenizer.encode(" " + text).ids)
    assert 20000 <= n <= 21500, n
    return text


@pytest.fixture(scope="module")
def pieces(tokenizer, long_doc):
    enc = PromptEncoder(tokenizer)
    head = enc.head(QUERY, DEFAULT_INSTRUCTION)
    budget = MAX_MODEL_LEN - enc.template_tokens - len(head)
    doc_ids = enc.documents([long_doc])[0].ids
    return enc, head, budget, doc_ids


def test_20k_token_document_is_cut_keeping_both_template_ends(service, reference, long_doc, pieces):
    enc, head, budget, doc_ids = pieces
    r = service.post("/v1/rerank", {"query": QUERY, "documents": [long_doc, "short doc"]})
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    score = next(x["relevance_score"] for x in got if x["index"] == 0)
    prompt = enc.assemble(head, doc_ids[:budget])  # official prompt with the document cut
    assert len(prompt) == MAX_MODEL_LEN
    assert prompt[-9:] == enc.template_tail  # "...assistant\n<think>\n\n</think>\n\n" intact
    assert score == pytest.approx(reference.score_ids(prompt), abs=1e-3)


def test_20k_token_document_chunked_scores_max_over_chunks(service, reference, long_doc, pieces):
    enc, head, budget, doc_ids = pieces
    r = service.post("/v1/rerank", {"query": QUERY, "documents": [long_doc], "max_chunks_per_doc": 12})
    assert r.status_code == 200, r.text
    score = r.json()["results"][0]["relevance_score"]
    chunks = [doc_ids[i:i + budget] for i in range(0, len(doc_ids), budget)][:12]
    assert len(chunks) == 11  # 20k+ tokens in ~1,980-token windows
    expected = max(reference.score_ids(enc.assemble(head, c)) for c in chunks)
    assert score == pytest.approx(expected, abs=1e-3)
    cut = service.post("/v1/rerank", {"query": QUERY, "documents": [long_doc]}).json()
    assert score >= cut["results"][0]["relevance_score"] - 1e-6


def test_max_tokens_per_doc_cuts_each_document(service, reference, pieces, long_doc):
    enc, head, _, doc_ids = pieces
    r = service.post("/v2/rerank", {"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 100})
    score = r.json()["results"][0]["relevance_score"]
    assert score == pytest.approx(reference.score_ids(enc.assemble(head, doc_ids[:100])), abs=1e-3)


def test_server_setting_chunks_long_documents_when_the_request_does_not_say(extra_shim, service, long_doc):
    shim = extra_shim(chunk_long_documents="true", max_chunks_per_doc="10")
    import httpx

    by_setting = httpx.post(shim.url + "/v1/rank", json={"query": QUERY, "docs": [long_doc]}, timeout=300)
    asked = service.post("/v1/rerank", {"query": QUERY, "documents": [long_doc], "max_chunks_per_doc": 10})
    cut = service.post("/v1/rerank", {"query": QUERY, "documents": [long_doc]})
    score = by_setting.json()["results"][0]["score"]
    assert score == pytest.approx(asked.json()["results"][0]["relevance_score"], abs=1e-6)
    assert by_setting.status_code == 200 and score >= cut.json()["results"][0]["relevance_score"] - 1e-6
