"""The scoring core: one request model in, one result model out, one path to vLLM.

Every dialect maps its body onto `ScoreRequest` and shapes `ScoreResult`; nothing here knows
about HTTP dialects. Steps: cut the query, budget the document tokens so the template's two ends
always fit, cut or chunk documents on token boundaries, score duplicates once, consult the
cache, admit the work, send it to vLLM in concurrent slices, take the max over chunks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field, replace

from cachetools import TTLCache

from server.scoring.dispatch import Dispatcher
from server.scoring.engines import Engine, EngineSet
from server.scoring.errors import DocumentTooLong, InvalidInput, TooLarge
from server.scoring.prompt import Piece, PromptEncoder
from server.scoring.relay import Relay
from server.scoring.vl import VlScoring

# A token of Qwen's BPE is rarely longer than this many characters; text beyond
# budget * this can never be scored, so it is dropped before tokenising (a 5 MB document
# must not cost a full tokenisation when 8k tokens are kept).
_MAX_CHARS_PER_TOKEN = 32
# Tokenising more text than this moves to a worker thread to keep the event loop responsive.
_INLINE_TOKENIZE_CHARS = 20_000


_CANARY_QUERY = "what is the capital of France"
_CANARY_DOCS = ("Paris is the capital and largest city of France.",
                "Bananas are rich in potassium and grow in tropical climates.")


@dataclass
class ScoreRequest:
    query: str
    documents: list[str]
    instruction: str | None = None
    raw: bool = False                    # logit(yes) - logit(no) instead of P(yes)
    max_tokens_per_doc: int | None = None
    max_chunks_per_doc: int | None = None  # None: the server's chunking setting decides
    priority: str | None = None          # "interactive" | "bulk"; None: decided by size
    # The query's first N tokens, the query tokenised on its own (vLLM's max_tokens_per_query);
    # the server's max_query_tokens still applies. None: no cut of the client's.
    max_tokens_per_query: int | None = None
    # A cap on the whole prompt's tokens (vLLM's truncate_prompt_tokens). Only the document is
    # cut to meet it: the template, instruction and query stay whole, because the score is read
    # from the template's last tokens and is a judgement of the query. A cap below what they
    # take leaves the document one token (the prompt then exceeds the cap): refusing instead
    # would depend on a token count no request schema can state, and vLLM scores any cap >= 1.
    truncate_prompt_tokens: int | None = None
    # A document that does not fit whole (after any chunking) is refused with DocumentTooLong
    # instead of cut: NIM's truncate NONE, Voyage's truncation false, TEI's truncate false.
    # Checked before any engine work.
    refuse_truncation: bool = False
    # Qwen3-VL-Reranker: images (data: URLs or base64) of the query and of each document (one
    # list per document, or None), placed before the part's text as Qwen's reference places them.
    # A text-only model refuses them.
    query_images: list[str] = field(default_factory=list)
    document_images: list[list[str]] | None = None

    @property
    def has_images(self) -> bool:
        return bool(self.query_images) or any(self.document_images or ())


@dataclass
class ScoreResult:
    scores: list[float]                  # one per input document, in input order
    prompt_tokens: int
    elapsed_ms: float
    truncated: list[bool] = field(default_factory=list)


@dataclass
class _Job:
    """One unique document's work: its chunks (token ids or text) and the cache key. `tokens`:
    the document tokens sent; `length`: the document's tokens as counted (all of them unless
    `precut`: text far past the budget was dropped before tokenising)."""
    key: str
    chunks: list[list[int]]
    texts: list[str]
    tokens: int
    truncated: bool
    length: int = 0
    precut: bool = False


def _check_unicode(text: str, where: str) -> None:
    """JSON may carry lone surrogates ("\\ud800"); they cannot be tokenised, so refuse them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{where} contains invalid Unicode (a lone surrogate)") from None


def canary_passes(scores: list[float]) -> bool:
    """A loaded engine that returns one constant (a known vLLM failure: 0.5 for everything, seen
    with vLLM 0.26's online FP8 on this model: benchmarks/RESULTS.md, the FP8 and score-stability
    section) or lost its template still passes /health: two unrelated documents must score
    differently. (Non-finite scores never get here: the engine client refuses them.)"""
    a, b = scores
    return abs(a - b) > 1e-6


