"""The scoring core's path for Qwen3-VL-Reranker: queries and documents of text and images.

The same steps as the text path (server/scoring/core.py), on parts of text and images:
- images are loaded and checked (server/images: data: URLs, base64, guarded fetch, limits) and
  resized the reference's way (server/scoring/vl_images.py), so their token counts are known
  here: (h / 32) x (w / 32) + 2 each;
- the query text is cut like the text model's; each document's text gets the room that
  max_model_len leaves after the template, instruction, query (its text and images) and the
  document's own images, and is cut or chunked on token boundaries (a chunk keeps the document's
  images; document score = max over its chunks);
- duplicates are scored once and the score cache is keyed by the texts and the images' picture
  hashes (`LoadedImage.sha256`, of the decoded pixels: the same picture sent as a data: URL or
  as base64, or as another file of the same pixels, shares entries);
- admission counts every prompt token, image tokens included, and the images' decoded bytes;
- the pairs go to vLLM's /rerank as vLLM's multimodal content (image parts, then the text), in
  concurrent slices, rendered by the shipped VL template (launcher/templates/
  qwen3_vl_reranker.jinja) into the official prompt (server/scoring/vl_prompt.py).

vLLM tokenises the rendered prompt as one string, so a control token's text inside user text
would become that control token (a forged <|im_end|>, or an <|image_pad|> that vLLM counts as an
image placeholder and refuses). User text therefore has each of the tokenizer's added tokens
broken by a WORD JOINER (U+2060) after its first character: it stays readable, and it is never a
control token. Text without such strings, i.e. all normal text, is sent unchanged.

Token counts are the pieces' counts (the prompt's text is tokenised whole by vLLM, which can
merge a token across a piece's edge): a few tokens of margin keep every prompt within
max_model_len.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.images import decoded_bytes, load_images
from server.scoring.errors import DocumentTooLong, InvalidInput, TooLarge
from server.scoring.vl_images import ImagePreparer, PreparedImage
from server.scoring.vl_prompt import DEFAULT_VL_INSTRUCTION, DOCUMENT_TAG, EMPTY_PART, SUFFIX, head
from server.settings import DEFAULT_INSTRUCTION

if TYPE_CHECKING:
    from server.scoring.core import Scorer, ScoreRequest, ScoreResult
    from server.scoring.engines import Engine

# Tokens a piece may gain or lose when vLLM tokenises the whole prompt instead of the pieces.
_MARGIN = 4
_WORD_JOINER = "\u2060"


@dataclass
class _Doc:
    """One unique document's work: its images, its text chunks, the cache key."""

    key: str
    images: list[PreparedImage]
    chunks: list[str]
    tokens: int
    truncated: bool
    # for a refusal instead of a cut (refuse_truncation): the text's tokens (a lower bound when
    # not `exact`) and the text tokens that fit beside the images
    length: int = 0
    limit: int = 0
    exact: bool = True


