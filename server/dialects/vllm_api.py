"""vLLM's own HTTP API, as `vllm serve` of this model answers it, for clients written against it.

Routes owned here: POST /score, /v1/score, /tokenize, /detokenize, /classify, /pooling,
/invocations; GET /version, /v1/models. vLLM's rerank body is also understood on /rerank (tei.py:
every non-TEI body) and on /v1/rerank, /v2/rerank (cohere.py: bodies carrying a vLLM-only field);
the pieces those dialects share are here (`VllmRerankRequest`, `core_request`, `rerank_results`).

Everything that scores goes through the one core (exact prompt, safe truncation, dedup, cache,
admission). /classify and /pooling score the client's own prompts: they are passed to vLLM as
they are (behind auth, limits and metrics). Field names, defaults, pairing rules and status
codes follow vLLM 0.32 and 0.26 (the union where they differ); what differs on purpose is
listed in docs/vllm-compat.md. Errors: vLLM's `{"error": {message, type, param, code}}` plus our
`detail`, and 400 where we would answer 422 (vLLM answers 400 for every schema error).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from http import HTTPStatus
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from server.dialects.common import (
    Dialect,
    Query,
    documents_field,
    json_integer,
    priority_header,
    ranking,
    score,
    score_all,
)
from server.errors import NON_BLANK
from server.openapi import ENGINE, JSON_BODY, RELAYED, SCORED, documented_body, setting_bounds
from server.responses import FastJSONResponse
from server.scoring.core import ScoreRequest, ScoreResult
from server.scoring.errors import InvalidInput

router = APIRouter(tags=["vllm"])

# Tokenising more text than this moves to a worker thread (as the core does).
_INLINE_TOKENIZE_CHARS = 20_000
# Keys only vLLM's rerank body has: a body carrying one on /v1/rerank or /v2/rerank is a vLLM
# client's and gets vLLM's answer and errors (a plain body there stays Cohere/Jina).
VLLM_ONLY_FIELDS = frozenset({
    "use_activation", "truncate_prompt_tokens", "truncation_side", "priority", "request_id",
    "max_tokens_per_query", "chat_template_kwargs", "cache_salt", "mm_processor_kwargs",
    "padding", "user"})
# vLLM refuses these template kwargs: they would override the scorer's own arguments.
_RESERVED_KWARGS = {"chat_template", "tools", "tokenize"}

# A query or document: text, or an object (vLLM's multimodal {"content": [parts]} is refused).
ScoreInput = str | dict[str, Any]


# --- request types ---------------------------------------------------------------------------
# Shared strict types (server/dialects/common.py): JSON types as the document states them, and the
# constraints the server really applies stated in the document. A rule of the core that JSON Schema
# cannot state (e.g. a truncate_prompt_tokens that leaves no room for a document) is in the
# field's description; the core still checks everything itself.
_POSITIVE_TEXT = {"anyOf": [{"type": "string", "pattern": NON_BLANK}, {"not": {"type": "string"}}]}
# A query-side object ({"text": ...}, Jina/seed style): ranked on its text (a non-string is
# ranked on its JSON text). vLLM's multimodal form ({"content": [parts]}) is refused (400).
QueryObject = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "required": ["text"], "not": {"required": ["content"]},
    "properties": {"text": _POSITIVE_TEXT},
    "description": "ranked on `text` (a string with at least one non-whitespace character, or "
                   "any other JSON value, ranked on its JSON text); vLLM's multimodal "
                   "`{\"content\": [...]}` is refused: the model is text-only"})]
DocumentObject = Annotated[dict[str, Any], WithJsonSchema({
    "type": "object", "required": ["text"], "not": {"required": ["content"]},
    "description": "ranked on `text` (a non-string is ranked on its JSON text), echoed back whole; "
                   "vLLM's multimodal `{\"content\": [...]}` is refused: the model is text-only"})]
QueryInput = Query | QueryObject
DocumentInput = str | DocumentObject


def _one_or_list(item: Any, description: str) -> Any:
    """vLLM's `X | list[X]`: one input, or 1 to max_documents of them."""
    return item | Annotated[list[item], documents_field(description)]


QuerySide = _one_or_list(QueryInput, "the queries: one for all documents, or one per document")
DocumentSide = _one_or_list(DocumentInput, "the documents")
# a cap of 1 to max_model_len tokens (vLLM's truncate_prompt_tokens, besides -1 = max_model_len)
_TRUNCATE_FROM_1 = Annotated[json_integer(1), Field(json_schema_extra=setting_bounds(maximum="max_model_len"))]
_INT64 = 2**63 - 1


