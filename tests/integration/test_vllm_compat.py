"""A client written for `vllm serve` works against the shim: the same request goes to the raw vLLM
the shim runs on and to the shim, and the answers must agree. Same status; every key of vLLM's
JSON is in the shim's, recursively, with the same JSON type; scores equal within 1e-6 (one
engine, one prompt). Where the shim answers differently on purpose (docs/vllm-compat.md), the
test says so in its name and asserts the shim's behaviour next to vLLM's.

Raw vLLM serves the official prompt too (the launcher passes --chat-template), so /score and
/rerank on both sides score the same prompt; /classify takes the client's own prompts.
"""

from __future__ import annotations

import math

import httpx
import pytest

from server.scoring.prompt import render
from server.settings import DEFAULT_INSTRUCTION
from tests.conftest import MAX_MODEL_LEN, MODEL_NAME

pytestmark = pytest.mark.engine

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.",
        "Berlin is the capital of Germany.",
        "The Eiffel Tower is in Paris, on the Champ de Mars.",
        "Bananas are rich in potassium."]
ZH_QUERY = "如何申请差旅报销"
ZH_DOC = "员工出差后需在OA系统提交差旅报销单，并附上发票。"
SCORE_KEYS = {"score", "relevance_score"}
TOL = 1e-6


@pytest.fixture(scope="module")
def clients(service):
    """Pooled keep-alive clients, one per side, as a real client holds them."""
    with httpx.Client(base_url=service.vllm_url, timeout=120) as raw, \
         httpx.Client(base_url=service.url, timeout=120) as shim:
        yield raw, shim


def send(client: httpx.Client, method: str, path: str, body=None, **kwargs) -> httpx.Response:
    if method == "GET":
        return client.get(path, **kwargs)
    return client.post(path, json=body, **kwargs)


def both(clients, path: str, body=None, method: str = "POST", **kwargs):
    raw, shim = clients
    return send(raw, method, path, body, **kwargs), send(shim, method, path, body, **kwargs)


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "integer" if isinstance(value, int) else "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def assert_covers(vllm, shim, where: str = "$", scores: bool = True) -> None:
    """Every key vLLM's JSON has is in the shim's, recursively, with the same JSON type; scores
    (score, relevance_score, probs, pooling data) equal within TOL unless `scores` is false."""
    if where == "$.error.param" and {json_type(shim), json_type(vllm)} <= {"null", "string"}:
        return  # vLLM's type is `str | None`: the shim, checking a body itself, names the field
    assert json_type(shim) == json_type(vllm), f"{where}: vLLM {vllm!r}, shim {shim!r}"
    if isinstance(vllm, dict):
        for key, value in vllm.items():
            assert key in shim, f"{where}.{key} missing in the shim's answer"
            if key in SCORE_KEYS and scores:
                assert shim[key] == pytest.approx(value, abs=TOL), f"{where}.{key}"
            assert_covers(value, shim[key], f"{where}.{key}", scores)
    elif isinstance(vllm, list):
        assert len(shim) == len(vllm), f"{where}: {len(vllm)} items from vLLM, {len(shim)} from the shim"
        for i, (a, b) in enumerate(zip(vllm, shim)):
            if isinstance(a, float) and scores:
                assert b == pytest.approx(a, abs=TOL), f"{where}[{i}]"
            assert_covers(a, b, f"{where}[{i}]", scores)


def assert_same(raw: httpx.Response, shim: httpx.Response, scores: bool = True) -> tuple:
    assert shim.status_code == raw.status_code, (raw.text[:400], shim.text[:400])
    vllm_json, shim_json = raw.json(), shim.json()
    assert_covers(vllm_json, shim_json, scores=scores)
    if raw.status_code != 200:  # the shim adds what its own clients read
        assert shim_json["detail"] and shim_json["error"]["code"] == shim.status_code
    return vllm_json, shim_json


