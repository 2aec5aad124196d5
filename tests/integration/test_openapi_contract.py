"""The OpenAPI document is a contract the live service keeps: schemathesis (PyPI) generates
requests from /openapi.json, valid and invalid, sends them to a shim in front of the real CPU vLLM
(the real Qwen3 tokenizer) and runs every check it has (`--checks all`: no 5xx, every status,
content type, header and body as documented, schema-valid requests accepted, schema-violating
ones refused, auth not ignored, 405s with Allow). Zero failures allowed.

A fixed seed and a small example count keep a run short, and the full run shares the operations
out among three schemathesis processes at once (the CPU engine is what bounds it, and it scores
concurrent requests together); the coverage phase still sends the boundary values of every
constraint (empty and max_documents-long lists, blank queries, every enum value, wrong JSON
types). The shim under test sets max_documents=4: the document states the deployment's own bound,
and boundary lists of 1,000 documents (the default) would make the run minutes long without
testing anything more. No hooks: every generated case is sent, as from any outside user's run.
schemathesis.toml at the repo root is read (cwd): it keeps runs reproducible and names the one
rule of the server JSON Schema cannot state (vLLM's /score pairing of lists of equal lengths: a
400 to a schema-valid body is expected on the routes that take /score bodies;
tests/inprocess/test_openapi.py checks the server refuses exactly those).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from server.dialects import DIALECTS
from tests.conftest import ROOT

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
KEY = "k-contract"
# schemathesis processes for the full run: the engine (vLLM's CPU build) bounds it, and it does
# more work per step when requests arrive together
PROCESSES = 3


def schemathesis(url: str, *args: str, processes: int = 1) -> str:
    """Run schemathesis against `url`; fail with its report unless it found nothing. With
    `processes` > 1 the operations are shared out among that many schemathesis processes run at
    once (each operation in exactly one, with the same seed and settings): the service's engine
    then gets concurrent requests, which the shim coalesces, instead of one at a time.
    (schemathesis' own --workers threads are not used: its coverage phase then fails at random
    with Hypothesis FlakyFailure errors from a cache shared between threads.)"""
    spec = httpx.get(f"{url}/openapi.json").json()
    operations = sum(len(ops) for ops in spec["paths"].values())
    runs = []
    for share in _shares(spec, processes):
        only = ["--include-path-regex", "^(" + "|".join(re.escape(path) for path in share) + ")$"] if processes > 1 else []
        cmd = [str(SCHEMATHESIS), "run", f"{url}/openapi.json", "--checks", "all", "--seed", "1",
               "--no-color", "--request-timeout", "60", *args, *only]
        runs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True))
    try:
        reports = [run.communicate(timeout=900)[0] for run in runs]
    finally:
        for run in runs:
            run.kill()
    for run, report in zip(runs, reports):
        assert run.returncode == 0, f"schemathesis found contract failures:\n{report[-12000:]}"
    tested = sum(int(n) for report in reports for n in re.findall(r"Tested: (\d+)", report))
    assert tested == operations, "\n".join(r[-3000:] for r in reports)  # no operation skipped
    return "\n".join(reports)


def _shares(spec: dict, processes: int) -> list[list[str]]:
    """The document's paths in `processes` shares of about equal work: largest first, each to the
    share with the least so far, a path's work taken as the size of its operations and of the
    schemas they name (what the coverage phase's case count grows with)."""
    def size(path: str) -> int:
        text = json.dumps(spec["paths"][path])
        names = set(re.findall(r"#/components/schemas/([^\"]+)", text))
        return len(text) + sum(len(json.dumps(spec["components"]["schemas"][n])) for n in names)

    shares: list[list[str]] = [[] for _ in range(processes)]
    work = [0] * processes
    for path in sorted(spec["paths"], key=size, reverse=True):
        least = work.index(min(work))
        shares[least].append(path)
        work[least] += size(path)
    return [share for share in shares if share]


def answered(url: str) -> dict[tuple[str, str], float]:
    """(endpoint, status) -> requests so answered, from the shim's own request counter."""
    text = httpx.get(f"{url}/metrics").text
    return {(m[0], m[1]): float(m[2]) for m in re.findall(
        r'reranker_request_total\{endpoint="([^"]+)",status="(\d+)"\} (\S+)', text)}


def new_statuses(before: dict, after: dict, path: str) -> set[str]:
    return {status for (endpoint, status), n in after.items()
            if endpoint == path and n > before.get((endpoint, status), 0)}


def test_the_live_service_keeps_its_openapi_contract(extra_shim):
    shim = extra_shim(max_documents="4")
    report = schemathesis(shim.url, "--max-examples", "10", processes=PROCESSES)
    after = answered(shim.url)
    methods = {path: set(ops) for path, ops in httpx.get(f"{shim.url}/openapi.json").json()["paths"].items()}
    for dialect in DIALECTS:
        for path in dialect.paths:  # it answered for real, and refused what the document calls invalid
            expected = {"200", "405"}
            if "post" in methods[path]:
                expected.add(str(dialect.error(422, "", "", "")[0]))  # vLLM's routes: 400
            assert expected <= new_statuses({}, after, path), (path, new_statuses({}, after, path))
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", report))
    assert cases > 1000, report[-2000:]  # the coverage phase ran: boundaries of every constraint


def test_the_contract_holds_with_auth_and_rate_limits_on(extra_shim):
    """Auth on: the document declares the bearer scheme and 401 with WWW-Authenticate; schemathesis
    sends the key on every request and, for its auth check, requests without it. A small per-key
    limit: once spent, requests get 429, which must match the documented 429 (Retry-After, error
    model). The examples and fuzzing phases suffice for these answers (they do not depend on the
    body; the run above covers the bodies)."""
    shim = extra_shim(max_documents="4", api_keys=KEY, rate_limit="40/minute")
    schemathesis(shim.url, "--max-examples", "10", "--phases", "examples,fuzzing",
                 "--header", f"Authorization: Bearer {KEY}")
    after = answered(shim.url)
    seen = {status for (_, status) in after}
    assert {"200", "401", "429"} <= seen, seen
    for dialect in DIALECTS:
        for path in dialect.paths:  # every route was reached with the key
            assert {"200", "429"} & new_statuses({}, after, path), (path, new_statuses({}, after, path))