class VllmScoringFields(BaseModel):
    """vLLM's fields common to /score and /rerank (ScoringRequestMixin in vLLM 0.26/0.32)."""

    model_config = ConfigDict(strict=True, extra="allow")  # vLLM ignores unknown fields too

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    user: str | None = None
    use_activation: bool | None = Field(
        None, description="false: the raw logit(yes) - logit(no) instead of P(yes)")
    truncate_prompt_tokens: json_integer(-1) | None = Field(
        None, json_schema_extra=setting_bounds(maximum="max_model_len"), description=(
            "cap on the whole prompt's tokens (-1 = max_model_len). Unlike raw vLLM, which cuts the "
            "rendered prompt (and with it the template's end), only the document text is cut: the "
            "template, instruction and query are kept whole, so a cap that leaves no room for a "
            "document is refused (400)"))
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="accepted; the document's end is what is cut")
    padding: Literal["max_length", "do_not_pad"] | None = None
    request_id: str | None = Field(None, description="the answer's id is score-<X-Request-Id or this>")
    priority: json_integer(-_INT64 - 1, _INT64) = Field(0, description=(
        "vLLM's priority (lower = earlier), mapped onto the shim's dispatch classes: < 0 "
        "interactive, > 0 bulk, 0 decided by size (the shim, not vLLM's scheduler, orders work: "
        "vLLM's priority policy never preempts for token budget)"))
    mm_processor_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = Field(None, min_length=1, max_length=1024,
                                   description="accepted; the score cache is keyed on the content")
    max_tokens_per_query: json_integer(0) = Field(0, description="cut the query to N tokens (0 = no cut)")
    max_tokens_per_doc: json_integer(0) = Field(0, description="cut each document to N tokens (0 = no cut)")
    instruction: str | None = Field(None, description="Qwen3 task instruction")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, json_schema_extra={"propertyNames": {"not": {"enum": sorted(_RESERVED_KWARGS)}}},
        description="`instruction` is read from here (it wins over the top-level field); "
                    f"{', '.join(sorted(_RESERVED_KWARGS))} are refused (400), as on vLLM")


_RERANK_EXAMPLE = {"model": "qwen3-reranker", "query": "What is the capital of France?",
                   "documents": ["Paris is the capital of France.", "Berlin is in Germany."],
                   "top_n": 2, "use_activation": True}


class VllmRerankRequest(VllmScoringFields):
    """vLLM's RerankRequest."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [_RERANK_EXAMPLE]})

    query: Query
    documents: DocumentSide
    top_n: json_integer(0) = Field(0, description="0 (or >= len(documents)) = all")
    return_documents: bool | None = Field(
        None, description="vLLM always echoes documents; false leaves them out here")


# vLLM's pairs of /score, in its order: the first complete one (both sides present, not null) is
# scored. JSON Schema can say that one must be complete, not that a left side of N > 1 inputs
# needs N right ones (1:1, 1:N or N:N): that rule is the 400's description.
SCORE_PAIRS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"),
               ("text_1", "text_2"))
_NOT_NULL = {"not": {"type": "null"}}
_ONE_PAIR = {"anyOf": [{"required": list(pair), "properties": {name: _NOT_NULL for name in pair}}
                       for pair in SCORE_PAIRS]}


class VllmScoreRequest(VllmScoringFields):
    """vLLM's ScoreRequest: one of four pairs of fields, each side one input or a list; a left
    side of N > 1 inputs needs N right ones (1:1, 1:N or N:N, else 400)."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={**_ONE_PAIR, "examples": [
        {"model": "qwen3-reranker", "queries": "What is the capital of France?",
         "documents": ["Paris is the capital of France.", "Berlin is in Germany."]}]})

    queries: QuerySide | None = None
    documents: DocumentSide | None = None
    items: DocumentSide | None = None
    data_1: QuerySide | None = None
    data_2: DocumentSide | None = None
    text_1: QuerySide | None = None
    text_2: DocumentSide | None = None

    @model_validator(mode="after")
    def _one_pair(self):
        if self.pair() is None:
            raise ValueError("give one of the pairs queries+documents, queries+items, "
                             "data_1+data_2 or text_1+text_2")
        return self

    def pair(self) -> tuple[Any, Any] | None:
        """The first complete pair, in vLLM's order of its request types."""
        for a, b in SCORE_PAIRS:
            left, right = getattr(self, a), getattr(self, b)
            if left is not None and right is not None:
                return left, right
        return None


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest, answered by the shim with the served tokenizer."""

    # a body with `messages` is the chat form (TokenizeChatRequest), passed to vLLM
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={
        "not": {"required": ["messages"]},
        "examples": [{"prompt": "What is the capital of France?", "return_token_strs": True}]})

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow",
                              json_schema_extra={"examples": [{"tokens": [785, 6722]}]})

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    # the tokenizer takes 32-bit ids (vLLM answers 400 beyond); ids outside the vocabulary are
    # skipped, as vLLM's tokenizer skips them
    tokens: list[json_integer(0, 2**32 - 1)]


# --- bodies passed to vLLM ------------------------------------------------------------------------
# The shim checks the fields it documents (strict JSON types, as everywhere here) and passes the
# body as it came; vLLM checks the rest: other vLLM fields, and the bounds that are its own (ids
# within the vocabulary, prompts within max_model_len). The chat form works with this model's
# template (the launcher's --chat-template): the first message of role "query" and the first of
# role "document" are scored.
ServedModel = Annotated[str, Field(json_schema_extra=setting_bounds(enum="served_models"))]
_TokenId = Annotated[json_integer(0), Field(json_schema_extra=setting_bounds(maximum="max_token_id"))]
_Prompt = Annotated[str, Field(min_length=1)]


def _prompts(item: Any, description: str) -> Any:
    return Annotated[list[item], documents_field(description)]


def _tokens(description: str) -> Any:
    return Annotated[list[_TokenId], Field(min_length=1, description=description,
                                           json_schema_extra=setting_bounds(maxItems="max_model_len"))]


ClassifyInput = (_Prompt | _prompts(_Prompt, "several text prompts")
                 | _tokens("one prompt as token ids")
                 | _prompts(_tokens("token ids"), "several prompts as token ids"))


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    role: str = Field(description='"query" and "document" are scored; other roles are ignored')
    content: str | list[TextPart]


_QUERY_AND_DOCUMENT = {"allOf": [{"contains": {"properties": {"role": {"const": role}}}}
                                 for role in ("query", "document")]}


def _has_query_and_document(messages: list[ChatMessage]) -> list[ChatMessage]:
    roles = {m.role for m in messages}
    for role in ("query", "document"):
        if role not in roles:
            raise ValueError(f'needs a message of role "{role}" (this model\'s chat template scores '
                             'the first "query" message against the first "document" one)')
    return messages


ChatMessages = Annotated[list[ChatMessage], AfterValidator(_has_query_and_document), Field(
    description='needs a message of role "query" and one of role "document"',
    json_schema_extra=_QUERY_AND_DOCUMENT)]


class _RelayedFields(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: ServedModel | None = Field(None, description="the served model's name (empty or null: the same)")
    use_activation: bool | None = Field(None, description="false: the raw logit instead of P(yes)")


class ClassifyRequest(_RelayedFields):
    """vLLM's ClassificationCompletionRequest (passed to vLLM)."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [{"input": "some text"}]})

    input: ClassifyInput = Field(description="text prompts or token ids, scored as they are (no "
                                 "template): one prompt or 1 to max_documents; each 1 to "
                                 "max_model_len tokens")
    truncate_prompt_tokens: Literal[-1] | Annotated[_TRUNCATE_FROM_1, Field()] | None = Field(
        None, description="cut each prompt to N tokens (-1 = max_model_len)")