def scores_of(answer: dict) -> dict[int, float]:
    if "results" in answer:
        return {r["index"]: r["relevance_score"] for r in answer["results"]}
    return {d["index"]: d["score"] for d in answer["data"]}


# --- /score -------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"queries": QUERY, "documents": DOCS[0]},                              # 1:1
    {"queries": QUERY, "documents": DOCS},                                 # 1:N
    {"queries": [QUERY], "documents": DOCS},                               # 1:N, query as a list
    {"queries": [QUERY, "capital of Germany", QUERY, "fruit"], "documents": DOCS},  # N:N
    {"queries": QUERY, "items": DOCS[:2]},
    {"data_1": QUERY, "data_2": DOCS[:2]},
    {"text_1": [QUERY, "fruit"], "text_2": [DOCS[3], DOCS[3]]},           # legacy names, N:N
    {"queries": ZH_QUERY, "documents": [ZH_DOC, DOCS[0]]},
    {"model": MODEL_NAME, "queries": QUERY, "documents": DOCS, "priority": 5},
], ids=["1:1", "1:N", "1:N-list", "N:N", "items", "data", "text-N:N", "chinese", "priority"])
def test_score_matches_vllm(clients, body):
    vllm, shim = assert_same(*both(clients, "/score", body))
    assert [d["index"] for d in shim["data"]] == list(range(len(vllm["data"])))  # input order
    assert shim["usage"]["prompt_tokens"] == vllm["usage"]["prompt_tokens"]   # the same prompts
    assert shim["id"].startswith("score-") and shim["object"] == "list"


def test_v1_score_alias_and_request_ids_echo_like_vllm(clients):
    body = {"queries": QUERY, "documents": DOCS[:2], "request_id": "client-id-1"}
    vllm, shim = assert_same(*both(clients, "/v1/score", body))
    assert shim["id"] == vllm["id"] == "score-client-id-1"
    vllm, shim = assert_same(*both(clients, "/rerank", body | {"query": QUERY},
                                   headers={"X-Request-Id": "header-id-2"}))
    assert shim["id"] == vllm["id"] == "score-header-id-2"  # the header wins, as on vLLM


def test_use_activation_false_gives_the_raw_logit_margin_both_ways(clients):
    margins = assert_same(*both(clients, "/score", {"queries": QUERY, "documents": DOCS,
                                                    "use_activation": False}))[1]
    probs = assert_same(*both(clients, "/score", {"queries": QUERY, "documents": DOCS,
                                                  "use_activation": True}))[1]
    for m, p in zip(margins["data"], probs["data"]):
        assert 1 / (1 + math.exp(-m["score"])) == pytest.approx(p["score"], abs=1e-5)


def test_instruction_field_and_template_kwarg_match_vllm(clients):
    ins = "Given a question about geography, retrieve the answer"
    top = assert_same(*both(clients, "/score", {"queries": QUERY, "documents": DOCS, "instruction": ins}))[1]
    kw = assert_same(*both(clients, "/score", {"queries": QUERY, "documents": DOCS, "instruction": "x",
                                               "chat_template_kwargs": {"instruction": ins}}))[1]
    assert scores_of(top) == pytest.approx(scores_of(kw), abs=TOL)  # the kwarg wins over the field


