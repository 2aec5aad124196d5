"""The OpenAPI document is a contract the live service keeps: schemathesis (PyPI) generates
requests from /openapi.json, valid and invalid, sends them to the real CPU service (real vLLM, the
real Qwen3 tokenizer) and runs every check it has (`--checks all`: no 5xx, every status, content
type, header and body as documented, schema-valid requests accepted, schema-violating ones
refused, auth not ignored, 405s with Allow). Zero failures allowed.

A fixed seed and a small example count keep a run short; the coverage phase still sends the
boundary values of every constraint (empty and max_documents-long lists, blank queries, every
enum value, wrong JSON types). schemathesis.toml at the repo root is read (cwd): it names the one
hook (tests/integration/schemathesis_hooks.py) and keeps runs reproducible.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from server.dialects import DIALECTS
from tests.conftest import ROOT

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
KEY = "k-contract"


def schemathesis(url: str, *args: str) -> str:
    """Run schemathesis against `url`; fail with its report unless it found nothing."""
    cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "all", "--seed", "1",
           "--no-color", "--request-timeout", "60", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    report = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found contract failures:\n{report[-12000:]}"
    operations = sum(len(ops) for ops in httpx.get(f"{url}/openapi.json").json()["paths"].values())
    assert f"Tested: {operations}" in report, report[-3000:]  # nothing skipped
    return report


def answered(url: str) -> dict[tuple[str, str], float]:
    """(endpoint, status) -> requests so answered, from the shim's own request counter."""
    text = httpx.get(f"{url}/metrics").text
    return {(m[0], m[1]): float(m[2]) for m in re.findall(
        r'reranker_request_total\{endpoint="([^"]+)",status="(\d+)"\} (\S+)', text)}


def new_statuses(before: dict, after: dict, path: str) -> set[str]:
    return {status for (endpoint, status), n in after.items()
            if endpoint == path and n > before.get((endpoint, status), 0)}


SCORING = [path for dialect in DIALECTS for path in dialect.paths]


def test_the_live_service_keeps_its_openapi_contract(service):
    before = answered(service.url)
    schemathesis(service.url, "--max-examples", "30")
    after = answered(service.url)
    for path in SCORING:  # it scored for real, and refused what the document calls invalid
        assert {"200", "405", "422"} <= new_statuses(before, after, path), path


def test_the_contract_holds_with_auth_and_rate_limits_on(extra_shim):
    """Auth on: the document declares the bearer scheme and 401 with WWW-Authenticate; schemathesis
    sends the key on every request and, for its auth check, requests without it. A small per-key
    limit: most requests get 429, which must match the documented 429 (Retry-After, error model)."""
    shim = extra_shim(api_keys=KEY, rate_limit="30/minute")
    schemathesis(shim.url, "--max-examples", "10", "--header", f"Authorization: Bearer {KEY}")
    after = answered(shim.url)
    for path in SCORING:
        assert {"200", "401", "429"} <= new_statuses({}, after, path), path