class ClassifyChatRequest(_RelayedFields):
    """vLLM's ClassificationChatRequest (passed to vLLM)."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"not": {"required": ["input"]}})

    messages: ChatMessages


class PoolingRequest(ClassifyRequest):
    """vLLM's PoolingRequest of text prompts or token ids (passed to vLLM)."""

    task: Literal["classify"] | None = Field(None, description="the one pooling task this model serves")


class PoolingChatRequest(ClassifyChatRequest):
    """vLLM's PoolingChatRequest (passed to vLLM)."""

    task: Literal["classify"] | None = Field(None, description="the one pooling task this model serves")


class TokenizeChatRequest(BaseModel):
    """vLLM's TokenizeChatRequest (passed to vLLM): the prompt the chat template renders."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: ServedModel | None = Field(None, description="the served model's name (empty or null: the same)")
    messages: ChatMessages


class InvocationsClassifyRequest(ClassifyRequest):
    """A classification body on /invocations (passed to vLLM, whose /invocations does not check
    `model`)."""

    # the examples of /invocations are those the shim answers itself (rerank, score)
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra=None)

    model: str | None = Field(None, description="accepted and ignored: the served model answers")


class InvocationsClassifyChatRequest(ClassifyChatRequest):
    """A chat classification body on /invocations (passed to vLLM, which does not check `model`)."""

    model: str | None = Field(None, description="accepted and ignored: the served model answers")


def relayed_body(body: Any, prompts: type[BaseModel], chat: type[BaseModel]) -> None:
    """Check a body that goes to vLLM as it came: the prompt form (`input`, vLLM's first choice)
    or the chat form (`messages`)."""
    _validated(chat if isinstance(body, dict) and "messages" in body and "input" not in body
               else prompts, body)


# What vllm_api._is_classify_body reads as a classification body on /invocations (the types only;
# vLLM then validates it): rerank and score bodies there are those that are not.
_CLASSIFY_SHAPE = {"anyOf": [
    {"required": ["input"], "properties": {"input": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]}}},
    {"required": ["messages"], "properties": {"messages": {"type": "array"}}}]}


# --- response models (the 200 bodies, for the contract tests and /docs) --------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RerankDocument(_Strict):
    text: str | None
    multi_modal: list[Any] | None


class VllmRerankResult(_Strict):
    index: int
    document: RerankDocument | dict[str, Any] | None = Field(
        None, description="left out only for return_documents=false; a string document comes back as "
        "vLLM's {text, multi_modal}, an object document whole")
    relevance_score: float


class RerankUsage(_Strict):
    prompt_tokens: int
    total_tokens: int


class VllmRerankResponse(_Strict):
    id: str
    model: str
    usage: RerankUsage
    results: list[VllmRerankResult]


class UsageInfo(_Strict):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None
    prompt_tokens_details: dict[str, Any] | None
    completion_tokens_details: dict[str, Any] | None


class ScoreData(_Strict):
    index: int
    object: Literal["score"]
    score: float


class ScoreResponse(_Strict):
    id: str
    object: Literal["list"]
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class TokenizeResponse(_Strict):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(_Strict):
    prompt: str


class VersionResponse(_Strict):
    version: str


class ModelPermission(_Strict):
    id: str
    object: Literal["model_permission"]
    created: int
    allow_create_engine: bool
    allow_sampling: bool
    allow_logprobs: bool
    allow_search_indices: bool
    allow_view: bool
    allow_fine_tuning: bool
    organization: str
    group: str | None
    is_blocking: bool


class ModelCard(_Strict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None
    parent: str | None
    max_model_len: int | None
    permission: list[ModelPermission]


class ModelList(_Strict):
    object: Literal["list"]
    data: list[ModelCard]


class EngineAnswer(BaseModel):
    """/classify and /pooling answer what vLLM answers (its shape may grow with its versions)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str
    created: int
    model: str
    data: list[dict[str, Any]]
    usage: dict[str, Any]


# --- mapping onto the core ---------------------------------------------------------------------
def as_list(value: ScoreInput | list[ScoreInput]) -> list[ScoreInput]:
    return value if isinstance(value, list) else [value]


def texts_of(inputs: list[ScoreInput], where: str) -> list[str]:
    """vLLM's text inputs. Its multimodal form ({"content": [parts]}) is refused as vLLM refuses
    it for a text-only model; a Jina/seed object ({"text": ...}) is ranked on its text."""
    if not inputs and where == "documents":
        raise InvalidInput("At least one text_pair element must be given")  # vLLM's words
    out = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            out.append(item)
        elif "content" in item or "text" not in item:
            raise InvalidInput("MultiModalParam is not supported for this text-only model "
                               f"(Qwen3ForSequenceClassification): {where}[{i}]")
        else:
            out.append(item["text"] if isinstance(item["text"], str) else str(item["text"]))
    return out


def _instruction(body: VllmScoringFields) -> str | None:
    return instruction_of(body.chat_template_kwargs, body.instruction)


def instruction_of(chat_template_kwargs: dict | None, instruction: str | None) -> str | None:
    kwargs = chat_template_kwargs or {}
    reserved = _RESERVED_KWARGS & kwargs.keys()
    if reserved:
        raise InvalidInput("chat_template_kwargs contains reserved keys that conflict with fixed "
                           f"scorer arguments: {sorted(reserved)}")
    # vLLM folds `instruction` into the template kwargs; an explicit kwarg wins. Other kwargs
    # are dropped by the template (it reads only `instruction`), here as in vLLM.
    value = kwargs.get("instruction", instruction)
    return None if value is None else str(value)


def _check_token_limit(value: int, name: str) -> None:
    # vLLM also refuses a limit >= max_model_len; here that is simply no cut (the core fits
    # every prompt into max_model_len anyway), on purpose.
    if value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer")


async def _encode(encoder, texts: list[str]):
    if sum(len(t) for t in texts) > _INLINE_TOKENIZE_CHARS:
        return await asyncio.to_thread(encoder.encode_plain, texts)
    return encoder.encode_plain(texts)


def cut_to_tokens(piece, text: str, limit: int) -> str:
    """The text's first `limit` tokens (`piece`: the text tokenised on its own, as vLLM's
    max_tokens_per_query cuts it)."""
    return text if len(piece) <= limit else text[: piece.ends[limit - 1]]


async def _cut_to_tokens(encoder, text: str, limit: int) -> str:
    return cut_to_tokens((await _encode(encoder, [text]))[0], text, limit)


def fixed_prompt_tokens(encoder, query: str, instruction: str) -> int:
    """The prompt's tokens other than the document's: template, instruction and query."""
    return encoder.template_tokens + len(encoder.head(query, instruction))


async def core_request(request: Request, body: VllmScoringFields, query: str, documents: list[str],
                       *, raw: bool = False, max_chunks_per_doc: int | None = None) -> ScoreRequest:
    """vLLM's scoring fields as a ScoreRequest of the core (`raw` and `max_chunks_per_doc`: the
    seed dialect's own fields, applied together with vLLM's)."""
    settings = request.app.state.settings
    encoder = request.app.state.scorer.encoder
    instruction = _instruction(body)
    if body.max_tokens_per_query:
        _check_token_limit(body.max_tokens_per_query, "max_tokens_per_query")
        query = await _cut_to_tokens(encoder, query, body.max_tokens_per_query)
    doc_cap = []
    if body.max_tokens_per_doc:
        _check_token_limit(body.max_tokens_per_doc, "max_tokens_per_doc")
        doc_cap.append(body.max_tokens_per_doc)
    limit = body.truncate_prompt_tokens
    if limit is not None and limit > settings.max_model_len:
        raise InvalidInput("truncate_prompt_tokens value is greater than max_model_len. "
                           "Please request a smaller truncation size.")
    if limit is not None and limit != -1:  # -1 = max_model_len: the core fits every prompt anyway
        # The safe reading of vLLM's cap on the whole prompt: the template, instruction and query
        # stay whole, the document gets what is left.
        room = limit - fixed_prompt_tokens(encoder, query, instruction or settings.default_instruction)
        if room < 1:
            raise InvalidInput(f"truncate_prompt_tokens={limit} leaves no room for a document: the "
                               f"template, instruction and query take {limit - room} tokens")
        doc_cap.append(room)
    raw = raw or body.use_activation is False
    klass = None if body.priority == 0 else ("interactive" if body.priority < 0 else "bulk")
    return ScoreRequest(query, documents, instruction, raw, min(doc_cap) if doc_cap else None,
                        max_chunks_per_doc, priority=klass)


def response_id(request: Request, body: VllmScoringFields) -> str:
    """vLLM's id: "score-" + the X-Request-Id header, else the body's request_id, else new."""
    base = request.headers.get("x-request-id")
    if base is None:
        base = body.request_id if body.request_id is not None else request.scope.get("request_id", "")
    return f"score-{base}"


def rerank_document(doc: ScoreInput) -> dict[str, Any]:
    """A document as vLLM echoes it; an object document (seed/Jina style) comes back whole."""
    return {"text": doc, "multi_modal": None} if isinstance(doc, str) else dict(doc)


def rerank_results(result: ScoreResult, documents: list[ScoreInput], top_n: int | None,
                   return_documents: bool | None) -> list[dict[str, Any]]:
    """vLLM's results: sorted by score (stable), cut to top_n, documents echoed unless false."""
    out = []
    for i in ranking(result, top_n):
        item: dict[str, Any] = {"index": i}
        if return_documents is not False:
            item["document"] = rerank_document(documents[i])
        item["relevance_score"] = result.scores[i]
        out.append(item)
    return out


def usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


async def rerank_answer(request: Request, body: VllmRerankRequest) -> dict[str, Any]:
    """vLLM's /rerank answer for a vLLM rerank body (also used by /v1/rerank, /v2/rerank)."""
    documents = as_list(body.documents)
    req = await core_request(request, body, body.query, texts_of(documents, "documents"))
    result = await score(request, req)
    return {"id": response_id(request, body), "model": request.app.state.settings.model_name,
            "usage": usage(result.prompt_tokens),
            "results": rerank_results(result, documents, body.top_n, body.return_documents)}


# --- /score ------------------------------------------------------------------------------------
async def score_answer(request: Request, body: VllmScoreRequest) -> dict[str, Any]:
    left, right = (as_list(side) for side in body.pair())
    # vLLM's pairing rules and messages, in its order (_validate_score_input_lens)
    if len(left) > 1 and len(left) != len(right):
        raise InvalidInput("Input lengths must be either 1:1, 1:N or N:N")
    if not left:
        raise InvalidInput("At least one text element must be given")
    queries, documents = texts_of(left, "queries"), texts_of(right, "documents")
    limit = request.app.state.settings.max_documents
    if len(documents) > limit:
        raise InvalidInput(f"too many pairs: {len(documents)} > limit {limit} (max_documents); "
                           "split the request")
    # N:N pairs different queries: one core call per distinct query, each scoring its documents
    # (prefix reuse, dedup and cache work per query); 1:N is one call.
    if len(queries) == 1:
        queries = queries * len(documents)
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(q, []).append(i)
    reqs = [await core_request(request, body, q, [documents[i] for i in idx])
            for q, idx in groups.items()]
    results = await score_all(request, reqs)
    scores = [0.0] * len(documents)
    for idx, result in zip(groups.values(), results):
        for i, s in zip(idx, result.scores):
            scores[i] = s
    tokens = sum(r.prompt_tokens for r in results)
    return {"id": response_id(request, body), "object": "list", "created": int(time.time()),
            "model": request.app.state.settings.model_name,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": {**usage(tokens), "completion_tokens": 0, "prompt_tokens_details": None,
                      "completion_tokens_details": None}}


