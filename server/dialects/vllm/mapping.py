"""vLLM's scoring bodies onto the scoring core, and the core's results into vLLM's answers.

Shared with the dialects that also take vLLM's rerank body: the seed body on /rerank (tei.py)
and vLLM bodies on /v1/rerank, /v2/rerank (cohere.py). Mapping only: what to score and how to
shape the answer; cutting, budgets and every check on token counts are the core's.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from server.dialects.common import ranking, score, score_all
from server.dialects.vllm.protocol import (
    RESERVED_TEMPLATE_KWARGS,
    SCORE_PAIRS,
    RerankDocument,
    RerankUsage,
    ScoreData,
    ScoreInput,
    ScoreResponse,
    UsageInfo,
    VllmRerankRequest,
    VllmRerankResponse,
    VllmRerankResult,
    VllmScoreRequest,
    VllmScoringFields,
)
from server.scoring.core import ScoreRequest, ScoreResult
from server.scoring.errors import InvalidInput
from server.state import request_state


def as_list(value: ScoreInput | list[ScoreInput]) -> list[ScoreInput]:
    return value if isinstance(value, list) else [value]


def texts_of(inputs: list[ScoreInput], where: str) -> list[str]:
    """vLLM's text inputs. Its multimodal form ({"content": [parts]}) is refused as vLLM refuses
    it for a text-only model; a Jina/seed object ({"text": ...}) is ranked on its text."""
    return [text for text, _ in parts_of(inputs, where, vl=False)]


def parts_of(inputs: list[ScoreInput], where: str, vl: bool) -> list[tuple[str, list[str]]]:
    """Each input as (text, image references). With Qwen3-VL-Reranker served (`vl`), vLLM's
    multimodal form {"content": [{"type": "image_url", "image_url": {"url"}}, {"type": "text",
    "text"}]} is taken: images go before the text, as vLLM places them, and several text parts
    are joined by newlines, as vLLM joins them. A text-only model refuses it as vLLM does."""
    if not inputs and where == "documents":
        raise InvalidInput("At least one text_pair element must be given")  # vLLM's words
    out: list[tuple[str, list[str]]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            out.append((item, []))
        elif "content" in item and vl:
            out.append(_content(item["content"], f"{where}[{i}]"))
        elif "content" in item or "text" not in item:
            raise InvalidInput("MultiModalParam is not supported for this text-only model "
                               f"(Qwen3ForSequenceClassification): {where}[{i}]")
        else:
            out.append((item["text"] if isinstance(item["text"], str) else str(item["text"]), []))
    return out


def _content(parts: Any, where: str) -> tuple[str, list[str]]:
    if not isinstance(parts, list) or not parts:
        raise InvalidInput(f"{where}.content must be a non-empty list of text and image_url parts")
    texts, images = [], []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise InvalidInput(f"{where}.content[{j}].image_url.url must be a string")
            images.append(url)
        else:
            raise InvalidInput(f"{where}.content[{j}]: part type {kind!r} is not supported; "
                               "this model takes text and image_url parts")
    return "\n".join(texts), images


def instruction_of(chat_template_kwargs: dict | None, instruction: str | None) -> str | None:
    """The instruction a vLLM body asks for: vLLM folds the top-level `instruction` into the
    template kwargs, and an explicit `chat_template_kwargs.instruction` wins. Other kwargs are
    dropped by this model's template (it reads only `instruction`), here as in vLLM."""
    kwargs = chat_template_kwargs or {}
    reserved = RESERVED_TEMPLATE_KWARGS & kwargs.keys()
    if reserved:
        raise InvalidInput("chat_template_kwargs contains reserved keys that conflict with fixed "
                           f"scorer arguments: {sorted(reserved)}")
    value = kwargs.get("instruction", instruction)
    return None if value is None else str(value)


def score_request(body: VllmScoringFields, query: str, documents: list[str], *, raw: bool = False,
                  max_chunks_per_doc: int | None = None, query_images: list[str] | None = None,
                  document_images: list[list[str]] | None = None) -> ScoreRequest:
    """vLLM's scoring fields as a ScoreRequest of the core (`raw` and `max_chunks_per_doc`: the
    seed dialect's own fields, applied together with vLLM's). 0 in vLLM's token limits means no
    cut; a limit at or beyond max_model_len is no cut either (vLLM refuses it; the core fits
    every prompt into max_model_len anyway, so there is nothing to refuse). -1 in
    truncate_prompt_tokens means max_model_len, which the core applies to every prompt."""
    limit = body.truncate_prompt_tokens
    klass = None if body.priority == 0 else ("interactive" if body.priority < 0 else "bulk")
    return ScoreRequest(
        query, documents, instruction_of(body.chat_template_kwargs, body.instruction),
        raw or body.use_activation is False, body.max_tokens_per_doc or None, max_chunks_per_doc,
        priority=klass, max_tokens_per_query=body.max_tokens_per_query or None,
        truncate_prompt_tokens=None if limit == -1 else limit,
        query_images=query_images or [],
        document_images=document_images if document_images and any(document_images) else None)


def response_id(request: Request, body: VllmScoringFields) -> str:
    """vLLM's id: "score-" + the X-Request-Id header, else the body's request_id, else new."""
    base = request.headers.get("x-request-id")
    if base is None:
        base = body.request_id if body.request_id is not None else request.scope.get("request_id", "")
    return f"score-{base}"


