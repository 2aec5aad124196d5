"""The OpenAPI document describes what the server really answers (fake engine to force faults).

Registry-driven: every route of every dialect in server/dialects is checked, so a new dialect is
covered by registering it with its `error_model` (and, for a route that is not a plain scoring
route, its `answers`). Real error bodies (malformed JSON, invalid UTF-8, body and token limits,
schema violations, engine faults, vLLM's own refusals on relayed routes, auth, rate limit) are
produced by the running app and validated against the schema the document gives for that path and
status, in the shape of the dialect the body speaks, with the headers it promises."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.config import SchemathesisConfig

from server.app import create_app, watch_engine_once
from server.dialects import DIALECTS, vllm
from server.dialects.vllm.protocol import SCORE_PAIRS
from server.openapi import ENGINE, JSON_BODY, RELAYED, SCORED, SETTING_BOUNDS, finish, route_kinds
from server.scoring import errors as domain
from server.settings import DEFAULT_INSTRUCTION
from tests.conftest import MAX_MODEL_LEN, ROOT
from tests.inprocess.conftest import FakeEngine, _shared_encoder, running, settings

pytestmark = pytest.mark.anyio

PATHS = [(d, path) for d in DIALECTS for path in d.paths]
KEY = "k-openapi"
# request models whose bodies get vLLM's errors on a route another dialect owns (/rerank's seed
# body, a vLLM body on /v1|v2/rerank): common.errors_as
VLLM_BODIES = {"SeedRequest", "VllmRerankRequest"}
CHAT = {"messages": [{"role": "query", "content": "capital of France"},
                     {"role": "document", "content": "Paris is the capital of France."}]}
VLLM_400 = {"error": {"message": "The decoder prompt cannot be empty", "type": "BadRequestError",
                      "param": None, "code": 400}}
VLLM_404 = {"error": {"message": "The model `x` does not exist.", "type": "NotFoundError",
                      "param": "model", "code": 404}}


def document(**overrides) -> dict:
    """The OpenAPI document of an app with these settings (built in create_app: no start-up)."""
    return create_app(settings(**overrides), engine_factory=lambda s: FakeEngine()).openapi()


# --- reading the document ------------------------------------------------------------------------
def operation(spec: dict, path: str) -> dict:
    (op,) = spec["paths"][path].values()
    return op


def validator(spec: dict, schema: dict):
    """A validator for `schema` whose $refs resolve in the document's components (jsonschema_rs:
    the Rust validator schemathesis itself uses, ECMA-style regular expressions)."""
    return jsonschema_rs.validator_for({**schema, "components": spec["components"]})


def resolve(spec: dict, node: dict) -> dict:
    """A `$ref` to a component (a shared header) resolved; anything else as it is."""
    ref = node.get("$ref", "")
    if not ref.startswith("#/components/"):
        return node
    _, kind, name = ref[len("#/"):].split("/")
    return spec["components"][kind][name]


def body_schema(spec: dict, path: str) -> dict:
    return operation(spec, path)["requestBody"]["content"]["application/json"]["schema"]


def request_models(spec: dict, path: str) -> list[str]:
    """The request models of a path's body: each alternative is a model, or a model with a
    condition ({"allOf": [model], "not": ...})."""
    schema = body_schema(spec, path)
    alternatives = [schema] if "$ref" in schema else schema.get("anyOf") or schema.get("oneOf")
    refs = [a if "$ref" in a else a["allOf"][0] for a in alternatives]
    return [r["$ref"].rsplit("/", 1)[1] for r in refs]


def example(spec: dict, path: str, model: str | None = None) -> dict:
    """The first request example the document gives for `path` (of request `model`, if named)."""
    for name in request_models(spec, path):
        examples = spec["components"]["schemas"][name].get("examples")
        if examples and model in (None, name):
            return dict(examples[0])
    raise AssertionError(f"no example for {path} {model or ''}")


def cases(spec: dict) -> list[tuple]:
    """(dialect, path, request model, example) for every registered body route and every body
    model of it that carries an example, with the dialect whose shape its errors take."""
    out = []
    for dialect, path in PATHS:
        if "post" not in spec["paths"][path]:
            continue
        for name in request_models(spec, path):
            examples = spec["components"]["schemas"][name].get("examples")
            if examples:
                shape = vllm.DIALECT if dialect.shared_with and name in VLLM_BODIES else dialect
                out.append((dialect, path, name, dict(examples[0]), shape))
    return out


def documents_key(spec: dict, model: str, body: dict) -> str | None:
    """The field of `body` that is the documents list (the one the document bounds by maxItems)."""
    if "documents" in body:
        return "documents"
    for name, prop in spec["components"]["schemas"][model]["properties"].items():
        branches = [prop, *prop.get("anyOf", [])]
        if name in body and any("maxItems" in b for b in branches):
            return name
    return None


def assert_documented(spec: dict, path: str, r, shape=None) -> None:
    """The response's status is documented for `path`, its body validates against that status's
    schema (and, for an error, against the error model of `shape`, the dialect that shapes it),
    and every header documented as required is there."""
    responses = operation(spec, path)["responses"]
    assert str(r.status_code) in responses, (path, r.status_code, r.text, sorted(responses))
    documented = responses[str(r.status_code)]
    schema = documented["content"]["application/json"]["schema"]
    errors = [e.message for e in validator(spec, schema).iter_errors(r.json())]
    assert not errors, (path, r.status_code, r.text, errors)
    if shape is not None:
        shape.error_model.model_validate(r.json())  # the shape of the body's dialect, exactly
    for name, header in documented.get("headers", {}).items():
        if resolve(spec, header).get("required"):
            assert name.lower() in r.headers, (path, r.status_code, name)
    if r.status_code >= 400:
        assert r.json()["detail"], r.text  # a sentence a client can show, in every dialect's shape


# --- the document --------------------------------------------------------------------------------
_GUARD = {"401", "429"}
_BODY = {"400", "413"}
_CORE = {"502", "503", "504"}
# What each registered route answers besides its 200 with auth and a rate limit on: the shim's
# own dialects answer schema errors with 422, vLLM's (and vLLM bodies) with 400; vLLM's 404 is an
# unknown `model` on a route passed to vLLM. A new route is added here with what it answers.
STATUSES = {
    "/v1/rank": _GUARD | _BODY | {"422"} | _CORE,
    "/v1/rerank": _GUARD | _BODY | {"422"} | _CORE,
    "/v2/rerank": _GUARD | _BODY | {"422"} | _CORE,
    "/rerank": _GUARD | _BODY | {"422"} | _CORE,
    "/score": _GUARD | _BODY | _CORE,
    "/v1/score": _GUARD | _BODY | _CORE,
    "/invocations": _GUARD | _BODY | {"404"} | _CORE,
    "/tokenize": _GUARD | _BODY | {"404", "503", "504"},
    "/classify": _GUARD | _BODY | {"404", "503", "504"},
    "/pooling": _GUARD | _BODY | {"404", "503", "504"},
    "/detokenize": _GUARD | _BODY,
    "/version": _GUARD | {"503", "504"},
    "/v1/models": _GUARD,
    "/v1/ranking": _GUARD | _BODY | {"422"} | _CORE,
    "/hf/rerank": _GUARD | _BODY | {"422"} | _CORE,
    "/weaviate/rerank": _GUARD | _BODY | {"422"} | _CORE,
    "/weaviate/.well-known/ready": _GUARD | {"503", "504"},
    "/weaviate/meta": _GUARD,
    "/v1/reranking": _GUARD | _BODY | {"422"} | _CORE,
    "/pinecone/rerank": _GUARD | _BODY | {"422"} | _CORE,
}


def test_every_route_documents_the_statuses_it_answers_with_the_models_of_the_shapes():
    spec = document(api_keys=[KEY], rate_limit="100/minute")
    for dialect, path in PATHS:
        responses = operation(spec, path)["responses"]
        assert set(responses) - {"200"} == STATUSES[path], (path, sorted(responses))
        for status in STATUSES[path]:
            content = responses[status]["content"]
            assert list(content) == ["application/json"]
            schema = content["application/json"]["schema"]
            refs = [schema] if "$ref" in schema else schema["anyOf"]
            models = {r["$ref"].rsplit("/", 1)[1] for r in refs}
            # on a route shared with vLLM bodies, what is decided before the body is read (auth,
            # rate limit) and the shim's 422 take the owner's shape; the rest either shape
            shapes = [dialect]
            if dialect.shared_with and status not in ("401", "429", "422"):
                shapes += dialect.shared_with
            assert models == {s.error_model.__name__ for s in shapes}, (path, status, models)
            for shape in shapes:  # each shape function produces what its model documents
                _, body = shape.error(int(status), "a sentence", "kind", "req-1")
                shape.error_model.model_validate(body)
        for status, header in (("401", "WWW-Authenticate"), ("429", "Retry-After"), ("503", "Retry-After")):
            if status in responses:
                assert resolve(spec, responses[status]["headers"][header])["required"] is True, (path, status)


def test_auth_and_rate_limit_statuses_are_documented_only_when_on():
    spec, limited = document(rate_limit=""), document(rate_limit="5/minute")
    for _, path in PATHS:
        assert not {"401", "429"} & set(operation(spec, path)["responses"]), path
        assert "401" not in operation(limited, path)["responses"], path
        assert "429" in operation(limited, path)["responses"], path
        # rate limiting alone is no auth: no security scheme the server does not check
        assert "security" not in operation(limited, path), path
    assert "securitySchemes" not in limited.get("components", {})


def test_no_fastapi_validation_error_and_x_request_id_on_every_response():
    spec = document(api_keys=[KEY], rate_limit="5/minute")
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text and "ValidationError" not in spec["components"]["schemas"]
    assert SETTING_BOUNDS not in text  # every per-deployment bound was filled in (or left out)
    assert spec["components"]["headers"]["X-Request-Id"]["required"] is True
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                header = response.get("headers", {}).get("X-Request-Id")
                assert header == {"$ref": "#/components/headers/X-Request-Id"}, (method, path, status)


def test_x_priority_is_documented_where_the_core_scores():
    spec = document()
    for dialect, path in PATHS:
        names = [p["name"] for p in operation(spec, path).get("parameters", [])]
        assert ("X-Priority" in names) == (SCORED in route_kinds(dialect, path)), path


def test_a_route_outside_the_registry_gets_the_error_model_not_http_validation_error():
    app = FastAPI()

    @app.get("/items")
    async def items(limit: int = 10):  # a query parameter: FastAPI adds its own 422
        return []

    document = finish(app.openapi(), {}, registered=set(), scored=set())
    schema = document["paths"]["/items"]["get"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorBody"}
    assert set(document["components"]["schemas"]) == {"ErrorBody"}


# --- request constraints: the document and the server agree --------------------------------------
# One app for the request tests below (the start-up, mostly the tokenizer, is the slow part).
@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
async def served(anyio_backend):
    """(spec, client, fake) of an app with max_documents=3."""
    async with running(max_documents=3) as (_, client, fake):
        yield (await client.get("/openapi.json")).json(), client, fake


def agree(spec: dict, path: str, sent, r) -> bool:
    """The document's verdict on a body (jsonschema_rs) is the server's (200 or not)."""
    return validator(spec, body_schema(spec, path)).is_valid(sent) == (r.status_code == 200)


async def test_bounds_that_need_the_tokenizer_are_filled_in_at_start_up(served):
    spec, _, _ = served
    ids = spec["components"]["schemas"]["ClassifyRequest"]["properties"]["input"]["anyOf"][2]["items"]
    assert ids["maximum"] == 151668  # the Qwen3 tokenizer's last id; vLLM refuses larger ones
    assert "maximum" not in json.dumps(document()["components"]["schemas"]["ClassifyRequest"]
                                       ["properties"]["input"]["anyOf"][2]["items"])


async def test_documents_bounds_are_the_deployments_and_the_server_enforces_them(served):
    spec, client, _ = served
    for _, path, model, body, shape in cases(spec):
        key = documents_key(spec, model, body)
        if key is None:
            continue
        for docs, accepted in (([], False), (["a"], True), (["a", "b", "c"], True),
                               (["a", "b", "c", "d"], False)):
            sent = {**body, key: docs}
            r = await client.post(path, json=sent)
            assert (r.status_code == 200) is accepted and agree(spec, path, sent, r), (path, model, docs, r.text)
            if not accepted:
                assert r.status_code == shape.error(422, "", "", "")[0], (path, model, r.text)
                assert ("at least one" if not docs else "max_documents") in r.json()["detail"], r.text


# Every character Python, Rust and ECMA-262 regular expressions disagree on, and the obvious ones.
SPACES = ["\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", " ", "\x85", "\xa0", "\u1680", "\u2000",
          "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_SPACES = ["\ufeff", "\u200b", "\x00", "\x1b", "x", "é", "中"]


async def test_the_query_pattern_is_exactly_the_servers_blank_check(served):
    spec, client, fake = served
    fake.forwarded.clear()
    for _, path, model, body, _shape in cases(spec):
        key = "query" if "query" in body else "queries" if "queries" in body else None
        if key is None:
            continue
        for query in ["", *SPACES, " \t\u3000 ", *NOT_SPACES, "  a  "]:
            sent = {**body, key: query}
            r = await client.post(path, json=sent)
            assert agree(spec, path, sent, r), (path, model, repr(query), r.text)
            assert (r.status_code == 200) == bool(query.strip()), (path, model, repr(query))
            if r.status_code != 200:
                assert f"{key} must be a non-empty string" in r.json()["detail"], r.text
    assert not fake.forwarded  # /invocations refused a blank query itself: vLLM would score it


async def test_integers_and_booleans_are_json_types_as_documented(served):
    spec, client, _ = served
    for path, model in (("/v1/rerank", "RerankRequest"), ("/v1/rerank", "VllmRerankRequest"),
                        ("/score", "VllmScoreRequest")):
        body = example(spec, path, model)
        for change in ({"top_n": 1.0}, {"top_n": 0}, {"top_n": "1"}, {"top_n": True}, {"top_n": -1},
                       {"top_n": 1.5}, {"max_tokens_per_doc": 0}, {"return_documents": 0},
                       {"return_documents": "true"}, {"raw_scores": False}, {"priority": "1"},
                       {"priority": 2**64}, {"priority": -(2**63)}, {"use_activation": 1},
                       {"truncate_prompt_tokens": -2}, {"truncate_prompt_tokens": 2049},
                       {"cache_salt": ""}, {"chat_template_kwargs": {"tokenize": True}}):
            sent = {**body, **change}
            r = await client.post(path, json=sent)
            assert r.status_code in (200, 400, 422) and agree(spec, path, sent, r), (path, change, r.text)


async def test_object_documents_need_text_unless_rank_fields_say_otherwise(served):
    spec, client, _ = served
    cases_ = [([{"text": "a", "id": 1}], {}, True), ([{"title": "a"}], {}, False),
              ([{"title": "a"}], {"rank_fields": []}, False),
              ([{"title": "a"}], {"rank_fields": ["title"]}, True),
              ([{"text": "a", "content": [{"type": "text", "text": "a"}]}], {}, False)]
    for path, model in (("/v1/rerank", None), ("/rerank", "SeedRequest"), ("/score", None)):
        body = example(spec, path, model)
        for docs, extra, accepted in cases_:
            if path != "/v1/rerank" and extra:
                continue  # rank_fields is Cohere's
            if path == "/v1/rerank" and "content" in docs[0]:
                continue  # a Cohere body: objects are echoed whole, `content` is a field like any
            sent = {**body, "documents": docs, **extra}
            r = await client.post(path, json=sent)
            assert (r.status_code == 200) is accepted and agree(spec, path, sent, r), (path, sent, r.text)


async def test_an_object_query_is_refused_with_400_not_a_500(served):
    spec, client, _ = served
    for path in ("/rerank", "/invocations"):
        sent = {"query": {"text": "a"}, "documents": ["x"]}
        r = await client.post(path, json=sent)
        assert r.status_code == 400 and agree(spec, path, sent, r), (path, r.text)
        assert_documented(spec, path, r, vllm.DIALECT)


async def test_x_priority_is_refused_where_the_body_names_a_priority_too(served):
    spec, client, _ = served
    for path, body in (("/v1/rerank", example(spec, "/v1/rerank", "VllmRerankRequest")),
                       ("/score", {"queries": ["a", "b"], "documents": ["x", "y"], "priority": 1}),
                       ("/invocations", {"input": "some text"})):
        for header, accepted in (("bulk", True), ("interactive", True), ("", False), ("urgent", False)):
            r = await client.post(path, json={**body, "priority": 1} if "query" in body else body,
                                  headers={"X-Priority": header})
            assert (r.status_code == 200) is accepted, (path, header, r.text)


async def test_relayed_bodies_are_checked_as_documented_then_passed_as_they_came(served):
    spec, client, fake = served
    for path, sent, accepted in (
            ("/classify", {"input": "x", "use_activation": 0}, False),   # vLLM would take 0 for false
            ("/classify", {"input": [[True]]}, False),                    # ... and true for token id 1
            ("/classify", {"input": [""]}, False),
            ("/classify", {"input": [1.0] * 17}, True),                   # one prompt of 17 ids
            ("/classify", {"input": "x", "truncate_prompt_tokens": 0}, False),
            ("/classify", CHAT, True),
            ("/classify", {"messages": [{"role": "user", "content": "hi"}]}, False),
            ("/pooling", {"input": "x", "task": "embed"}, False),
            ("/pooling", {"input": [1, 2], "task": "classify"}, True),
            ("/tokenize", {**CHAT, "model": "qwen3-reranker-tiny"}, True),
            ("/invocations", {"input": [[True]]}, False),
            ("/invocations", {"input": ["a", "b"], "model": "any name"}, True)):
        fake.forwarded.clear()
        r = await client.post(path, json=sent)
        assert (r.status_code == 200) is accepted and agree(spec, path, sent, r), (path, sent, r.text)
        if accepted:  # the body went to vLLM byte for byte
            assert [json.loads(c) for _, _, c in fake.forwarded] == [sent], (path, fake.forwarded)
        else:
            assert r.status_code == 400 and not fake.forwarded, (path, r.text)
            assert_documented(spec, path, r, vllm.DIALECT)


async def test_schema_valid_score_bodies_are_refused_only_for_lists_of_unequal_lengths(served):
    """The one rule JSON Schema cannot state (vLLM's 1:1, 1:N or N:N pairing): on the routes that
    take /score bodies, schemathesis.toml lets a schema-valid body get a 400. It must be exactly
    these routes, and the server must refuse exactly the bodies that break the rule."""
    spec, client, _ = served
    config = SchemathesisConfig.from_path(str(ROOT / "schemathesis.toml"))
    project = config.projects.get_default()
    operations = [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]
    allowed = {op.path for op in operations
               if "400" in project.checks_config_for(operation=op).positive_data_acceptance.expected_statuses}
    assert allowed == {"/score", "/v1/score", "/invocations"}
    sides = ["q", ["q"], ["q", "r"], ["q", "r", "s"]]
    refused = 0
    for path in sorted(allowed):
        for left_name, right_name in SCORE_PAIRS:
            for left in sides:
                for right in sides:
                    body = {left_name: left, right_name: right}
                    assert validator(spec, body_schema(spec, path)).is_valid(body), (path, body)
                    unequal = isinstance(left, list) and len(left) > 1 and len(left) != (
                        len(right) if isinstance(right, list) else 1)
                    r = await client.post(path, json=body)
                    assert r.status_code == (400 if unequal else 200), (path, body, r.text)
                    if unequal:
                        assert r.json()["error"]["message"] == "Input lengths must be either 1:1, 1:N or N:N"
                    refused += unequal
    assert refused == 6 * len(SCORE_PAIRS) * len(allowed)  # 2:1, 2:1, 2:3, 3:1, 3:1, 3:2 everywhere


async def test_rank_fields_naming_a_field_a_document_lacks_are_answered(served):
    """Cohere's and Pinecone's `rank_fields`: a document is ranked on the named fields it has
    (a field it lacks is left out), on its `text` when it has none of them, else on its JSON text.
    No schema can say which keys a value names, so nothing here is refused."""
    spec, client, _ = served
    documents = [{"title": "Paris", "text": "capital of France"}, {"text": "Bananas are yellow."},
                 {"id": 7}]
    as_ranked = ["title: Paris", "Bananas are yellow.", '{"id": 7}']
    for path, scores in (("/v1/rerank", "results"), ("/v2/rerank", "results"), ("/pinecone/rerank", "data")):
        key = "relevance_score" if scores == "results" else "score"
        body = {"query": "capital of France", "documents": documents, "rank_fields": ["title", "missing"]}
        assert validator(spec, body_schema(spec, path)).is_valid(body), path
        r = await client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
        same = await client.post(path, json={"query": "capital of France", "documents": as_ranked})
        assert {x["index"]: x[key] for x in r.json()[scores]} == {
            x["index"]: x[key] for x in same.json()[scores]}, path


async def test_every_documented_truncate_prompt_tokens_is_answered(served):
    """truncate_prompt_tokens: -1 or 1 to max_model_len, whatever the query (no rule the schema
    cannot state). Only the document is cut; a cap below the template, instruction and query
    leaves the document its first token. 0 is outside the schema and refused."""
    spec, client, _ = served
    query, document = "What is the capital of France?", "Paris is the capital and largest city of France."
    encoder = _shared_encoder(None)
    fixed = encoder.template_tokens + len(encoder.head(query, DEFAULT_INSTRUCTION))
    whole = fixed + len(encoder.encode_plain([" " + document])[0])
    for cap, tokens in ((-1, whole), (1, fixed + 1), (fixed, fixed + 1), (fixed + 1, fixed + 1),
                        (fixed + 3, fixed + 3), (MAX_MODEL_LEN, whole)):
        for path, body in (("/rerank", {"query": query, "documents": [document]}),
                           ("/score", {"queries": query, "documents": [document]}),
                           ("/v2/rerank", {"query": query, "documents": [document]})):
            body = {**body, "truncate_prompt_tokens": cap}
            assert validator(spec, body_schema(spec, path)).is_valid(body), (path, body)
            r = await client.post(path, json=body)
            assert r.status_code == 200 and agree(spec, path, body, r), (path, cap, r.text)
            assert r.json()["usage"]["prompt_tokens"] == tokens, (path, cap, r.json()["usage"])
    body = {"query": query, "documents": [document], "truncate_prompt_tokens": 0}
    assert not validator(spec, body_schema(spec, "/rerank")).is_valid(body)
    r = await client.post("/rerank", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "body.truncate_prompt_tokens", r.text


# --- real error bodies validate against what the document says -----------------------------------
ENGINE_FAULTS = {  # fault -> (what the engine raises, the status before the dialect's shape)
    "engine_rejected": (domain.EngineRejected("rejected by the engine: bad"), 400),
    "engine_bad_answer": (domain.EngineBadAnswer("the engine returned nan"), 502),
    "engine_down": (domain.EngineUnavailable("engine unreachable: connection refused"), 503),
    "engine_timeout": (domain.EngineTimeout("the engine did not answer in time"), 504),
}
VLLM_ANSWERS = {"vllm_refused": (400, VLLM_400), "unknown_model": (404, VLLM_404)}
# every way a request fails, by the kind of route (at least one per documented status) -> its
# status before the dialect's shape; the rate limit comes last, as it spends the key's budget
FAULTS = {
    JSON_BODY: {"malformed_json": 400, "invalid_utf8": 400, "body_too_large": 413, "wrong_type": 422},
    SCORED: {"too_many_tokens": 413, "empty_documents": 422, "too_many_documents": 422,
             **{fault: status for fault, (_, status) in ENGINE_FAULTS.items()}},
    RELAYED: {"vllm_refused": 400, "unknown_model": 404, "engine_down": 503, "engine_timeout": 504},
    ENGINE: {"engine_down": 503, "engine_timeout": 504},
}
EDGE = {"malformed_json", "invalid_utf8", "body_too_large", "no_key", "rate_limited"}


async def _provoke(client, fake, method: str, path: str, body: dict | None, fault: str, auth: dict,
                   model: str | None, key: str | None):
    fake.fail = ENGINE_FAULTS[fault][0] if fault in ENGINE_FAULTS else None
    fake.answer = (VLLM_ANSWERS[fault][0], json.dumps(VLLM_ANSWERS[fault][1]).encode()) \
        if fault in VLLM_ANSWERS else FakeEngine().answer
    raw = {"content-type": "application/json", **auth}
    send = (lambda **kw: client.get(path, **kw)) if method == "get" else \
        (lambda **kw: client.post(path, **kw))
    if fault == "malformed_json":
        return await send(content=b'{"query": ', headers=raw)
    if fault == "invalid_utf8":
        return await send(content=b'{"query": "\xff\xfe"}', headers=raw)
    if fault == "body_too_large":  # over max_body_bytes=40,000
        return await send(json={**body, "padding_text": "x" * 50_000}, headers=auth)
    if fault == "wrong_type":  # the first required field of the body's model (else the first one), as a boolean
        field = ([f for f in body if f in _required(model)] or list(body))[0]
        return await send(json={**body, field: True}, headers=auth)
    if fault == "too_many_tokens":  # four documents of ~1,000 tokens: over max_request_tokens=2,000
        return await send(json={**body, key: [f"{i} " + "word " * 1000 for i in range(4)]}, headers=auth)
    if fault == "empty_documents":
        return await send(json={**body, key: []}, headers=auth)
    if fault == "too_many_documents":  # over max_documents=4
        return await send(json={**body, key: ["a", "b", "c", "d", "e"]}, headers=auth)
    if fault == "no_key":
        return await send(json=body) if method == "post" else await send()
    if fault == "rate_limited":  # the key's 40 a minute are spent within 41 more requests
        for _ in range(41):
            r = await (send(json=body, headers=auth) if method == "post" else send(headers=auth))
            if r.status_code == 429:
                return r
        return r
    return await (send(json=body, headers=auth) if method == "post" else send(headers=auth))


_REQUIRED: dict[str, list[str]] = {}


def _required(model: str | None) -> list[str]:
    return _REQUIRED.get(model or "", [])


# bodies the shim passes to vLLM, and bodies it answers itself without the scoring core
RELAYED_MODELS = {"ClassifyRequest", "ClassifyChatRequest", "PoolingRequest", "PoolingChatRequest",
                  "TokenizeChatRequest", "InvocationsClassifyRequest", "InvocationsClassifyChatRequest"}
LOCAL_MODELS = {"TokenizeRequest", "DetokenizeRequest"}


def error_cases(spec: dict) -> list[tuple]:
    """(dialect, method, path, model, body, shape, kinds) for every registered route: each body
    model with its example (the chat forms with a chat body), or a bare GET; `kinds`: the faults
    that body can meet."""
    out = []
    for dialect, path in PATHS:
        if "get" in spec["paths"][path]:
            out.append((dialect, "get", path, None, None, dialect, route_kinds(dialect, path)))
            continue
        for model in request_models(spec, path):
            examples = spec["components"]["schemas"][model].get("examples")
            body = dict(examples[0]) if examples else dict(CHAT) if "Chat" in model else \
                {"input": "some text"} if model in RELAYED_MODELS else None
            assert body is not None, (path, model)
            kinds = {JSON_BODY} | ({RELAYED} if model in RELAYED_MODELS else
                                   set() if model in LOCAL_MODELS else {SCORED})
            assert kinds <= route_kinds(dialect, path), (path, model)
            shape = vllm.DIALECT if dialect.shared_with and model in VLLM_BODIES else dialect
            out.append((dialect, "post", path, model, body, shape, kinds))
    return out


async def test_real_error_bodies_match_the_documented_model_and_headers(anyio_backend):
    limits = {"max_body_bytes": 40_000, "max_request_tokens": 2_000, "max_documents": 4,
              "rate_limit": "40/minute"}
    spec = document(**limits)
    _REQUIRED.update({name: s.get("required", []) for name, s in spec["components"]["schemas"].items()})
    todo = error_cases(spec)
    keys = [f"{KEY}-{i}" for i in range(len(todo))]  # one rate-limit budget per case
    provoked: set[tuple[str, int]] = set()
    async with running(api_keys=keys, **limits) as (_, client, fake):
        spec = (await client.get("/openapi.json")).json()
        for (dialect, method, path, model, body, shape, kinds), key_ in zip(todo, keys):
            key = documents_key(spec, model, body) if SCORED in kinds else None
            assert key is not None or SCORED not in kinds, (path, model)
            faults = {f: s for kind in (JSON_BODY, SCORED, RELAYED, ENGINE) if kind in kinds
                      for f, s in FAULTS[kind].items()}
            for fault, status in {**faults, "no_key": 401, "rate_limited": 429}.items():
                r = await _provoke(client, fake, method, path, body, fault,
                                   {"Authorization": f"Bearer {key_}"}, model, key)
                by = dialect if fault in EDGE else shape
                assert r.status_code == by.error(status, "x", "t", "id")[0], (path, model, fault, r.text)
                assert_documented(spec, path, r, by)
                provoked.add((path, r.status_code))
    for _, path in PATHS:  # every documented error status was really answered, and checked
        statuses = {int(s) for s in operation(spec, path)["responses"]} - {200}
        assert statuses <= {s for p, s in provoked if p == path}, (path, sorted(statuses))


# --- probes and ops routes ------------------------------------------------------------------------
async def test_probe_bodies_and_metrics_content_types_are_as_documented(anyio_backend):
    async with running() as (app, client, fake):
        spec = (await client.get("/openapi.json")).json()

        def check(path: str, r) -> None:
            responses = operation(spec, path)["responses"]
            assert str(r.status_code) in responses, (path, r.status_code)
            content = responses[str(r.status_code)]["content"]
            (media_type,) = content
            assert r.headers["content-type"].split(";")[0] == media_type.split(";")[0], path
            if media_type == "application/json":
                schema = content[media_type]["schema"]
                assert validator(spec, schema).is_valid(r.json()), (path, r.text)
            else:  # the exposition format's version parameter is what a scraper negotiates on
                assert media_type in r.headers["content-type"], (path, r.headers["content-type"])
            for name, header in responses[str(r.status_code)].get("headers", {}).items():
                if resolve(spec, header).get("required"):
                    assert name.lower() in r.headers, (path, name)

        for path in ("/livez", "/health", "/ready", "/metrics", "/metrics/engine", "/v1/models"):
            r = await client.get(path)
            assert r.status_code == 200, path
            check(path, r)
        fake.healthy = False
        await watch_engine_once(app)  # the watcher's tick, now
        fake.metrics_text = _unreachable
        for path in ("/health", "/ready", "/metrics/engine"):
            r = await client.get(path)
            assert r.status_code == 503, path
            check(path, r)


async def _unreachable() -> str:
    raise domain.EngineUnavailable("engine metrics unreachable")


async def test_sides_of_pairs_not_scored_are_held_to_the_document(served):
    """/score scores the first complete pair and vLLM ignores the others; their sides are still
    refused where the document calls them invalid (else the server accepts what it documents as
    invalid), and accepted where it does not."""
    spec, client, _ = served
    base = {"queries": "q", "documents": ["d"]}
    for extra, accepted in (({"text_2": [{"content": None}]}, False), ({"data_1": [{"text": " "}]}, False),
                            ({"items": [{"title": "no text"}]}, False),
                            ({"text_2": [{"text": "t", "id": 1}], "data_1": "q2"}, True)):
        sent = {**base, **extra}
        r = await client.post("/score", json=sent)
        assert (r.status_code == 200) is accepted and agree(spec, "/score", sent, r), (extra, r.text)


async def test_priority_bounds_are_integers_every_json_reader_reads_exactly(served):
    spec, client, _ = served
    for priority, accepted in ((2**53 - 1, True), (-(2**53 - 1), True), (2**53, False), (2**63 + 191, False)):
        sent = {"query": "q", "documents": ["d"], "priority": priority}
        r = await client.post("/rerank", json=sent)
        assert (r.status_code == 200) is accepted and agree(spec, "/rerank", sent, r), (priority, r.text)