_SCORE_DOC = ("vLLM's Score API: `queries`+`documents` (or `queries`+`items`, `data_1`+`data_2`, "
              "`text_1`+`text_2`), 1:1, 1:N or N:N; `data` in input order. Through the one scoring "
              "core: the official prompt, documents cut to fit instead of a 400, "
              "`truncate_prompt_tokens` cuts only the document text (never the template).")


@router.post("/score", summary="vLLM Score API", description=_SCORE_DOC,
             responses={200: {"model": ScoreResponse}})
async def create_score(body: VllmScoreRequest, request: Request):
    return FastJSONResponse(await score_answer(request, body))


@router.post("/v1/score", summary="vLLM Score API (the /v1 alias)", description=_SCORE_DOC,
             responses={200: {"model": ScoreResponse}})
async def create_score_v1(body: VllmScoreRequest, request: Request):
    return FastJSONResponse(await score_answer(request, body))


# --- /tokenize, /detokenize (the served tokenizer, in the shim) ----------------------------------
def _validated(model: type[BaseModel], body: Any) -> Any:
    """Validate a body the route read as JSON, failing the way FastAPI's own validation does."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


@router.post("/tokenize", summary="vLLM /tokenize with the served tokenizer",
             description="`prompt` is tokenised here with the model's tokenizer (the ids vLLM "
             "gives); the chat form (`messages`) is passed to vLLM.",
             responses={200: {"model": TokenizeResponse}},
             openapi_extra=documented_body(TokenizeRequest, TokenizeChatRequest))
async def tokenize(request: Request, body: Any = Body(None)):
    if isinstance(body, dict) and "messages" in body:
        _validated(TokenizeChatRequest, body)
        return await _pass_through(request, "/tokenize", prompts=1)
    req: TokenizeRequest = _validated(TokenizeRequest, body)
    tokenizer = request.app.state.scorer.encoder.tokenizer

    def run():
        ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens).ids
        strs = [tokenizer.id_to_token(i) for i in ids] if req.return_token_strs else None
        return ids, strs

    ids, strs = await asyncio.to_thread(run) if len(req.prompt) > _INLINE_TOKENIZE_CHARS else run()
    return FastJSONResponse({"count": len(ids), "max_model_len": request.app.state.settings.max_model_len,
                             "tokens": ids, "token_strs": strs})


@router.post("/detokenize", summary="vLLM /detokenize with the served tokenizer",
             responses={200: {"model": DetokenizeResponse}})
async def detokenize(body: DetokenizeRequest, request: Request):
    tokenizer = request.app.state.scorer.encoder.tokenizer
    # Ids outside the vocabulary are skipped, as vLLM's tokenizer skips them; ids past 32 bits
    # do not fit the tokenizer's type: a 400, as on vLLM.
    try:
        text = tokenizer.decode(body.tokens, skip_special_tokens=False)
    except OverflowError as exc:
        raise InvalidInput(str(exc)) from None
    return FastJSONResponse({"prompt": text})


# --- /classify, /pooling: the client's own prompts, passed to vLLM -------------------------------
def _is_token_id(value: Any) -> bool:
    """A JSON integer (3 or 3.0, as vLLM reads them), not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _prompt_count(body: Any) -> tuple[int, int]:
    """(prompts, known tokens) of a classify/pooling body, for the limits; vLLM validates it."""
    if not isinstance(body, dict):
        return 1, 0
    data = body.get("input")
    if isinstance(data, list) and data and all(_is_token_id(x) for x in data):
        return 1, len(data)  # one tokenised prompt
    if isinstance(data, list):
        return max(1, len(data)), sum(len(x) for x in data if isinstance(x, list))
    return 1, 0


