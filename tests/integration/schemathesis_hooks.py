"""Schemathesis hooks for our OpenAPI document (loaded by schemathesis.toml at the repo root).

One rule of the server cannot be written in JSON Schema, so schemathesis' positive-data check
would call a correct 422 a contract failure: with Cohere's `rank_fields`, every object document
must have each named field (JSON Schema cannot compare a value, the names, with the keys of other
values). The OpenAPI document says so in the field's description and in the 422 response; here,
and only for generated *positive* cases, bodies that break that rule are not sent. Nothing else
is filtered: every other schema-valid body must be accepted.
"""

from __future__ import annotations

import schemathesis


def names_a_missing_field(body) -> bool:
    """A body whose rank_fields name a field that some object document lacks (server: 422)."""
    if not isinstance(body, dict):
        return False
    fields, documents = body.get("rank_fields"), body.get("documents")
    if not (isinstance(fields, list) and fields and isinstance(documents, list)):
        return False
    return any(isinstance(d, dict) and any(f not in d for f in fields if isinstance(f, str))
               for d in documents)


@schemathesis.hook
def filter_case(context, case) -> bool:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return True
    return not names_a_missing_field(case.body)
