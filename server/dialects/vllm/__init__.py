"""vLLM's own HTTP API, as `vllm serve` of this model answers it, for clients written against it.

Laid out like vLLM's `vllm/entrypoints/pooling/`:

- protocol.py: the request and response bodies (and which fields make a body vLLM's);
- mapping.py: a vLLM scoring body onto the scoring core and the result into vLLM's answer, also
  used by the dialects that take vLLM's rerank body on their routes (the seed body on /rerank in
  tei.py, vLLM bodies on /v1/rerank and /v2/rerank in cohere.py);
- errors.py: vLLM's error shape, for the shim's errors and for vLLM's own relayed ones;
- the routes: score.py (POST /score, /v1/score), tokens.py (POST /tokenize, /detokenize),
  passthrough.py (POST /classify, /pooling), invocations.py (POST /invocations), models.py
  (GET /version, /v1/models).

Everything that scores goes through the one core (exact prompt, safe truncation, dedup, cache,
admission). /classify and /pooling score the client's own prompts: they are passed to vLLM as
they are, through the core's relay (auth, limits, admission, metrics). Field names, defaults,
pairing rules and status codes follow vLLM 0.32 and 0.26 (the union where they differ); what
differs on purpose is listed in docs/vllm-compat.md. Errors: vLLM's `{"error": {message, type,
param, code}}` plus our `detail`, and 400 where we would answer 422 (vLLM answers 400 for every
schema error).
"""

from __future__ import annotations

from fastapi import APIRouter

from server.dialects.common import Dialect
from server.dialects.vllm import invocations, models, passthrough, score, tokens
from server.dialects.vllm.errors import VllmErrorBody, error_body
from server.openapi import ENGINE, JSON_BODY, RELAYED, SCORED

router = APIRouter()
for _routes in (score, tokens, passthrough, invocations, models):
    router.include_router(_routes.router)

DIALECT = Dialect(
    "vllm", router,
    relayed=frozenset({"/classify", "/pooling", "/version"}),
    error=error_body, error_model=VllmErrorBody,
    # the prompt form of /tokenize and /detokenize are the shim's (the served tokenizer); the chat
    # form of /tokenize, /classify and /pooling are vLLM's; /invocations is either
    answers={"/tokenize": frozenset({JSON_BODY, RELAYED}), "/detokenize": frozenset({JSON_BODY}),
             "/classify": frozenset({JSON_BODY, RELAYED}), "/pooling": frozenset({JSON_BODY, RELAYED}),
             "/invocations": frozenset({JSON_BODY, SCORED, RELAYED}),
             "/version": frozenset({ENGINE}), "/v1/models": frozenset()},
    images=frozenset({"/score", "/v1/score", "/invocations"}))