async def _pass_through(request: Request, path: str, prompts: int = 1, tokens: int = 0) -> Response:
    """The body as it came, to the same route of vLLM; its answer as it is, with our `detail`
    added to its errors. Counted by admission control and the token metric like scoring."""
    limit = request.app.state.settings.max_documents
    if prompts > limit:
        raise InvalidInput(f"too many inputs: {prompts} > limit {limit} (max_documents); split the request")
    state = request.app.state
    content = await request.body()
    async with state.scorer.admission.admit(prompts, tokens):
        status, payload = await state.engine.forward("POST", path, content)
    if status == 200:
        try:
            prompt_tokens = orjson.loads(payload).get("usage", {}).get("prompt_tokens")
        except (orjson.JSONDecodeError, AttributeError):
            prompt_tokens = None
        if isinstance(prompt_tokens, int):
            state.metrics.tokens.inc(prompt_tokens)
    return _relay(request, status, payload)


def _relay(request: Request, status: int, payload: bytes) -> Response:
    """vLLM's answer as it is; its error bodies get our `detail`, `type` and request id added
    (an error that is not vLLM's error object is answered in vLLM's shape)."""
    if status == 200:
        return Response(payload, media_type="application/json")
    try:
        answer = orjson.loads(payload)
    except orjson.JSONDecodeError:
        answer = None
    type_ = _RELAYED_TYPES.get(status, "invalid_request")
    if not (isinstance(answer, dict) and isinstance(answer.get("error"), dict)):
        text = payload[:500].decode("utf-8", "replace") or "no body"
        status, answer = error_body(status, f"the engine answered {status}: {text}", type_,
                                    request.scope.get("request_id", ""))
        return FastJSONResponse(answer, status_code=status)
    answer.setdefault("detail", answer["error"].get("message", ""))
    answer.setdefault("type", type_)
    answer.setdefault("id", request.scope.get("request_id", ""))
    return FastJSONResponse(answer, status_code=status)