# --- /rerank, /v1/rerank, /v2/rerank --------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"model": MODEL_NAME, "query": QUERY, "documents": DOCS},
    {"query": QUERY, "documents": DOCS, "top_n": 2},
    {"query": QUERY, "documents": DOCS, "top_n": 10},
    {"query": QUERY, "documents": DOCS, "use_activation": False},
    {"query": QUERY, "documents": DOCS[0]},                   # one document, not a list
    {"query": ZH_QUERY, "documents": [ZH_DOC, DOCS[0]], "max_tokens_per_query": 3},
], ids=["plain", "top_n", "top_n-over", "raw", "single", "chinese-query-cut"])
def test_rerank_matches_vllm(clients, body):
    vllm, shim = assert_same(*both(clients, "/rerank", body))
    assert [r["index"] for r in shim["results"]] == [r["index"] for r in vllm["results"]]
    assert shim["usage"] == vllm["usage"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_vllm_bodies_on_v1_v2_rerank_get_vllm_answers(clients, path):
    body = {"query": QUERY, "documents": DOCS, "top_n": 3, "use_activation": True}
    shim = assert_same(*both(clients, path, body))[1]
    assert shim["meta"]["billed_units"]["search_units"] == 1  # and Cohere's envelope


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_plain_bodies_on_v1_v2_rerank_stay_cohere_without_documents_on_purpose(clients, path):
    raw, shim = both(clients, path, {"query": QUERY, "documents": DOCS})
    vllm_json = raw.json()
    for item in vllm_json["results"]:
        del item["document"]  # Cohere's default (return_documents false): documents left out
    assert_covers(vllm_json, shim.json())
    assert all("document" not in r for r in shim.json()["results"])


def test_return_documents_false_is_honoured_on_purpose(clients):
    raw, shim = both(clients, "/rerank", {"query": QUERY, "documents": DOCS, "return_documents": False})
    assert all("document" in r for r in raw.json()["results"])   # vLLM ignores the field
    assert all("document" not in r for r in shim.json()["results"])
    assert scores_of(shim.json()) == pytest.approx(scores_of(raw.json()), abs=TOL)


# --- long inputs: the shim cuts the document only, raw vLLM refuses or cuts the template -----------
LONG_DOC = "Paris hosts museums, bridges and cafes along the river Seine. " * 400  # ~5k tokens


def test_over_long_document_is_cut_not_refused_on_purpose(clients):
    body = {"query": QUERY, "documents": [LONG_DOC, DOCS[1]]}
    raw, shim = both(clients, "/rerank", body)
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "input_tokens"
    assert shim.status_code == 200
    answer = shim.json()
    long_score = scores_of(answer)[0]
    # The shim kept the template and query whole and cut the document to what fits: exactly
    # what raw vLLM scores when told to cut the document to that many tokens.
    overhead = both(clients, "/rerank", {"query": QUERY, "documents": ["Paris"]})[1].json()["usage"]["prompt_tokens"] - 1
    fitted = clients[0].post("/rerank", json=body | {"documents": [LONG_DOC],
                                                      "max_tokens_per_doc": MAX_MODEL_LEN - overhead})
    assert fitted.status_code == 200, fitted.text
    assert fitted.json()["usage"]["prompt_tokens"] == MAX_MODEL_LEN
    assert long_score == pytest.approx(fitted.json()["results"][0]["relevance_score"], abs=TOL)


def test_truncate_prompt_tokens_cuts_only_the_document_on_purpose(clients):
    limit = 200
    body = {"queries": QUERY, "documents": LONG_DOC, "truncate_prompt_tokens": limit}
    vllm, ours = assert_same(*both(clients, "/score", body), scores=False)  # on purpose: see below
    assert vllm["usage"]["prompt_tokens"] == ours["usage"]["prompt_tokens"] == limit
    overhead = clients[1].post("/score", json={"queries": QUERY, "documents": "Paris"}).json()["usage"]["prompt_tokens"] - 1
    doc_only = clients[0].post("/score", json={"queries": QUERY, "documents": LONG_DOC,
                                               "max_tokens_per_doc": limit - overhead}).json()
    assert ours["data"][0]["score"] == pytest.approx(doc_only["data"][0]["score"], abs=TOL)
    # raw vLLM cut the prompt's end (the template's "assistant" turn): another score
    assert abs(vllm["data"][0]["score"] - ours["data"][0]["score"]) > TOL


def test_a_cap_below_template_and_query_leaves_the_document_one_token(clients):
    """vLLM scores any cap >= 1 (cutting into the template); the shim keeps the template,
    instruction and query whole and gives the document its first token, so every cap the
    document allows is answered."""
    body = {"queries": QUERY, "documents": DOCS[0], "truncate_prompt_tokens": 1}
    raw, shim = both(clients, "/score", body)
    assert raw.status_code == shim.status_code == 200, shim.text
    overhead = clients[1].post("/score", json={"queries": QUERY, "documents": "Paris"}).json()["usage"]["prompt_tokens"] - 1
    assert shim.json()["usage"]["prompt_tokens"] == overhead + 1
    one = clients[1].post("/score", json={"queries": QUERY, "documents": DOCS[0], "max_tokens_per_doc": 1}).json()
    assert shim.json()["data"][0]["score"] == pytest.approx(one["data"][0]["score"], abs=TOL)


# --- /tokenize, /detokenize ------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"prompt": render(QUERY, DOCS[0], DEFAULT_INSTRUCTION)},
    {"prompt": "hello <|im_end|> " + ZH_DOC, "return_token_strs": True},
    {"prompt": "no specials", "add_special_tokens": False, "model": MODEL_NAME},
    {"prompt": ""},
])
def test_tokenize_gives_vllms_ids(clients, body):
    vllm, shim = assert_same(*both(clients, "/tokenize", body))
    assert shim["tokens"] == vllm["tokens"] and shim["max_model_len"] == MAX_MODEL_LEN