def rerank_document(doc: ScoreInput) -> RerankDocument | dict[str, Any]:
    """A document as vLLM echoes it (a multimodal one as {"text": null, "multi_modal": parts});
    an object document (seed/Jina style) comes back whole."""
    if isinstance(doc, str):
        return RerankDocument(text=doc, multi_modal=None)
    if "content" in doc:
        return RerankDocument(text=None, multi_modal=doc["content"])
    return dict(doc)


def rerank_results(result: ScoreResult, documents: list[ScoreInput], top_n: int | None,
                   return_documents: bool | None) -> list[VllmRerankResult]:
    """vLLM's results: sorted by score (stable), cut to top_n, documents echoed unless false."""
    echo = return_documents is not False
    return [VllmRerankResult(index=i, document=rerank_document(documents[i]) if echo else None,
                             relevance_score=result.scores[i])
            for i in ranking(result, top_n)]


def usage(tokens: int) -> RerankUsage:
    return RerankUsage(prompt_tokens=tokens, total_tokens=tokens)


async def rerank_answer(request: Request, body: VllmRerankRequest) -> VllmRerankResponse:
    """vLLM's /rerank answer for a vLLM rerank body (on /rerank, /v1/rerank, /v2/rerank and
    /invocations)."""
    documents = as_list(body.documents)
    vl = served_vl(request)
    [(query, query_images)] = parts_of([body.query], "query", vl)
    docs = parts_of(documents, "documents", vl)
    result = await score(request, score_request(body, query, [t for t, _ in docs],
                                                query_images=query_images,
                                                document_images=[i for _, i in docs]))
    return VllmRerankResponse(
        id=response_id(request, body), model=request_state(request).settings.model_name,
        usage=usage(result.prompt_tokens),
        results=rerank_results(result, documents, body.top_n, body.return_documents))


async def score_answer(request: Request, body: VllmScoreRequest) -> ScoreResponse:
    """vLLM's /score answer (on /score, /v1/score and /invocations)."""
    limit = request_state(request).settings.max_documents
    _check_other_sides(body, limit, served_vl(request))
    pair = body.pair()
    assert pair is not None  # _check_other_sides refused a body without both sides
    left, right = (as_list(side) for side in pair)
    # vLLM's pairing rules and messages, in its order (_validate_score_input_lens)
    if len(left) > 1 and len(left) != len(right):
        raise InvalidInput("Input lengths must be either 1:1, 1:N or N:N")
    if not left:
        raise InvalidInput("At least one text element must be given")
    vl = served_vl(request)
    queries, documents = parts_of(left, "queries", vl), parts_of(right, "documents", vl)
    if len(documents) > limit:
        raise InvalidInput(f"too many pairs: {len(documents)} > limit {limit} (max_documents); "
                           "split the request")
    # N:N pairs different queries: one core call per distinct query, each scoring its documents
    # (prefix reuse, dedup and cache work per query); 1:N is one call.
    if len(queries) == 1:
        queries = queries * len(documents)
    groups: dict[tuple, list[int]] = {}
    for i, (text, images) in enumerate(queries):
        groups.setdefault((text, tuple(images)), []).append(i)
    results = await score_all(request, [
        score_request(body, text, [documents[i][0] for i in idx], query_images=list(images),
                      document_images=[documents[i][1] for i in idx])
        for (text, images), idx in groups.items()])
    scores = [0.0] * len(documents)
    for idx, result in zip(groups.values(), results):
        for i, s in zip(idx, result.scores):
            scores[i] = s
    tokens = sum(r.prompt_tokens for r in results)
    return ScoreResponse(
        id=response_id(request, body), object="list", created=int(time.time()),
        model=request_state(request).settings.model_name,
        data=[ScoreData(index=i, object="score", score=s) for i, s in enumerate(scores)],
        usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens, completion_tokens=0,
                        prompt_tokens_details=None, completion_tokens_details=None))


def served_vl(request: Request) -> bool:
    """Whether the served model is Qwen3-VL-Reranker (takes images)."""
    return request_state(request).scorer.family == "vl"


def _check_other_sides(body: VllmScoreRequest, limit: int, vl: bool = False) -> None:
    """Sides of the pairs that are not scored (vLLM ignores them) are held to what the document
    states for every side, as the scored pair is: at most max_documents inputs, objects with
    `text` and without `content`, query texts not blank. Otherwise the server would accept
    bodies its document calls invalid."""
    scored = next(pair for pair in SCORE_PAIRS
                  if getattr(body, pair[0]) is not None and getattr(body, pair[1]) is not None)
    for pair in SCORE_PAIRS:
        for name, where in zip(pair, ("queries", "documents")):
            side = getattr(body, name)
            if side is None:
                continue
            inputs = as_list(side)
            if len(inputs) > limit:
                raise InvalidInput(f"too many inputs in {name}: {len(inputs)} > limit {limit} "
                                   "(max_documents); split the request")
            if name in scored:
                continue  # checked where it is scored, in vLLM's words and order
            parts = parts_of(inputs, name, vl)
            if where == "queries" and any(not text.strip() and not images for text, images in parts):
                raise InvalidInput(f"{name} must hold text with at least one non-whitespace character")