# the shim's error `type` of what vLLM answered (server/errors.py names the shim's own)
_RELAYED_TYPES = {404: "not_found", 501: "not_supported"}


_OWN_PROMPTS = ("For clients that score their own prompts (text or token ids): passed to vLLM "
                "as it is, behind the shim's auth, limits and metrics; the answer is vLLM's.")


@router.post("/classify", summary="vLLM /classify (passed to vLLM)", description=_OWN_PROMPTS,
             responses={200: {"model": EngineAnswer}},
             openapi_extra=documented_body(ClassifyRequest, ClassifyChatRequest))
async def classify(request: Request, body: Any = Body(None)):
    relayed_body(body, ClassifyRequest, ClassifyChatRequest)
    return await _pass_through(request, "/classify", *_prompt_count(body))


@router.post("/pooling", summary="vLLM /pooling (passed to vLLM)", description=_OWN_PROMPTS,
             responses={200: {"model": EngineAnswer}},
             openapi_extra=documented_body(PoolingRequest, PoolingChatRequest))
async def pooling(request: Request, body: Any = Body(None)):
    relayed_body(body, PoolingRequest, PoolingChatRequest)
    return await _pass_through(request, "/pooling", *_prompt_count(body))


# --- /invocations (SageMaker) -------------------------------------------------------------------
def _is_classify_body(body: dict) -> bool:
    """vLLM tries its classification request first: a body with a valid `input` or `messages`."""
    data = body.get("input")
    if isinstance(data, str):
        return True
    if isinstance(data, list):
        return (all(isinstance(x, str) for x in data) or all(_is_token_id(x) for x in data)
                or all(isinstance(x, list) and all(_is_token_id(t) for t in x) for x in data))
    return isinstance(body.get("messages"), list)


