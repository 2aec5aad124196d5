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
- vLLM's `truncate_prompt_tokens` caps the whole prompt, and the shim never cuts the template,
  instruction or query (only the document): a cap at or below what those take leaves no room for
  a document (a count of tokens of the body's own text). Server: 400. It is counted here with the
  server's own functions and the served tokenizer (RERANKER_TOKENIZER, default the demo model the
  tests serve).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import schemathesis

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout's server package (the hook runs in schemathesis' process)

from server.dialects.vllm.mapping import instruction_of  # noqa: E402
from server.dialects.vllm.protocol import SCORE_PAIRS  # noqa: E402
from server.settings import DEFAULT_INSTRUCTION, Settings  # noqa: E402


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


@functools.cache
def _encoder():
    from server.scoring.prompt import PromptEncoder
    from server.scoring.tokenizer import load_tokenizer

    return PromptEncoder(load_tokenizer(os.environ.get(
        "RERANKER_TOKENIZER", str(ROOT / "models" / "qwen3-reranker-tiny"))))


def truncation_leaves_no_room(body: dict) -> bool:
    """A vLLM-style body whose truncate_prompt_tokens is at or below the tokens of template,
    instruction and (cut) query, as the scoring core counts them (server: 400)."""
    limit = body.get("truncate_prompt_tokens")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit == -1:
        return False
    kwargs = body.get("chat_template_kwargs")
    instruction = instruction_of(kwargs if isinstance(kwargs, dict) else None,
                                          body.get("instruction")) or DEFAULT_INSTRUCTION
    encoder = _encoder()
    for query in _queries(body):
        cut = body.get("max_tokens_per_query") or 0
        keep = Settings.model_fields["max_query_tokens"].default  # the server's own query cut
        if isinstance(cut, (int, float)) and not isinstance(cut, bool) and cut > 0:
            keep = min(keep, int(cut))
        piece = encoder.encode_plain([query])[0]
        if len(piece) > keep:
            query = query[: piece.ends[keep - 1]]
        if limit - fixed_prompt_tokens(encoder, query, instruction) < 1:
            return True
    return False


def fixed_prompt_tokens(encoder, query: str, instruction: str) -> int:
    """The prompt's tokens other than the document's: template, instruction and query."""
    return encoder.template_tokens + len(encoder.head(query, instruction))


def _queries(body: dict) -> list[str]:
    """The query texts a rerank or score body is scored with."""
    if "query" in body and "documents" in body:
        sides = [body["query"]]
    else:
        sides = [body.get(left) for left, right in SCORE_PAIRS
                 if body.get(left) is not None and body.get(right) is not None][:1]
    out = []
    for side in sides:
        for item in side if isinstance(side, list) else [side]:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and "text" in item:
                out.append(item["text"] if isinstance(item["text"], str) else str(item["text"]))
    return out


RULES = (names_a_missing_field, pairs_unequal_lists, truncation_leaves_no_room)


@schemathesis.hook
def filter_case(context, case) -> bool:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return True
    return not any(rule(case.body) for rule in RULES)
