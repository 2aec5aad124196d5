"""Every route in the dialect registry answers what it declares: each request example from the
OpenAPI document is sent, and the 200 body must validate against the dialect's response model
(the models forbid undeclared keys, so a body that grew a field fails here until it is declared).
A new dialect is covered by registering it."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from server.dialects import DIALECTS
from tests.inprocess.conftest import running

pytestmark = pytest.mark.anyio

# scoring-style routes: POST with a JSON body, answered by the shim itself
ROUTES = [(d, r.path) for d in DIALECTS for r in d.router.routes
          if "POST" in r.methods and r.path in d.responses and r.path not in d.relayed]


def _examples(spec: dict, path: str) -> list[dict]:
    content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
    schema = content["schema"]
    alternatives = [schema] if "$ref" in schema else schema.get("anyOf") or schema.get("oneOf") or []
    # an alternative is a model, or a model with a condition ({"allOf": [model], "not": ...})
    refs = [a if "$ref" in a else a["allOf"][0] for a in alternatives if "$ref" in a or "allOf" in a]
    models = [spec["components"]["schemas"][r["$ref"].rsplit("/", 1)[1]] for r in refs]
    found = [example for model in models for example in model.get("examples", [])]
    found += schema.get("examples", []) + [e["value"] for e in content.get("examples", {}).values()]
    return found


def test_every_registered_scoring_route_declares_a_response_model():
    for dialect in DIALECTS:
        for route in dialect.router.routes:
            if "POST" in route.methods:
                assert route.path in dialect.responses, (dialect.name, route.path)


@pytest.mark.parametrize("dialect, path", ROUTES, ids=[p for _, p in ROUTES])
async def test_each_example_gets_a_body_that_matches_the_declared_model(anyio_backend, dialect, path):
    async with running() as (app, client, fake):
        spec = (await client.get("/openapi.json")).json()
        examples = _examples(spec, path)
        assert examples, path
        adapter = TypeAdapter(dialect.responses[path])
        for example in examples:
            r = await client.post(path, json=example)
            assert r.status_code == 200, (path, example, r.text)
            adapter.validate_python(r.json())  # raises on a missing, mistyped or undeclared key


@pytest.mark.parametrize("dialect, path", ROUTES, ids=[p for _, p in ROUTES])
async def test_errors_carry_detail_in_the_dialects_shape(anyio_backend, dialect, path):
    async with running() as (app, client, fake):
        r = await client.post(path, content=b'{"query": ', headers={"content-type": "application/json"})
        assert r.status_code == 400
        body = r.json()
        assert body["detail"] and r.headers["x-request-id"]
        status, shaped = dialect.error(400, body["detail"], "invalid_request", r.headers["x-request-id"])
        assert status == 400 and set(shaped) == set(body)  # the dialect's own error shape