@pytest.mark.parametrize("tokens", [[785, 6722, 315, 9625, 151645, 198], [], [14990, 999_999_999]])
def test_detokenize_gives_vllms_text(clients, tokens):
    vllm, shim = assert_same(*both(clients, "/detokenize", {"tokens": tokens}))
    assert shim["prompt"] == vllm["prompt"]


# --- /classify, /pooling: the client's own prompts --------------------------------------------------
def test_classify_and_pooling_of_own_prompts_match_vllm(clients):
    raw, _ = clients
    ids = [raw.post("/tokenize", json={"prompt": render(QUERY, d, DEFAULT_INSTRUCTION)}).json()["tokens"]
           for d in DOCS[:2]]
    for path, body in [("/classify", {"model": MODEL_NAME, "input": ids}),
                       ("/classify", {"input": render(QUERY, DOCS[0], DEFAULT_INSTRUCTION),
                                      "use_activation": False}),
                       ("/pooling", {"input": ids, "task": "classify"})]:
        vllm, shim = assert_same(*both(clients, path, body))
        assert shim["usage"] == vllm["usage"]
    # the official prompt's ids score what /rerank scores
    classify = clients[1].post("/classify", json={"input": ids}).json()
    rerank = scores_of(clients[1].post("/rerank", json={"query": QUERY, "documents": DOCS[:2]}).json())
    assert [d["probs"][0] for d in classify["data"]] == pytest.approx([rerank[0], rerank[1]], abs=TOL)


# --- /invocations, /version, /v1/models ------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"query": QUERY, "documents": DOCS, "top_n": 2},          # rerank
    {"queries": QUERY, "documents": DOCS},                     # score
    {"text_1": QUERY, "text_2": DOCS[:2]},                     # score, legacy names
    {"input": [render(QUERY, DOCS[0], DEFAULT_INSTRUCTION)]},  # classify
    {"input": "x", "query": QUERY, "documents": DOCS},         # classify comes first
    {"nothing": "that fits"},                                  # vLLM says what it expects
], ids=["rerank", "score", "score-text", "classify", "classify-first", "no-fit"])
def test_invocations_dispatch_like_vllm(clients, body):
    vllm, shim = assert_same(*both(clients, "/invocations", body))
    if "object" in vllm and vllm["object"] == "list":
        assert shim["id"].split("-")[0] == vllm["id"].split("-")[0]  # same kind of answer


