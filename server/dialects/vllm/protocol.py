"""vLLM's request and response bodies, as `vllm serve` of this model reads and writes them.

Request models are strict (JSON types as the OpenAPI document states them) and state in the
document the constraints the server applies; a rule that JSON Schema cannot state is in the
field's description, and the scoring core checks everything again itself. Response models are
the 200 bodies: the contract tests validate real answers against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from server.dialects.common import Query, documents_field, json_integer, omitted_when_none
from server.errors import NON_BLANK
from server.openapi import family_schema, setting_bounds

# Keys only vLLM's rerank body has: a body carrying one on /v1/rerank or /v2/rerank is a vLLM
# client's and gets vLLM's answer and errors (a plain body there stays Cohere/Jina): speaks_vllm.
VLLM_ONLY_FIELDS = frozenset({
    "use_activation", "truncate_prompt_tokens", "truncation_side", "priority", "request_id",
    "max_tokens_per_query", "chat_template_kwargs", "cache_salt", "mm_processor_kwargs",
    "padding", "user"})
# A query or document in vLLM's multimodal form ({"content": [{"type": ...}, ...]}): no other
# dialect of /v1/rerank and /v2/rerank has it (a Cohere v1 document's own "content" field is a
# value, not a list of typed parts), so a body carrying one is a vLLM client's too.
CONTENT_FORM_SCHEMA = {"type": "object", "required": ["content"], "properties": {"content": {
    "type": "array", "items": {"type": "object", "required": ["type"]}}}}


def is_content_form(value: Any) -> bool:
    """Whether `value` is a query or document in vLLM's multimodal form (CONTENT_FORM_SCHEMA)."""
    if not isinstance(value, dict) or not isinstance(value.get("content"), list):
        return False
    return all(isinstance(part, dict) and "type" in part for part in value["content"])


def speaks_vllm(body: Any) -> bool:
    """Whether a body on /v1/rerank or /v2/rerank is a vLLM client's: it has a vLLM-only field,
    or its query or a document is in vLLM's multimodal form (VLLM_BODY_SCHEMA says the same)."""
    if not isinstance(body, dict):
        return False
    if not VLLM_ONLY_FIELDS.isdisjoint(body):
        return True
    documents = body.get("documents")
    return is_content_form(body.get("query")) or any(
        is_content_form(d) for d in (documents if isinstance(documents, list) else [documents]))


# The bodies speaks_vllm takes, as JSON Schema (for the OpenAPI document).
VLLM_BODY_SCHEMA = {"anyOf": [
    *({"required": [name]} for name in sorted(VLLM_ONLY_FIELDS)),
    {"required": ["query"], "properties": {"query": CONTENT_FORM_SCHEMA}},
    {"required": ["documents"], "properties": {"documents": {"anyOf": [
        CONTENT_FORM_SCHEMA, {"type": "array", "contains": CONTENT_FORM_SCHEMA}]}}},
]}
# vLLM refuses these template kwargs: they would override the scorer's own arguments.
RESERVED_TEMPLATE_KWARGS = frozenset({"chat_template", "tools", "tokenize"})

# A query or document: text, or an object (vLLM's multimodal {"content": [parts]} is taken only
# when Qwen3-VL-Reranker is served).
ScoreInput = str | dict[str, Any]


# --- request types ---------------------------------------------------------------------------
# Shared strict types (server/dialects/common.py): JSON types as the document states them, and the
# constraints the server really applies stated in the document. A rule that JSON Schema cannot
# state (e.g. /score's 1:1, 1:N or N:N pairing) is in the description; the core still checks
# everything itself.
_POSITIVE_TEXT = {"anyOf": [{"type": "string", "pattern": NON_BLANK}, {"not": {"type": "string"}}]}
# vLLM's multimodal input, taken when Qwen3-VL-Reranker is served: image_url and text parts
# (images are placed before the text; several text parts are joined by newlines).
_CONTENT = {
    "type": "object", "required": ["content"],
    "properties": {"content": {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"type": "object", "required": ["type", "text"],
         "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
        {"type": "object", "required": ["type", "image_url"],
         "properties": {"type": {"const": "image_url"}, "image_url": {
             "type": "object", "required": ["url"], "properties": {"url": {
                 "type": "string", "description": "a data: URL (data:image/png;base64,...) or "
                 "base64 of a PNG, JPEG, WebP, GIF, BMP or TIFF image"}}}}}]}}},
}
_CONTENT_TEXT = ("vLLM's multimodal `{\"content\": [...]}` (image_url and text parts) is taken when "
                 "a Qwen3-VL reranker is served and refused (400) by a text-only model")


def _object_or_content(text_object: dict[str, Any], description: str) -> Any:
    """A text object, or (Qwen3-VL-Reranker served) vLLM's multimodal content."""
    text_only = {**text_object, "not": {"required": ["content"]}}
    return WithJsonSchema({"type": "object", "description": f"{description}; {_CONTENT_TEXT}",
                           **family_schema(text=text_only, vl={"anyOf": [text_only, _CONTENT]})})


# A query-side object ({"text": ...}, Jina/seed style): ranked on its text (a non-string is
# ranked on its JSON text).
QueryObject = Annotated[dict[str, Any], _object_or_content(
    {"required": ["text"], "properties": {"text": _POSITIVE_TEXT}},
    "ranked on `text` (a string with at least one non-whitespace character, or any other JSON "
    "value, ranked on its JSON text)")]