class VlScoring:
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.settings = scorer.settings
        self.encoder = scorer.encoder
        self.images = ImagePreparer()
        added = self.encoder.tokenizer.get_added_tokens_decoder().values()
        contents = sorted({t.content for t in added if len(t.content) > 1}, key=len, reverse=True)
        self._control = re.compile("|".join(map(re.escape, contents))) if contents else None

    # --- public ----------------------------------------------------------------------------------
    @property
    def default_instruction(self) -> str:
        """The operator's default instruction if they set one, else the VL reference's default
        (which differs from the text model's)."""
        default = self.settings.default_instruction
        return default if default != DEFAULT_INSTRUCTION else DEFAULT_VL_INSTRUCTION

    def instruction(self, req: ScoreRequest) -> str:
        """The client's instruction, else the default one."""
        return req.instruction or self.default_instruction

    async def score(self, req: ScoreRequest, on: Engine | None = None,
                    use_cache: bool = True) -> ScoreResult:
        from server.scoring.core import ScoreResult

        started = time.perf_counter()
        self._validate(req)
        instruction = self.instruction(req)
        limit = self.settings.max_query_tokens
        if req.max_tokens_per_query is not None:
            limit = min(limit, req.max_tokens_per_query)
        query = await self.scorer._cut_query(req.query, limit)
        doc_images = req.document_images or [[] for _ in req.documents]
        query_images, images_by_doc, image_bytes = await self._prepare(req.query_images, doc_images)
        fixed = self._fixed_tokens(instruction, query, query_images)
        cap = req.max_tokens_per_doc
        unique: dict[tuple, int] = {}
        for i, (text, refs) in enumerate(zip(req.documents, images_by_doc)):
            unique.setdefault((text, tuple(p.digest for p in refs)), i)
        cache = self.scorer.cache if use_cache else None
        keys = {u: self._cache_key(instruction, query, query_images, u, req) for u in unique}
        cached = {u: cache[k] for u, k in keys.items() if cache is not None and k in cache}
        if cache is not None:
            self.scorer.metrics.cache_hits.inc(len(cached))
            self.scorer.metrics.cache_misses.inc(len(keys) - len(cached))
        if req.refuse_truncation:  # a cut document is looked at again, for the refusal's facts
            cached = {u: hit for u, hit in cached.items() if not hit[2]}
        todo = [u for u in unique if u not in cached]
        docs = [await self._doc(keys[u], u[0], images_by_doc[unique[u]], unique[u], fixed, cap, req)
                for u in todo]
        if req.refuse_truncation:  # todo is in request order of first appearance
            for u, doc in zip(todo, docs):
                if doc.truncated:
                    raise DocumentTooLong(unique[u], doc.length, doc.limit, tokens_exact=doc.exact)
        self._check_request_tokens(docs)
        computed = await self._run(docs, query, query_images, instruction, fixed, req, on, image_bytes)
        if cache is not None:
            for key, value in computed.items():
                cache[key] = value
        by_doc = {u: cached[u] if u in cached else computed[keys[u]] for u in unique}
        order = [(text, tuple(p.digest for p in refs)) for text, refs in zip(req.documents, images_by_doc)]
        self.scorer.metrics.documents.inc(len(req.documents))
        return ScoreResult([by_doc[u][0] for u in order], sum(v[1] for v in by_doc.values()),
                           (time.perf_counter() - started) * 1000, [by_doc[u][2] for u in order])

    # --- shaping ---------------------------------------------------------------------------------
    def _validate(self, req: ScoreRequest) -> None:
        limit = self.settings.max_images_per_part
        if len(req.query_images) > limit:
            raise InvalidInput(f"query has {len(req.query_images)} images > limit {limit} "
                               "(max_images_per_part)")
        if req.document_images is not None:
            if len(req.document_images) != len(req.documents):
                raise InvalidInput("document_images must have one list per document")
            for i, refs in enumerate(req.document_images):
                if len(refs) > limit:
                    raise InvalidInput(f"documents[{i}] has {len(refs)} images > limit {limit} "
                                       "(max_images_per_part)")

    async def _prepare(self, query_refs: list[str], doc_refs: list[list[str]]
                       ) -> tuple[list[PreparedImage], list[list[PreparedImage]], int]:
        """Load and resize every image (each distinct reference once); also their decoded bytes,
        which admission counts."""
        wanted: dict[str, str] = {}
        for j, ref in enumerate(query_refs):
            wanted.setdefault(ref, f"query image {j}")
        for i, refs in enumerate(doc_refs):
            for j, ref in enumerate(refs):
                wanted.setdefault(ref, f"documents[{i}] image {j}")
        if not wanted:
            return [], [[] for _ in doc_refs], 0
        refs = list(wanted)
        loaded = await load_images(refs, self.settings, where=[wanted[r] for r in refs], keep_picture=True)
        # in worker threads, side by side: a resize or an encode takes the event loop's time
        # otherwise, and Pillow releases the GIL while it works
        prepared = await asyncio.gather(*(asyncio.to_thread(self.images.prepare, image, wanted[ref])
                                          for ref, image in zip(refs, loaded)))
        done = dict(zip(refs, prepared))
        return ([done[r] for r in query_refs], [[done[r] for r in refs] for refs in doc_refs],
                decoded_bytes(loaded))

    def _fixed_tokens(self, instruction: str, query: str, query_images: list[PreparedImage]) -> int:
        """Tokens of the prompt but the document part: template, instruction, query."""
        text = head(self.plain(instruction)) + (self.plain(query) or ("" if query_images else EMPTY_PART))
        ids = self.encoder.tokenizer.encode(text + DOCUMENT_TAG + SUFFIX, add_special_tokens=False).ids
        return len(ids) + sum(p.tokens for p in query_images) + _MARGIN

    async def _doc(self, key: str, text: str, images: list[PreparedImage], index: int, fixed: int,
                   cap: int | None, req: ScoreRequest) -> _Doc:
        image_tokens = sum(p.tokens for p in images)
        room = self.settings.max_model_len - fixed - image_tokens
        if room < 0 or (room < 1 and not images):
            raise InvalidInput(f"documents[{index}]: the template, instruction, query and this "
                               f"document's images take {fixed + image_tokens} tokens, more than "
                               f"max_model_len={self.settings.max_model_len}; send smaller or "
                               "fewer images, or a shorter query")
        if self.settings.max_doc_tokens:
            room = min(room, self.settings.max_doc_tokens)
        if cap:
            room = min(room, cap)
        if req.truncate_prompt_tokens is not None:
            room = min(room, max(0 if images else 1, req.truncate_prompt_tokens - fixed - image_tokens))
        if req.max_chunks_per_doc is not None:
            max_chunks = req.max_chunks_per_doc
        else:
            max_chunks = self.settings.max_chunks_per_doc if self.settings.chunk_long_documents else 1
        if not text:
            return _Doc(key, images, [""], image_tokens + (0 if images else 1), False)
        if room < 1:  # the images fill the prompt: the text is cut to nothing
            return _Doc(key, images, [""], image_tokens, True, length=1, limit=0, exact=False)
        piece = (await self.scorer._encode([text]))[0]
        n = len(piece)
        if n <= room:
            return _Doc(key, images, [text], n + image_tokens, False)
        ends = piece.ends
        chunks = []
        for start in range(0, min(n, room * max_chunks), room):
            end = min(start + room, n)
            chunks.append(text[(ends[start - 1] if start else 0): ends[end - 1]])
        used = min(n, room * max_chunks)
        return _Doc(key, images, chunks, used + image_tokens * len(chunks), used < n, length=n,
                    limit=room * max_chunks)

    def _check_request_tokens(self, docs: list[_Doc]) -> None:
        total = sum(d.tokens for d in docs)
        if total > self.settings.max_request_tokens:
            raise TooLarge(f"request too large: {total} document tokens > limit "
                           f"{self.settings.max_request_tokens} (max_request_tokens)")

    def plain(self, text: str) -> str:
        """User text that vLLM's whole-string tokenisation cannot turn into a control token."""
        if self._control is None or "<" not in text:
            return text
        return self._control.sub(lambda m: m.group(0)[0] + _WORD_JOINER + m.group(0)[1:], text)

    def content(self, text: str, images: list[PreparedImage]) -> str | dict[str, Any]:
        """A query or document as vLLM's /rerank takes it: text alone, or its images then text."""
        text = self.plain(text)
        if not images:
            return text
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": p.url}} for p in images]
        if text:
            parts.append({"type": "text", "text": text})
        return {"content": parts}

    # --- engine work -------------------------------------------------------------------------------
    async def _run(self, docs: list[_Doc], query: str, query_images: list[PreparedImage],
                   instruction: str, fixed: int, req: ScoreRequest,
                   on: Engine | None, image_bytes: int = 0) -> dict[str, tuple[float, int, bool]]:
        if not docs:
            return {}
        owners = [d for d in docs for _ in d.chunks]
        contents = [self.content(chunk, d.images) for d in docs for chunk in d.chunks]
        prompt_tokens = [fixed - _MARGIN + d.tokens // len(d.chunks) for d in docs for _ in d.chunks]
        tokens = sum(prompt_tokens)
        query_content = self.content(query, query_images)
        instruction = self.plain(instruction)
        size = self.settings.pairs_per_engine_call
        engine = self.scorer.engine

        def call(part: slice):
            return engine.rerank(query_content, contents[part], instruction, req.raw, on=on,
                                 tokens=sum(prompt_tokens[part]))

        async with self.scorer.admission.admit(len(contents), tokens, image_bytes):
            if len(contents) <= size:
                scores = await call(slice(None))
            else:
                parts = await asyncio.gather(*(call(slice(i, i + size))
                                               for i in range(0, len(contents), size)))
                scores = [s for part in parts for s in part]
        best: dict[str, float] = {}
        for doc, score in zip(owners, scores):
            best[doc.key] = max(score, best.get(doc.key, float("-inf")))
        overhead = fixed - _MARGIN
        return {d.key: (best[d.key], d.tokens + overhead * len(d.chunks), d.truncated) for d in docs}

    # --- cache -------------------------------------------------------------------------------------
    def _cache_key(self, instruction: str, query: str, query_images: list[PreparedImage],
                   unique: tuple, req: ScoreRequest) -> str:
        text, digests = unique
        h = hashlib.blake2b(digest_size=20)
        for part in (self.scorer.engine.model_name, instruction, query, *[p.digest for p in query_images],
                     "|", text, *digests, str(req.max_tokens_per_doc), str(req.max_chunks_per_doc),
                     str(req.truncate_prompt_tokens), str(req.raw)):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()
