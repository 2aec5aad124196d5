"""Auth as one HTTPBearer dependency: keys accepted, everything else 401 in our error shape,
and the scheme declared in OpenAPI only when auth is on."""

from __future__ import annotations

import pytest

from tests.inprocess.conftest import running

pytestmark = pytest.mark.anyio

BODY = {"query": "q", "docs": ["a", "b"]}


async def test_keys_admit_and_everything_else_is_401_with_www_authenticate(anyio_backend):
    async with running(api_keys=["k-one", "k-two"]) as (app, client, fake):
        for header in ("Bearer k-one", "bearer k-two", "Bearer  k-one"):
            r = await client.post("/v1/rank", json=BODY, headers={"Authorization": header})
            assert r.status_code == 200, header
        for headers in ({}, {"Authorization": "Basic k-one"}, {"Authorization": "Bearer"},
                        {"Authorization": "Bearer k-one-not"}, {"Authorization": "k-one"}):
            r = await client.post("/v1/rank", json=BODY, headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["detail"] and r.headers["www-authenticate"].startswith("Bearer")
        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert {"HTTPBearer": []} in spec["paths"]["/v1/rank"]["post"]["security"]


async def test_auth_off_accepts_any_header_and_declares_no_scheme(anyio_backend):
    async with running() as (app, client, fake):
        r = await client.post("/v1/rank", json=BODY, headers={"Authorization": "Bearer dummy"})
        assert r.status_code == 200
        spec = (await client.get("/openapi.json")).json()
        assert "securitySchemes" not in spec.get("components", {})