def test_version_and_models_as_vllm_lists_them(clients):
    vllm, shim = assert_same(*both(clients, "/version", method="GET"))
    assert shim == vllm
    vllm, shim = assert_same(*both(clients, "/v1/models", method="GET"))
    for key in ("id", "root", "max_model_len", "owned_by"):
        assert shim["data"][0][key] == vllm["data"][0][key], key


# --- bad bodies: the same status, vLLM's error object, plus our detail ------------------------------
@pytest.mark.parametrize("path,body", [
    ("/score", {"queries": QUERY}),                                   # missing field
    ("/score", {"documents": DOCS}),
    ("/score", {"queries": QUERY, "documents": [1, 2]}),              # wrong types
    ("/score", {"queries": QUERY, "documents": DOCS, "use_activation": "maybe"}),
    ("/score", [QUERY, DOCS]),
    ("/score", {"queries": [], "documents": DOCS}),                   # empty lists
    ("/score", {"queries": QUERY, "documents": []}),
    ("/score", {"queries": [QUERY, QUERY], "documents": DOCS}),       # 2:4 pairs
    ("/score", {"queries": {"content": [{"type": "text", "text": QUERY}]}, "documents": DOCS}),
    ("/score", {"queries": QUERY, "documents": DOCS, "truncate_prompt_tokens": MAX_MODEL_LEN + 1}),
    ("/score", {"queries": QUERY, "documents": DOCS, "truncate_prompt_tokens": -2}),
    ("/score", {"queries": QUERY, "documents": DOCS, "truncate_prompt_tokens": 0}),
    ("/score", {"queries": QUERY, "documents": DOCS, "priority": 2**64}),
    ("/score", {"queries": QUERY, "documents": DOCS, "cache_salt": ""}),
    ("/score", {"queries": QUERY, "documents": DOCS, "chat_template_kwargs": {"tokenize": True}}),
    ("/v1/score", {"text_1": QUERY}),
    ("/rerank", {"documents": DOCS}),
    ("/rerank", {"query": QUERY, "documents": []}),
    ("/rerank", {"query": QUERY, "documents": DOCS, "top_n": -1}),
    ("/rerank", {"query": QUERY, "documents": [{"content": [{"type": "text", "text": "x"}]}]}),
    ("/v1/rerank", {"query": QUERY, "documents": [], "use_activation": True}),
    ("/v2/rerank", {"documents": DOCS, "request_id": "r"}),
    ("/tokenize", {}),
    ("/tokenize", {"prompt": 5}),
    ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}),   # passed to vLLM: its error
    ("/detokenize", {"tokens": "abc"}),
    ("/detokenize", {"tokens": [-1]}),
    ("/detokenize", {"tokens": [2**32]}),
    ("/classify", {"input": "x", "normalize": True}),
    ("/classify", {}),
    ("/pooling", {"input": "x", "task": "score"}),
    ("/invocations", []),
])
def test_bad_bodies_fail_as_on_vllm(clients, path, body):
    raw, shim = both(clients, path, body)
    assert raw.status_code == 400, raw.text[:300]
    assert_same(raw, shim)


def test_malformed_json_fails_as_on_vllm(clients):
    raw, shim = (c.post("/score", content=b'{"queries": "q", "documents": [',
                        headers={"content-type": "application/json"}) for c in clients)
    assert_same(raw, shim)


def test_empty_query_is_refused_on_purpose(clients):
    raw, shim = both(clients, "/score", {"queries": "", "documents": DOCS[:1]})
    assert raw.status_code == 200                 # vLLM scores an empty query
    assert shim.status_code == 400 and shim.json()["error"]["message"] == shim.json()["detail"]


def test_unknown_model_name_is_accepted_on_purpose(clients):
    raw, shim = both(clients, "/score", {"model": "someone-elses", "queries": QUERY, "documents": DOCS[:1]})
    assert raw.status_code == 404                 # vLLM 0.32 (0.26 accepts it, as the shim does)
    assert shim.status_code == 200 and shim.json()["model"] == MODEL_NAME
