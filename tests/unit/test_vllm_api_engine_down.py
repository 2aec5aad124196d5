"""vLLM's routes on the shim while the engine is down (a real port with nothing listening, the
shim in process): scoring and passed-through routes answer 503 + Retry-After in vLLM's error
shape; what the shim answers itself (/tokenize, /detokenize, /v1/models) keeps working. And
/rerank's errors take the shape of the dialect the body speaks."""

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, ensure_model, free_port


@pytest.fixture(scope="module")
def client():
    settings = Settings(model=str(ensure_model()), served_model_name=MODEL_NAME, rate_limit="",
                        vllm_url=f"http://127.0.0.1:{free_port()}", max_model_len=MAX_MODEL_LEN)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/score", {"queries": "q", "documents": ["a", "b"]}),
    ("POST", "/rerank", {"query": "q", "documents": ["a"], "use_activation": False}),
    ("POST", "/classify", {"input": "q"}),
    ("POST", "/pooling", {"input": [[1, 2, 3]]}),
    ("POST", "/invocations", {"input": "q"}),
    # vLLM renders these (with this model's template: the "query" and "document" messages)
    ("POST", "/tokenize", {"messages": [{"role": "query", "content": "q"}, {"role": "document", "content": "a"}]}),
    ("GET", "/version", None),
])
def test_engine_down_is_503_with_retry_after_in_vllms_shape(client, method, path, body):
    r = client.request(method, path, json=body)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    error = r.json()["error"]
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
    assert error["message"] == r.json()["detail"] and "engine" in r.json()["detail"]


def test_tokenizer_routes_and_model_list_work_without_the_engine(client, tokenizer):
    r = client.post("/tokenize", json={"prompt": "hello <|im_end|> 你好", "return_token_strs": True})
    assert r.status_code == 200
    ids = tokenizer.encode("hello <|im_end|> 你好").ids
    assert r.json() == {"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids,
                        "token_strs": [tokenizer.id_to_token(i) for i in ids]}
    assert client.post("/detokenize", json={"tokens": ids}).json() == {"prompt": "hello <|im_end|> 你好"}
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == MODEL_NAME and card["max_model_len"] == MAX_MODEL_LEN
    assert card["permission"][0]["object"] == "model_permission"


def test_rerank_errors_follow_the_dialect_of_the_body(client):
    tei = client.post("/rerank", json={"texts": ["a"]})
    assert tei.status_code == 422 and isinstance(tei.json()["error"], str)  # TEI's shape
    vllm = client.post("/rerank", json={"documents": ["a"]})
    assert vllm.status_code == 400 and vllm.json()["error"]["param"] == "body.query"
    cohere = client.post("/v1/rerank", json={"documents": ["a"]})
    assert cohere.status_code == 422 and cohere.json()["message"]  # Cohere's, for a plain body
    marked = client.post("/v1/rerank", json={"documents": ["a"], "use_activation": True})
    assert marked.status_code == 400 and marked.json()["error"]["param"] == "body.query"