def _try(model: type[BaseModel], body: dict) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError:
        return None


def _shaped_as(body: dict) -> type[BaseModel] | None:
    """The request type whose fields a body carries (vLLM's rerank: query and documents; score:
    one of its pairs), valid or not."""
    if "query" in body and "documents" in body:
        return VllmRerankRequest
    if any(body.get(a) is not None and body.get(b) is not None for a, b in SCORE_PAIRS):
        return VllmScoreRequest
    return None


@router.post("/invocations", summary="SageMaker /invocations: dispatched on the body as vLLM does",
             description="The first of vLLM's request types the body fits answers: classify "
             "(`input`/`messages`: passed to vLLM), rerank (`query`+`documents`), score "
             "(`queries`+`documents`, ...). A rerank- or score-shaped body that fits neither is "
             "refused as that type (400); anything else goes to vLLM, which answers it or says "
             "which shapes it expects.",
             responses={200: {"model": VllmRerankResponse | ScoreResponse | EngineAnswer}},
             openapi_extra=documented_body(
                 InvocationsClassifyRequest, InvocationsClassifyChatRequest,
                 (VllmRerankRequest, {"not": _CLASSIFY_SHAPE}),
                 (VllmScoreRequest, {"not": _CLASSIFY_SHAPE})))
async def invocations(request: Request, body: Any = Body(None)):
    if isinstance(body, dict) and not _is_classify_body(body):
        rerank = _try(VllmRerankRequest, body)
        if rerank is not None:
            return FastJSONResponse(await rerank_answer(request, rerank))
        scoring = _try(VllmScoreRequest, body)
        if scoring is not None:
            return FastJSONResponse(await score_answer(request, scoring))
        shape = _shaped_as(body)
        if shape is not None:  # the shim's own checks (an empty query, ...), not vLLM's
            _validated(shape, body)
    if isinstance(body, dict) and ("input" in body or "messages" in body):
        # a classification body, or one with its fields that fits nothing: checked as one (vLLM
        # would read `[true]` as token ids, for instance)
        relayed_body(body, InvocationsClassifyRequest, InvocationsClassifyChatRequest)
    priority_header(request)  # refused on every body, as where the core scores it
    return await _pass_through(request, "/invocations", *_prompt_count(body))


# --- /version, /v1/models -----------------------------------------------------------------------
@router.get("/version", summary="The vLLM version serving the model",
            responses={200: {"model": VersionResponse}})
async def version(request: Request):
    state = request.app.state
    cached = getattr(state, "vllm_version", None)
    if cached is None:
        status, payload = await state.engine.forward("GET", "/version")
        if status != 200:
            return _relay(request, status, payload)
        cached = state.vllm_version = payload  # asked once: restarts bring back the same vLLM
    return Response(cached, media_type="application/json")