class Scorer:
    def __init__(self, settings, encoder: PromptEncoder, engine: EngineSet, admission, metrics,
                 family: str = "text"):
        self.settings = settings
        self.encoder = encoder
        self.family = family
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        # requests passed to vLLM as they came, under the same limits and admission as scoring
        self.relay = Relay(settings, engine, admission, metrics)
        # Coalescing needs the token path (/classify takes prompts of different requests).
        self.dispatcher = (Dispatcher(engine, settings, metrics)
                           if settings.batching and settings.engine_api == "tokens" else None)
        self.cache: TTLCache | None = (
            TTLCache(settings.score_cache_entries, settings.score_cache_ttl)
            if settings.score_cache else None
        )
        # Qwen3-VL-Reranker: its own prompt, image handling and engine route (server/scoring/vl.py)
        self.vl = VlScoring(self) if family == "vl" else None

    async def aclose(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.aclose()

    async def score(self, req: ScoreRequest) -> ScoreResult:
        self._validate(req)
        if self.vl is not None:
            return await self.vl.score(req)
        started = time.perf_counter()
        instruction = req.instruction or self.settings.default_instruction
        req = await self._apply_cuts(req, instruction)
        unique = list(dict.fromkeys(req.documents))
        keys = {d: self._cache_key(instruction, req, d) for d in unique}
        cached = self._cache_lookup(keys)
        if req.refuse_truncation:  # a cut document is looked at again, for the refusal's facts
            cached = {d: hit for d, hit in cached.items() if not hit[2]}
        todo = [d for d in unique if d not in cached]
        computed = await self._compute(req, instruction, todo, keys) if todo else {}
        self._cache_store(computed)
        by_doc = {d: cached[d] if d in cached else computed[keys[d]] for d in unique}
        self.metrics.documents.inc(len(req.documents))
        scores = [by_doc[d][0] for d in req.documents]
        tokens = sum(by_doc[d][1] for d in unique)
        truncated = [by_doc[d][2] for d in req.documents]
        return ScoreResult(scores, tokens, (time.perf_counter() - started) * 1000, truncated)

    async def _compute(self, req: ScoreRequest, instruction: str, docs: list[str],
                       keys: dict[str, str], on: Engine | None = None) -> dict[str, tuple[float, int, bool]]:
        """`req` as _apply_cuts leaves it: the query already cut."""
        head = self.encoder.head(req.query, instruction)
        budget, chunks = self._budget(head, req)
        jobs = await self._jobs(docs, keys, budget, chunks)
        if req.refuse_truncation:
            self._refuse_cuts(req.documents, dict(zip(docs, jobs)), budget * chunks)
        self._check_request_tokens(jobs)
        return await self._run(jobs, head, req.query, instruction, req, on)

    async def canary(self, on: Engine | None = None) -> list[float]:
        """Scores of two unrelated documents, through the normal path (template, tokenisation,
        engine call) but past the cache (which could hide a broken engine), on engine `on` only
        (each engine proves itself; None: the first). See canary_passes."""
        docs = list(_CANARY_DOCS)
        if self.vl is not None:
            result = await self.vl.score(ScoreRequest(_CANARY_QUERY, docs),
                                         on=on or self.engine.members[0], use_cache=False)
            return result.scores
        computed = await self._compute(ScoreRequest(_CANARY_QUERY, docs),
                                       self.settings.default_instruction, docs, {d: d for d in docs},
                                       on=on or self.engine.members[0])
        return [computed[d][0] for d in docs]

    # --- request shaping ---------------------------------------------------------------------
    def _validate(self, req: ScoreRequest) -> None:
        if req.has_images and self.vl is None:
            raise InvalidInput("images need a Qwen3-VL reranker; the served model "
                               f"({self.settings.model_name}) is text-only")
        if (not req.query or not req.query.strip()) and not req.query_images:
            raise InvalidInput("query must be a non-empty string")
        if not req.documents:
            raise InvalidInput("documents must contain at least one document")
        limit = self.settings.max_documents
        if len(req.documents) > limit:
            raise InvalidInput(f"too many documents: {len(req.documents)} > limit {limit} "
                                "(max_documents); split the request")
        _check_unicode(req.query, "query")
        for i, doc in enumerate(req.documents):
            _check_unicode(doc, f"documents[{i}]")
        if req.max_tokens_per_doc is not None and req.max_tokens_per_doc < 1:
            raise InvalidInput("max_tokens_per_doc must be >= 1")
        if req.max_chunks_per_doc is not None and req.max_chunks_per_doc < 1:
            raise InvalidInput("max_chunks_per_doc must be >= 1")
        if req.max_tokens_per_query is not None and req.max_tokens_per_query < 1:
            raise InvalidInput("max_tokens_per_query must be >= 1")
        if req.truncate_prompt_tokens is not None and req.truncate_prompt_tokens < 1:
            raise InvalidInput("truncate_prompt_tokens must be >= 1")
        if req.truncate_prompt_tokens is not None and req.truncate_prompt_tokens > self.settings.max_model_len:
            # vLLM's words for the same refusal
            raise InvalidInput("truncate_prompt_tokens value is greater than max_model_len. "
                               "Please request a smaller truncation size.")
        if req.priority not in (None, "interactive", "bulk"):
            raise InvalidInput(f"priority must be 'interactive' or 'bulk', not {req.priority!r}")

    async def _apply_cuts(self, req: ScoreRequest, instruction: str) -> ScoreRequest:
        """The request with the query cut (the client's max_tokens_per_query, then the server's
        max_query_tokens) and truncate_prompt_tokens turned into a cap on the document's tokens.
        Done before the cache is consulted: the cut query and the cap are part of the key."""
        limit = self.settings.max_query_tokens
        if req.max_tokens_per_query is not None:
            limit = min(limit, req.max_tokens_per_query)
        query = await self._cut_query(req.query, limit)
        doc_cap = req.max_tokens_per_doc
        if req.truncate_prompt_tokens is not None:
            fixed = self.encoder.template_tokens + len(self.encoder.head(query, instruction))
            room = max(1, req.truncate_prompt_tokens - fixed)
            doc_cap = room if doc_cap is None else min(doc_cap, room)
        return replace(req, query=query, max_tokens_per_doc=doc_cap, max_tokens_per_query=None,
                       truncate_prompt_tokens=None)

    async def _cut_query(self, query: str, limit: int) -> str:
        """The query's first `limit` tokens (tokenised on its own)."""
        if len(query.encode("utf-8")) <= limit:  # a byte-level BPE token covers >= 1 byte
            return query
        text = query[: limit * _MAX_CHARS_PER_TOKEN]
        piece = (await self._encode([text]))[0]
        if len(piece) <= limit:
            return text
        return text[: piece.ends[limit - 1]]

    def _budget(self, head: list[int], req: ScoreRequest) -> tuple[int, int]:
        """Document tokens per prompt, and how many chunks a document may use."""
        room = self.settings.max_model_len - self.encoder.template_tokens - len(head)
        if self.settings.max_doc_tokens:
            room = min(room, self.settings.max_doc_tokens)
        if req.max_tokens_per_doc:
            room = min(room, req.max_tokens_per_doc)
        if room < 1:
            raise InvalidInput("query and instruction leave no room for a document within "
                                f"max_model_len={self.settings.max_model_len} tokens")
        if req.max_chunks_per_doc is not None:
            chunks = req.max_chunks_per_doc
        else:
            chunks = self.settings.max_chunks_per_doc if self.settings.chunk_long_documents else 1
        return room, chunks

    async def _jobs(self, docs: list[str], keys: dict, budget: int, chunks: int) -> list[_Job]:
        keep = budget * chunks
        texts = [" " + d[: keep * _MAX_CHARS_PER_TOKEN] for d in docs]
        pieces = await self._encode(texts)
        return [self._job(keys[d], t, p, budget, chunks, len(t) - 1 < len(d))
                for d, t, p in zip(docs, texts, pieces)]

    @staticmethod
    def _job(key: str, text: str, piece: Piece, budget: int, max_chunks: int, precut: bool) -> _Job:
        n = len(piece)
        if n <= budget and not precut:  # the common case: one whole document
            return _Job(key, [piece.ids], [text[1:]], n, truncated=False, length=n)
        ends = piece.ends
        starts = list(range(0, min(max(n, 1), budget * max_chunks), budget))
        chunks, texts = [], []
        for s in starts:
            e = min(s + budget, n)
            chunks.append(piece.ids[s:e])
            lo = ends[s - 1] if s else 1  # the first chunk drops the joining space
            texts.append(text[lo: ends[e - 1]] if e else "")
        used = sum(len(c) for c in chunks)
        return _Job(key, chunks, texts, used, truncated=precut or used < n, length=n, precut=precut)

    @staticmethod
    def _refuse_cuts(documents: list[str], jobs: dict[str, _Job], limit: int) -> None:
        """DocumentTooLong for the first document, in request order, that would be cut."""
        for index, doc in enumerate(documents):
            job = jobs.get(doc)
            if job is not None and job.truncated:
                raise DocumentTooLong(index, job.length, limit, tokens_exact=not job.precut)

    def _check_request_tokens(self, jobs: list[_Job]) -> None:
        total = sum(j.tokens for j in jobs)
        if total > self.settings.max_request_tokens:
            raise TooLarge(f"request too large: {total} document tokens > limit "
                                f"{self.settings.max_request_tokens} (max_request_tokens)")

    async def _encode(self, texts: list[str]) -> list[Piece]:
        if sum(len(t) for t in texts) > _INLINE_TOKENIZE_CHARS:
            return await asyncio.to_thread(self.encoder.encode_plain, texts)
        return self.encoder.encode_plain(texts)

    # --- engine work -----------------------------------------------------------------------------
    async def _run(self, jobs: list[_Job], head: list[int], query: str, instruction: str,
                   req: ScoreRequest, on: Engine | None = None) -> dict[str, tuple[float, int, bool]]:
        if not jobs:
            return {}
        owners = [j for j in jobs for _ in j.chunks]
        prompts = [self.encoder.assemble(head, c) for j in jobs for c in j.chunks]
        texts = [t for j in jobs for t in j.texts]
        tokens = sum(len(p) for p in prompts)
        klass = req.priority or (
            "interactive" if tokens <= self.settings.interactive_max_tokens else "bulk")
        async with self.admission.admit(len(prompts), tokens):
            if self.dispatcher is not None and on is None:
                scores = await self.dispatcher.classify(prompts, req.raw, klass)
            else:  # no batching, or one engine's canary (past the dispatcher: no other work waits)
                scores = await self._score_slices(prompts, texts, query, instruction, req.raw, on)
        best: dict[str, float] = {}
        for job, score in zip(owners, scores):
            best[job.key] = max(score, best.get(job.key, float("-inf")))
        overhead = len(head) + self.encoder.template_tokens
        return {j.key: (best[j.key], j.tokens + overhead * len(j.chunks), j.truncated) for j in jobs}

    async def _score_slices(self, prompts, texts, query, instruction, raw, on=None) -> list[float]:
        size = self.settings.pairs_per_engine_call

        def call(part: slice):
            if self.settings.engine_api == "rerank":
                return self.engine.rerank(query, texts[part], instruction, raw, on=on)
            return self.engine.classify(prompts[part], raw, on=on)

        if len(prompts) <= size:  # one call: no task fan-out
            return await call(slice(None))
        results = await asyncio.gather(*(call(slice(i, i + size)) for i in range(0, len(prompts), size)))
        return [score for part in results for score in part]

    # --- cache -----------------------------------------------------------------------------------
    def _cache_key(self, instruction: str, req: ScoreRequest, doc: str) -> str:
        """Everything that decides a score; server settings are fixed for the process."""
        if self.cache is None:
            return doc
        h = hashlib.blake2b(digest_size=20)
        for part in (self.engine.model_name, instruction, req.query, doc, str(req.max_tokens_per_doc),
                     str(req.max_chunks_per_doc), str(req.raw)):
            h.update(part.encode("utf-8"))
            h.update(b"\x00")
        return h.hexdigest()

    def _cache_lookup(self, keys: dict[str, str]) -> dict[str, tuple]:
        if self.cache is None:
            return {}
        hits = {d: self.cache[k] for d, k in keys.items() if k in self.cache}
        self.metrics.cache_hits.inc(len(hits))
        self.metrics.cache_misses.inc(len(keys) - len(hits))
        return hits

    def _cache_store(self, computed: dict[str, tuple]) -> None:
        if self.cache is not None:
            for key, value in computed.items():
                self.cache[key] = value
