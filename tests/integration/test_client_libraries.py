"""Real client libraries from PyPI, pointed at the service by their own base-URL settings as
docs/integrations.md says: Haystack's NvidiaRanker (nvidia-haystack), CohereRanker
(cohere-haystack) and HuggingFaceTEIRanker (huggingface-api-haystack), LangChain's
NVIDIARerank (langchain-nvidia-ai-endpoints), the `rerankers` API
providers (Voyage, Mixedbread, Pinecone, Cohere, Jina, TEI), the `voyageai`, `mixedbread` and
`pinecone` SDKs. Every check: one score per document, valid indices, the same ordering (and
scores) as /v1/rerank for the same pairs. Real vLLM (CPU build)."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.engine

QUERY = "what is the capital of the United States?"
DOCS = ["Carson City is the capital city of the American state of Nevada.",
        "Washington, D.C. is the capital of the United States.",
        "Capital punishment has existed in the United States since before it was a country.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific."]


@pytest.fixture(scope="module")
def truth(service) -> tuple[list[int], dict[int, float]]:
    """/v1/rerank's ranking and P(yes) scores of QUERY x DOCS."""
    results = service.post("/v1/rerank", {"query": QUERY, "documents": DOCS}).json()["results"]
    return [x["index"] for x in results], {x["index"]: x["relevance_score"] for x in results}


def check(pairs: list[tuple[int, float]], truth, n: int = len(DOCS), logits: bool = False) -> None:
    """(index, score) as the library returned them, in its order."""
    order, scores = truth
    assert len(pairs) == n and sorted(i for i, _ in pairs) == list(range(n)), pairs
    assert [i for i, _ in pairs] == order  # the library's order is /v1/rerank's
    for i, s in pairs:
        expected = math.log(scores[i] / (1 - scores[i])) if logits else scores[i]
        assert s == pytest.approx(expected, abs=1e-4), (i, s, expected)


# --- Haystack ------------------------------------------------------------------------------------
def test_haystack_nvidia_ranker(service, truth):
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.nvidia import NvidiaRanker

    # a self-hosted NIM's base URL ends in /v1; the ranker posts to {api_url}/ranking
    ranker = NvidiaRanker(api_url=service.url + "/v1", api_key=Secret.from_token("any-key"),
                          top_k=len(DOCS), truncate="END")
    docs = _haystack_documents()
    ranked = ranker.run(query=QUERY, documents=docs)["documents"]
    check([(d.meta["i"], d.score) for d in ranked], truth, logits=True)
    assert [d.content for d in ranker.run(query=QUERY, documents=docs, top_k=2)["documents"]] == \
        [DOCS[i] for i in truth[0][:2]]


def _haystack_documents():
    from haystack import Document

    return [Document(content=d, meta={"i": i}) for i, d in enumerate(DOCS)]


def test_haystack_cohere_ranker(service, truth):
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    ranker = CohereRanker(api_base_url=service.url, api_key=Secret.from_token("any-key"), top_k=len(DOCS))
    ranked = ranker.run(query=QUERY, documents=_haystack_documents())["documents"]
    check([(d.meta["i"], d.score) for d in ranked], truth)


def test_haystack_huggingface_tei_ranker(service, truth):
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker

    ranker = HuggingFaceTEIRanker(url=service.url, token=Secret.from_token("any-key"), top_k=len(DOCS))
    ranked = ranker.run(query=QUERY, documents=_haystack_documents())["documents"]
    check([(d.meta["i"], d.score) for d in ranked], truth)


# --- LangChain ----------------------------------------------------------------------------------
def test_langchain_nvidia_rerank(service, truth):
    import warnings

    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    with warnings.catch_warnings():  # it warns that a self-hosted model is not in its hosted table
        warnings.simplefilter("ignore")
        ranker = NVIDIARerank(base_url=service.url + "/v1", api_key="any-key", top_n=len(DOCS),
                              truncate="END")
    docs = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)]
    ranked = ranker.compress_documents(documents=docs, query=QUERY)
    check([(d.metadata["i"], d.metadata["relevance_score"]) for d in ranked], truth, logits=True)


# --- rerankers (AnswerDotAI) ---------------------------------------------------------------------
def _rerankers_pairs(ranker) -> list[tuple[int, float]]:
    ranked = ranker.rank(query=QUERY, docs=DOCS)
    return [(r.document.doc_id, r.score) for r in ranked.results]


@pytest.mark.parametrize("provider, path", [("voyage", "/v1/rerank"), ("cohere", "/v1/rerank"),
                                            ("jina", "/v1/rerank"), ("pinecone", "/pinecone/rerank"),
                                            ("text-embeddings-inference", "/rerank")])
def test_rerankers_api_providers(service, truth, provider, path):
    from rerankers import Reranker

    ranker = Reranker("qwen3-reranker", model_type=provider, api_key="any-key", url=service.url + path,
                      verbose=0)
    check(_rerankers_pairs(ranker), truth)


def test_rerankers_mixedbread_provider(service, truth):
    # rerankers' Reranker(model_type="mixedbread.ai") cannot build its ranker (its own KeyError);
    # the provider's request and parsing are its APIRanker, used directly
    from rerankers.models.api_rankers import APIRanker

    ranker = APIRanker("mixedbread-ai/mxbai-rerank-large-v2", api_key="any-key", api_provider="mixedbread.ai",
                       url=service.url + "/v1/reranking", verbose=0)
    check(_rerankers_pairs(ranker), truth)


# --- vendor SDKs ---------------------------------------------------------------------------------
def test_voyageai_sdk(service, truth):
    import voyageai

    client = voyageai.Client(api_key="any-key", base_url=service.url + "/v1", max_retries=0)
    result = client.rerank(QUERY, DOCS, model="rerank-2", top_k=len(DOCS))
    check([(r.index, r.relevance_score) for r in result.results], truth)
    assert all(r.document == DOCS[r.index] for r in result.results)
    assert result.total_tokens > 0
    top = client.rerank(QUERY, DOCS, model="rerank-2", top_k=2, truncation=True)
    assert [r.index for r in top.results] == truth[0][:2]


def test_mixedbread_sdk(service, truth):
    from mixedbread import Mixedbread

    client = Mixedbread(api_key="any-key", base_url=service.url, max_retries=0)
    result = client.rerank(model="mixedbread-ai/mxbai-rerank-large-v2", query=QUERY, input=DOCS,
                           top_k=len(DOCS), return_input=True)
    check([(r.index, r.score) for r in result.data], truth)
    assert all(r.input == DOCS[r.index] for r in result.data)
    assert result.usage.total_tokens > 0 and result.return_input is True


def test_pinecone_sdk(service, truth):
    from pinecone import Pinecone

    pc = Pinecone(api_key="any-key", host=service.url + "/pinecone")
    result = pc.inference.rerank(model="bge-reranker-v2-m3", query=QUERY, documents=DOCS,
                                 top_n=len(DOCS), return_documents=True)
    check([(r.index, r.score) for r in result.data], truth)
    assert all(r.document["text"] == DOCS[r.index] for r in result.data)
    assert result.usage.rerank_units == 1