@router.get("/v1/models", summary="The served model, as vLLM lists it (with max_model_len)",
            responses={200: {"model": ModelList}})
async def models(request: Request):
    settings = request.app.state.settings
    now = int(time.time())
    permission = {"id": f"modelperm-{secrets.token_hex(8)}", "object": "model_permission",
                  "created": now, "allow_create_engine": False, "allow_sampling": True,
                  "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                  "allow_fine_tuning": False, "organization": "*", "group": None,
                  "is_blocking": False}
    return FastJSONResponse({"object": "list", "data": [{
        "id": settings.model_name, "object": "model", "created": now, "owned_by": "vllm",
        "root": settings.model_path, "parent": None, "max_model_len": settings.max_model_len,
        "permission": [permission]}]})


# --- errors ------------------------------------------------------------------------------------
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
                501: "NotImplementedError", 503: "ServiceUnavailableError"}
# server/errors._validation_detail writes schema errors as "<field.path>: <message>; ..." (or
# "<field.path> must ..."): the first path is vLLM's `param`. Domain errors are sentences, which
# never start that way.
_FIELD_PATH = re.compile(r"^([^\s:;]+)(?:: | must )")
_BODY_TAGS = {"seed", "vllm", "cohere", "tei"}


def _param(status: int, detail: str) -> str | None:
    if status == 400 and detail == "request body is not valid JSON":
        return "body"
    match = _FIELD_PATH.match(detail)
    if not match:
        return None
    path = match.group(1)
    head, _, rest = path.partition(".")
    if head in _BODY_TAGS and rest:  # a dialect's tag in a multi-dialect body's error path
        path = rest
    return path if path == "body" else f"body.{path}"


def errors_for_bodies(speaks_vllm):
    """A route dependency for routes shared with another dialect (/rerank, /v1/rerank): a body
    for which `speaks_vllm(body)` is true gets vLLM's error shape. It runs before FastAPI reports
    a schema error, on the body FastAPI already parsed (Starlette caches it); a body that is not
    JSON keeps the route's own shape."""
    async def dependency(request: Request) -> None:
        try:
            body = await request.json()
        except ValueError:
            return
        if speaks_vllm(body):
            request.scope["dialect"] = DIALECT
    return dependency


def error_body(status: int, detail: str, type_: str, request_id: str) -> tuple[int, dict]:
    """vLLM's error object (what vLLM clients parse) plus our `detail`, `type` (the shim's error
    kind, e.g. engine_unavailable, which the playground reads) and request id. vLLM answers 400
    for every schema or input error, where the shim's own dialects answer 422."""
    if status == 422:
        status = 400
    name = _ERROR_TYPES.get(status)
    if name is None:
        try:
            name = HTTPStatus(status).phrase
        except ValueError:
            name = type_
    return status, {"error": {"message": detail, "type": name, "param": _param(status, detail),
                              "code": status},
                    "detail": detail, "type": type_, "id": request_id}


class VllmErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="what went wrong, as a sentence")
    type: str = Field(description="vLLM's error class, e.g. BadRequestError, NotFoundError")
    param: str | None = Field(description="the field at fault (body.<path>) when known")
    code: int = Field(description="= the HTTP status")


class VllmErrorBody(BaseModel):
    """The model of `error_body` (and of vLLM's own errors as relayed): vLLM's error object, which
    vLLM clients parse, plus the shim's `detail`, `type` and request id."""

    model_config = ConfigDict(extra="forbid")

    error: VllmErrorInfo
    detail: str = Field(description="= error.message (what the shim's other dialects carry)")
    type: str = Field(description="the shim's kind of error, e.g. invalid_request, engine_unavailable")
    id: str = Field(description="the request id, also sent as the X-Request-Id header")


DIALECT = Dialect(
    "vllm", router,
    responses={"/score": ScoreResponse, "/v1/score": ScoreResponse,
               "/tokenize": TokenizeResponse, "/detokenize": DetokenizeResponse,
               "/classify": EngineAnswer, "/pooling": EngineAnswer,
               "/invocations": VllmRerankResponse | ScoreResponse | EngineAnswer,
               "/version": VersionResponse, "/v1/models": ModelList},
    relayed=frozenset({"/classify", "/pooling", "/version"}),
    error=error_body, error_model=VllmErrorBody,
    # the prompt form of /tokenize and /detokenize are the shim's (the served tokenizer); the chat
    # form of /tokenize, /classify and /pooling are vLLM's; /invocations is either
    answers={"/tokenize": frozenset({JSON_BODY, RELAYED}), "/detokenize": frozenset({JSON_BODY}),
             "/classify": frozenset({JSON_BODY, RELAYED}), "/pooling": frozenset({JSON_BODY, RELAYED}),
             "/invocations": frozenset({JSON_BODY, SCORED, RELAYED}),
             "/version": frozenset({ENGINE}), "/v1/models": frozenset()})