DocumentObject = Annotated[dict[str, Any], _object_or_content(
    {"required": ["text"]}, "ranked on `text` (a non-string is ranked on its JSON text), echoed back whole")]
QueryInput = Query | QueryObject


def _content_only(value: Any) -> Any:
    if isinstance(value, dict) and "content" not in value:  # vLLM takes no {"text"} query here
        raise PydanticCustomError("string_type", "Input should be a valid string")
    return value


# /rerank's query: text, or (Qwen3-VL-Reranker served) vLLM's multimodal content
ContentQuery = Annotated[dict[str, Any], BeforeValidator(_content_only), WithJsonSchema({
    "description": "vLLM's multimodal query, when a Qwen3-VL reranker is served",
    **family_schema(text={"not": {}}, vl=_CONTENT)})]
DocumentInput = str | DocumentObject


def _one_or_list(item: Any, description: str) -> Any:
    """vLLM's `X | list[X]`: one input, or 1 to max_documents of them."""
    return item | Annotated[list[item], documents_field(description)]


QuerySide = _one_or_list(QueryInput, "the queries: one for all documents, or one per document")
DocumentSide = _one_or_list(DocumentInput, "the documents")
# a cap of 1 to max_model_len tokens (vLLM's truncate_prompt_tokens, besides -1 = max_model_len)
_TRUNCATE_FROM_1 = Annotated[json_integer(1), Field(json_schema_extra=setting_bounds(maximum="max_model_len"))]
# Integers a JSON parser reads exactly: validators and generators that read JSON numbers as
# doubles (schemathesis among them) cannot tell integers apart beyond this, so a bound near vLLM's
# int64 limit would be read differently by the document's readers and by the server.
_JSON_SAFE = 2**53 - 1


class VllmScoringFields(BaseModel):
    """vLLM's fields common to /score and /rerank (ScoringRequestMixin in vLLM 0.26/0.32)."""

    model_config = ConfigDict(strict=True, extra="allow")  # vLLM ignores unknown fields too

    model: str | None = Field(None, description="accepted and ignored: the served model answers")
    user: str | None = None
    use_activation: bool | None = Field(
        None, description="false: the raw logit(yes) - logit(no) instead of P(yes)")
    truncate_prompt_tokens: Literal[-1] | _TRUNCATE_FROM_1 | None = Field(None, description=(
        "cap on the whole prompt's tokens (-1 = max_model_len; 0 is refused: vLLM cuts the prompt to "
        "nothing). Unlike raw vLLM, which cuts the rendered prompt (and with it "
        "the template's end), only the document text is cut: the template, instruction and "
        "query are kept whole. A cap below what they take plus one token leaves the document "
        "its first token, and the prompt is that much longer than the cap"))
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="accepted; the document's end is what is cut")
    padding: Literal["max_length", "do_not_pad"] | None = None
    request_id: str | None = Field(None, description="the answer's id is score-<X-Request-Id or this>")
    priority: json_integer(-_JSON_SAFE, _JSON_SAFE) = Field(0, description=(
        "vLLM's priority (lower = earlier), mapped onto the shim's dispatch classes: < 0 "
        "interactive, > 0 bulk, 0 decided by size (the shim, not vLLM's scheduler, orders work: "
        "vLLM's priority policy never preempts for token budget). Within ±(2^53 - 1), the "
        "integers every JSON parser reads exactly (vLLM takes int64; only the sign matters)"))
    mm_processor_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = Field(None, min_length=1, max_length=1024,
                                   description="accepted; the score cache is keyed on the content")
    max_tokens_per_query: json_integer(0) = Field(0, description="cut the query to N tokens (0 = no cut)")
    max_tokens_per_doc: json_integer(0) = Field(0, description="cut each document to N tokens (0 = no cut)")
    instruction: str | None = Field(None, description="Qwen3 task instruction")
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, json_schema_extra={"propertyNames": {"not": {"enum": sorted(RESERVED_TEMPLATE_KWARGS)}}},
        description="`instruction` is read from here (it wins over the top-level field); "
                    f"{', '.join(sorted(RESERVED_TEMPLATE_KWARGS))} are refused (400), as on vLLM")


_RERANK_EXAMPLE = {"model": "qwen3-reranker", "query": "What is the capital of France?",
                   "documents": ["Paris is the capital of France.", "Berlin is in Germany."],
                   "top_n": 2, "use_activation": True}


class VllmRerankRequest(VllmScoringFields):
    """vLLM's RerankRequest."""

    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"examples": [_RERANK_EXAMPLE]})

    query: Query | ContentQuery
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


def validated(model: type[BaseModel], body: Any) -> Any:
    """Validate a body the route read as JSON, failing the way FastAPI's own validation does."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def relayed_body(body: Any, prompts: type[BaseModel], chat: type[BaseModel]) -> None:
    """Check a body that goes to vLLM as it came: the prompt form (`input`, vLLM's first choice)
    or the chat form (`messages`)."""
    validated(chat if isinstance(body, dict) and "messages" in body and "input" not in body
              else prompts, body)


# --- response models (the 200 bodies, for the contract tests and /docs) --------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RerankDocument(_Strict):
    text: str | None
    multi_modal: list[Any] | None


class VllmRerankResult(_Strict):
    index: int
    document: RerankDocument | dict[str, Any] | None = omitted_when_none(
        "left out only for return_documents=false; a string document comes back as vLLM's "
        "{text, multi_modal}, an object document whole")
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
