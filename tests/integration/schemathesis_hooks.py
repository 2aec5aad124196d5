"""Schemathesis hooks for our OpenAPI document (loaded by schemathesis.toml at the repo root).

A few rules of the server cannot be written in JSON Schema, so schemathesis' positive-data check
would call a correct refusal a contract failure. The OpenAPI document states each one in the
field's description and in the error's; here, and only for generated *positive* cases, bodies
that break one of them are not sent. Nothing else is filtered: every other schema-valid body must
be accepted, and negative cases are all sent.

- Cohere `rank_fields`: every object document must have each named field (JSON Schema cannot
  compare a value, the names, with the keys of other values). Server: 422.
- vLLM's /score pairs: a left side of N > 1 inputs needs N right ones (1:1, 1:N or N:N; JSON
  Schema cannot compare two arrays' lengths). Server: 400.
"""

from __future__ import annotations

import sys
from pathlib import Path

import schemathesis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's server package (the hook runs in schemathesis' process)

from server.dialects.vllm.protocol import SCORE_PAIRS  # noqa: E402


def names_a_missing_field(body: dict) -> bool:
    """A body whose rank_fields name a field that some object document lacks (server: 422)."""
    fields, documents = body.get("rank_fields"), body.get("documents")
    if not (isinstance(fields, list) and fields and isinstance(documents, list)):
        return False
    return any(isinstance(d, dict) and any(f not in d for f in fields if isinstance(f, str))
               for d in documents)


def pairs_unequal_lists(body: dict) -> bool:
    """A /score body (or an /invocations one shaped as /score) whose first complete pair is N:M
    with 1 < N != M (server: 400)."""
    for left, right in SCORE_PAIRS:
        a, b = body.get(left), body.get(right)
        if a is not None and b is not None:
            n, m = (len(x) if isinstance(x, list) else 1 for x in (a, b))
            return n > 1 and n != m
    return False


RULES = (names_a_missing_field, pairs_unequal_lists)


@schemathesis.hook
def filter_case(context, case) -> bool:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return True
    return not any(rule(case.body) for rule in RULES)
