"""The OpenAPI document describes what the server really answers (fake engine to force faults).

Registry-driven: every route of every dialect in server/dialects is checked, so a new dialect is
covered by registering it with its `error_model`. Real error bodies (malformed JSON, invalid
UTF-8, body and token limits, schema violations, engine faults, auth, rate limit) are produced
by the running app and validated against the schema the document gives for that path and status,
with the headers it promises."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from fastapi import FastAPI

from server.app import create_app, watch_engine_once
from server.dialects import DIALECTS
from server.openapi import MAX_ITEMS_SETTING, finish
from server.scoring import errors as domain
from tests.inprocess.conftest import FakeEngine, running, settings

pytestmark = pytest.mark.anyio

PATHS = [(d, path) for d in DIALECTS for path in d.paths]
KEY = "k-openapi"


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


def request_schema(spec: dict, path: str) -> dict:
    schema = operation(spec, path)["requestBody"]["content"]["application/json"]["schema"]
    return {**schema, "components": spec["components"]}


def example(spec: dict, path: str, model: str | None = None) -> dict:
    """The first request example the document gives for `path` (of request `model`, if named)."""
    schema = operation(spec, path)["requestBody"]["content"]["application/json"]["schema"]
    refs = [schema] if "$ref" in schema else schema.get("anyOf") or schema.get("oneOf")
    for ref in refs:
        name = ref["$ref"].rsplit("/", 1)[1]
        examples = spec["components"]["schemas"][name].get("examples")
        if examples and model in (None, name):
            return dict(examples[0])
    raise AssertionError(f"no example for {path}")


def documents_key(spec: dict, body: dict, path: str) -> str:
    """The field of `body` that is the documents list (the one the document bounds by maxItems)."""
    schema = operation(spec, path)["requestBody"]["content"]["application/json"]["schema"]
    refs = [schema] if "$ref" in schema else schema.get("anyOf") or schema.get("oneOf")
    for ref in refs:
        model = spec["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
        for name, prop in model["properties"].items():
            if "maxItems" in prop and name in body:
                return name
    raise AssertionError(f"no bounded documents list in the example for {path}")


def assert_documented(spec: dict, path: str, r) -> None:
    """The response's status is documented for `path`, its body validates against that status's
    schema, and every header documented as required is there."""
    responses = operation(spec, path)["responses"]
    assert str(r.status_code) in responses, (path, r.status_code, sorted(responses))
    documented = responses[str(r.status_code)]
    schema = documented["content"]["application/json"]["schema"]
    errors = [e.message for e in validator(spec, schema).iter_errors(r.json())]
    assert not errors, (path, r.status_code, r.text, errors)
    for name, header in documented.get("headers", {}).items():
        if resolve(spec, header).get("required"):
            assert name.lower() in r.headers, (path, r.status_code, name)
    assert r.json()["detail"], r.text  # a sentence a client can show, in every dialect's shape


# --- the document --------------------------------------------------------------------------------
def test_every_scoring_route_documents_its_error_statuses_with_the_dialects_model():
    spec = document(api_keys=[KEY], rate_limit="100/minute")
    for dialect, path in PATHS:
        responses = operation(spec, path)["responses"]
        statuses = set(responses) - {"200"}
        # what the server answers on a scoring route, as the dialect's shape reports it
        expected = {str(dialect.error(s, "x", "t", "id")[0])
                    for s in (400, 401, 413, 422, 429, 502, 503, 504)}
        assert statuses == expected, (path, sorted(statuses))
        component = dialect.error_model.__name__
        for status in statuses:
            content = responses[status]["content"]
            assert list(content) == ["application/json"]
            schema = content["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{component}"}, (path, status)
            # the dialect's shape function produces what its model documents, for every status
            _, body = dialect.error(int(status), "a sentence", "kind", "req-1")
            assert validator(spec, schema).is_valid(body), (path, status, body)
        for status, header in ((401, "WWW-Authenticate"), (429, "Retry-After"), (503, "Retry-After")):
            status = str(dialect.error(status, "x", "t", "id")[0])
            assert responses[status]["headers"][header]["required"] is True, (path, status, header)


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
    assert MAX_ITEMS_SETTING not in text  # every per-deployment bound was filled in
    assert spec["components"]["headers"]["X-Request-Id"]["required"] is True
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                header = response.get("headers", {}).get("X-Request-Id")
                assert header == {"$ref": "#/components/headers/X-Request-Id"}, (method, path, status)


def test_a_route_outside_the_registry_gets_the_error_model_not_http_validation_error():
    app = FastAPI()

    @app.get("/items")
    async def items(limit: int = 10):  # a query parameter: FastAPI adds its own 422
        return []

    document = finish(app.openapi(), settings(), scoring_paths=set())
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
    """(spec, client) of an app with max_documents=3."""
    async with running(max_documents=3) as (_, client, _fake):
        yield (await client.get("/openapi.json")).json(), client


def agree(spec: dict, path: str, sent: dict, r) -> bool:
    """The document's verdict on a body (jsonschema_rs) is the server's (200 or not)."""
    return jsonschema_rs.is_valid(request_schema(spec, path), sent) == (r.status_code == 200)


async def test_documents_bounds_are_the_deployments_and_the_server_enforces_them(served):
    spec, client = served
    for _, path in PATHS:
        body = example(spec, path)
        key = documents_key(spec, body, path)
        for docs, accepted in (([], False), (["a"], True), (["a", "b", "c"], True),
                               (["a", "b", "c", "d"], False)):
            sent = {**body, key: docs}
            r = await client.post(path, json=sent)
            assert (r.status_code == 200) is accepted and agree(spec, path, sent, r), (path, docs, r.text)
            if not accepted:
                assert r.status_code == 422
                assert ("at least one" if not docs else "max_documents") in r.json()["detail"]


# Every character Python, Rust and ECMA-262 regular expressions disagree on, and the obvious ones.
SPACES = ["\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", " ", "\x85", "\xa0", "\u1680", "\u2000",
          "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_SPACES = ["\ufeff", "\u200b", "\x00", "\x1b", "x", "é", "中"]


async def test_the_query_pattern_is_exactly_the_servers_blank_check(served):
    spec, client = served
    for _, path in PATHS:
        body = example(spec, path)
        for query in ["", *SPACES, " \t\u3000 ", *NOT_SPACES, "  a  "]:
            sent = {**body, "query": query}
            r = await client.post(path, json=sent)
            assert agree(spec, path, sent, r), (path, repr(query), r.text)
            assert (r.status_code == 200) == bool(query.strip()), (path, repr(query))
            if r.status_code == 422:
                assert "query must be a non-empty string" in r.json()["detail"], r.text


async def test_integers_and_booleans_are_json_types_as_documented(served):
    spec, client = served
    body = example(spec, "/v1/rerank")
    for change in ({"top_n": 1.0}, {"top_n": 0}, {"top_n": "1"}, {"top_n": True}, {"top_n": -1},
                   {"top_n": 1.5}, {"max_tokens_per_doc": 0}, {"return_documents": 0},
                   {"return_documents": "true"}, {"raw_scores": False}):
        sent = {**body, **change}
        r = await client.post("/v1/rerank", json=sent)
        assert r.status_code in (200, 422) and agree(spec, "/v1/rerank", sent, r), (change, r.text)


async def test_object_documents_need_text_unless_rank_fields_say_otherwise(served):
    spec, client = served
    cases = [([{"text": "a", "id": 1}], {}, True), ([{"title": "a"}], {}, False),
             ([{"title": "a"}], {"rank_fields": []}, False),
             ([{"title": "a"}], {"rank_fields": ["title"]}, True)]
    for path, model in (("/v1/rerank", None), ("/rerank", "SeedRequest")):
        body = example(spec, path, model)
        for docs, extra, accepted in cases:
            if path == "/rerank" and extra:
                continue  # rank_fields is Cohere's
            sent = {**body, "documents": docs, **extra}
            r = await client.post(path, json=sent)
            assert (r.status_code == 200) is accepted and agree(spec, path, sent, r), (path, sent, r.text)


# --- real error bodies validate against what the document says -----------------------------------
ENGINE_FAULTS = {  # fault -> (what the engine raises, the status before the dialect's shape)
    "engine_rejected": (domain.EngineRejected("rejected by the engine: bad"), 400),
    "engine_bad_answer": (domain.EngineBadAnswer("the engine returned nan"), 502),
    "engine_down": (domain.EngineUnavailable("engine unreachable: connection refused"), 503),
    "engine_timeout": (domain.EngineTimeout("the engine did not answer in time"), 504),
}
# every way a scoring request fails (at least one per error status) -> its status before shaping;
# in this order: the rate limit comes last, as it spends the key's budget
FAULTS = {"malformed_json": 400, "invalid_utf8": 400, "body_too_large": 413, "too_many_tokens": 413,
          "empty_documents": 422, "too_many_documents": 422,
          **{fault: status for fault, (_, status) in ENGINE_FAULTS.items()},
          "no_key": 401, "rate_limited": 429}


async def _provoke(client, fake, path: str, body: dict, key: str, fault: str, auth: dict):
    fake.fail = ENGINE_FAULTS[fault][0] if fault in ENGINE_FAULTS else None
    raw = {"content-type": "application/json", **auth}
    if fault == "malformed_json":
        return await client.post(path, content=b'{"query": ', headers=raw)
    if fault == "invalid_utf8":
        return await client.post(path, content=b'{"query": "\xff\xfe"}', headers=raw)
    if fault == "body_too_large":  # over max_body_bytes=40,000
        return await client.post(path, json={**body, key: ["x" * 50_000]}, headers=auth)
    if fault == "too_many_tokens":  # four documents of ~1,000 tokens: over max_request_tokens=2,000
        return await client.post(path, json={**body, key: [f"{i} " + "word " * 1000 for i in range(4)]},
                                 headers=auth)
    if fault == "empty_documents":
        return await client.post(path, json={**body, key: []}, headers=auth)
    if fault == "too_many_documents":  # over max_documents=4
        return await client.post(path, json={**body, key: ["a", "b", "c", "d", "e"]}, headers=auth)
    if fault == "no_key":
        return await client.post(path, json=body)
    if fault == "rate_limited":  # the key's 40 a minute are spent within 41 more requests
        for _ in range(41):
            r = await client.post(path, json=body, headers=auth)
            if r.status_code == 429:
                return r
        return r
    return await client.post(path, json=body, headers=auth)  # an engine fault


async def test_real_error_bodies_match_the_documented_model_and_headers(anyio_backend):
    keys = [f"{KEY}-{i}" for i in range(len(PATHS))]  # one rate-limit budget per route
    limits = {"max_body_bytes": 40_000, "max_request_tokens": 2_000, "max_documents": 4,
              "api_keys": keys, "rate_limit": "40/minute"}
    async with running(**limits) as (_, client, fake):
        spec = (await client.get("/openapi.json")).json()
        for (dialect, path), key_ in zip(PATHS, keys):
            body = example(spec, path)
            key = documents_key(spec, body, path)
            for fault, status in FAULTS.items():
                r = await _provoke(client, fake, path, body, key, fault, {"Authorization": f"Bearer {key_}"})
                assert r.status_code == dialect.error(status, "x", "t", "id")[0], (path, fault, r.text)
                assert_documented(spec, path, r)


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

