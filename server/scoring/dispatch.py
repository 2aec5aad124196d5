"""Cross-request batching and token-budgeted priority dispatch in front of vLLM's /classify.

Why this exists (docs/deployment.md, "Mixed traffic: interactive and bulk work"; measurements in
benchmarks/RESULTS.md):
- Every call to vLLM costs its API server and engine core a fixed overhead, so one call per small
  request (3 documents) would leave the GPU mostly idle. `/classify` takes many pre-tokenised
  prompts per call, so concurrent requests are coalesced here.
- vLLM's scheduler runs RUNNING requests first and never preempts for token budget, so once bulk
  work fills the engine, a small request waits behind all of it, whatever its vLLM priority. Only
  the shim can keep bulk work out of the engine: outstanding engine tokens are kept under a budget
  and the rest waits here, where interactive work is dispatched first.

Model: a request's prompts become items of at most `batch_max_tokens` tokens, queued by class
(interactive, bulk). One loop dispatches: the interactive queue first, unless the oldest bulk item
has waited `bulk_max_wait_s` (bounded wait: bulk never starves); interactive calls only need a free
call slot, bulk calls must also fit the engine token budget. A call takes as many queued items of
one class as fit `batch_max_tokens` / `batch_max_prompts`. While calls are in flight the loop lets
a batch fill for `batch_fill_ms` first (the engine is busy anyway); an idle engine gets work at
once, so a lone request never waits for the deadline.

While that tight budget is in force, a bulk item larger than the room left in it is cut
(`bulk_split_to_budget`, on by default): its leading prompts that fit go now, the rest stays at
the head of the bulk queue. Without the cut, each shim worker would always have one whole item
(up to `batch_max_tokens`) in the engine, and the budget would not bind (benchmarks/RESULTS.md,
"Mixed traffic: bulk cut to the budget").

The bulk budget adapts: while interactive work has been seen in the last
`interactive_memory_s`, bulk may hold only `engine_token_budget` tokens in the engine (small
requests then wait behind at most that much); with no interactive traffic, bulk may fill the
engine up to `bulk_budget_factor` times that, which a GPU needs to stay busy on bulk alone.
Identical prompts in one call (concurrent identical requests: retries, popular queries, a load
test's fixed body) are sent once: the engine's answer for a prompt does not depend on who asked.

Several engines: the budget and the call slots are per engine (a data-parallel vLLM
counts as `engines` of them), and each call goes to the usable engine with room that has the
fewest outstanding tokens (server/scoring/engines.py); a call that fails there because the
engine went away is sent once to another one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from server.scoring.engines import Engine, EngineSet
from server.scoring.errors import EngineRejected

log = logging.getLogger("server.dispatch")
CLASSES = ("interactive", "bulk")


@dataclass(eq=False)
class _Item:
    prompts: list[list[int]]
    tokens: int
    raw: bool
    klass: str
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)
    parts: list[_Item] = field(default_factory=list)  # what it was cut into (_cut)


class Dispatcher:
    def __init__(self, engines: EngineSet, settings, metrics) -> None:
        self.engines = engines
        self.metrics = metrics
        self.max_tokens = settings.batch_max_tokens
        self.max_prompts = settings.batch_max_prompts
        self.fill_s = settings.batch_fill_ms / 1000.0
        self.budget = settings.engine_token_budget_resolved
        self.bulk_budget = self.budget * settings.bulk_budget_factor
        self.split_to_budget = settings.bulk_split_to_budget
        self.interactive_memory_s = settings.interactive_memory_s
        self.last_interactive = float("-inf")
        self.max_calls = settings.engine_max_calls
        self.bulk_max_wait_s = settings.bulk_max_wait_s
        self.queues: dict[str, deque[_Item]] = {k: deque() for k in CLASSES}
        self.queued_prompts = dict.fromkeys(CLASSES, 0)
        self.calls = 0                # /classify calls in flight, all engines
        self.outstanding = 0          # prompt tokens in flight, all engines
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._calls_tasks: set[asyncio.Task] = set()

    # --- the caller's side ---------------------------------------------------------------------
    async def classify(self, prompts: list[list[int]], raw: bool, klass: str) -> list[float]:
        """Scores of `prompts`, in order, dispatched with the other requests' work."""
        self._ensure_running()
        loop = asyncio.get_running_loop()
        items = [_Item(part, sum(len(p) for p in part), raw, klass, loop.create_future())
                 for part in self._split(prompts, self.max_tokens)]
        if klass == "interactive":
            self.last_interactive = time.monotonic()
        for item in items:
            self.queues[klass].append(item)
            self.queued_prompts[klass] += len(item.prompts)
        self._publish_depth(klass)
        self._changed.set()
        try:
            parts = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            # Cancelled (client gone) or failed: queued items of this request must not be sent.
            for item in items:
                if not item.future.cancel() and not item.future.cancelled():
                    item.future.exception()  # retrieved: no "never retrieved" warning
                self._abandon(item)
            self._drop_cancelled(klass)
            raise
        return [score for part in parts for score in part]

    def _split(self, prompts: list[list[int]], cap: int) -> list[list[list[int]]]:
        parts, current, tokens = [], [], 0
        for p in prompts:
            if current and (tokens + len(p) > cap or len(current) >= self.max_prompts):
                parts.append(current)
                current, tokens = [], 0
            current.append(p)
            tokens += len(p)
        if current:
            parts.append(current)
        return parts

    # --- the loop --------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for task in list(self._calls_tasks):
            task.cancel()

    async def _run(self) -> None:
        while True:
            picked = self._pick()
            if picked is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            if self.calls and self.fill_s:
                await asyncio.sleep(self.fill_s)  # the engine is busy: let the batch grow
                picked = self._pick() or picked
            klass, engine = picked
            batch = self._take(klass, engine)
            if batch:
                self._launch(klass, batch, engine)
            else:  # the pick went stale (budget state changed during the fill): never spin hot
                await asyncio.sleep(0.001)

    def _pick(self) -> tuple[str, Engine] | None:
        """The class to dispatch next and the engine it goes to, or None when nothing may go now."""
        for klass in CLASSES:
            self._pop_done_heads(klass)
        inter, bulk = self.queues["interactive"], self.queues["bulk"]
        order = CLASSES
        if bulk and (not inter or time.monotonic() - bulk[0].queued_at >= self.bulk_max_wait_s):
            order = ("bulk", "interactive")
        for klass in order:
            if self.queues[klass]:
                head = self.queues[klass][0]
                # an item that may be cut needs room for its first prompt only
                need = len(head.prompts[0]) if self._may_cut(klass) else head.tokens
                engine = self._engine_for(klass, need)
                if engine is not None:
                    return klass, engine
        return None

    def _engine_for(self, klass: str, tokens: int) -> Engine | None:
        """The least-loaded usable engine with room for this class's next item."""
        max_calls = self.max_calls
        if klass == "interactive":  # small by definition: only a call slot is needed
            return self.engines.choose(lambda e: e.calls < max_calls * e.weight)
        budget = self._bulk_budget()
        return self.engines.choose(lambda e: e.calls < max_calls * e.weight and (
            e.outstanding == 0 or e.outstanding + tokens <= budget * e.weight))

    def _bulk_budget(self) -> int:
        """Tight while interactive work is around, wide when bulk has the engine to itself."""
        if time.monotonic() - self.last_interactive < self.interactive_memory_s:
            return self.budget
        return self.bulk_budget

    def _may_cut(self, klass: str) -> bool:
        """Bulk items are cut to the room left in the budget only while the tight budget is in
        force (bulk_split_to_budget): queued items are up to batch_max_tokens and, sent whole,
        each shim worker would have a whole one in the engine whatever its share of the budget,
        so the budget would not shorten a small request's wait (benchmarks/RESULTS.md, "Mixed
        traffic: bulk cut to the budget"). With bulk alone they go whole, so bulk-only
        throughput and latency are those of uncut calls."""
        return (klass == "bulk" and self.split_to_budget
                and time.monotonic() - self.last_interactive < self.interactive_memory_s)

    def _take(self, klass: str, engine: Engine) -> list[_Item]:
        queue, batch, tokens, prompts = self.queues[klass], [], 0, 0
        budget = self._bulk_budget() * engine.weight
        may_cut = self._may_cut(klass)
        while queue:
            item = queue[0]
            if item.future.done():  # cancelled while queued
                queue.popleft()
                self.queued_prompts[klass] -= len(item.prompts)
                continue
            if batch and item.raw != batch[0].raw:  # one call answers one kind of score
                break
            over_budget = klass == "bulk" and engine.outstanding + tokens + item.tokens > budget
            if may_cut and over_budget and len(item.prompts) > 1:
                room = min(budget - engine.outstanding, self.max_tokens) - tokens
                n = self._fitting(item, room, self.max_prompts - prompts)
                if n == 0 and not batch and engine.outstanding == 0:
                    n = 1  # an idle engine always gets work
                if n:
                    head, queue[0] = self._cut(item, n)
                    batch.append(head)
                    tokens += head.tokens
                    prompts += len(head.prompts)
                break
            if batch and (tokens + item.tokens > self.max_tokens
                          or prompts + len(item.prompts) > self.max_prompts or over_budget):
                break
            queue.popleft()
            batch.append(item)
            tokens += item.tokens
            prompts += len(item.prompts)
        now = time.monotonic()
        for item in batch:
            self.queued_prompts[klass] -= len(item.prompts)
            self.metrics.queue_wait.labels(klass).observe(now - item.queued_at)
        self._publish_depth(klass)
        return batch

    @staticmethod
    def _fitting(item: _Item, room: int, max_prompts: int) -> int:
        """How many of the item's leading prompts fit `room` tokens (and `max_prompts`)."""
        n = used = 0
        for p in item.prompts[:max(0, max_prompts)]:
            if used + len(p) > room:
                break
            used += len(p)
            n += 1
        return n

    @staticmethod
    def _cut(item: _Item, n: int) -> tuple[_Item, _Item]:
        """The item's first n prompts as one item and the rest as another, each with its own
        future; the original future (the caller's) gets the joined scores, or the first error.
        When the caller stops waiting (gone, or failed by one part), classify() abandons the
        parts, so a queued rest is dropped instead of sent."""
        loop = item.future.get_loop()
        head_tokens = sum(len(p) for p in item.prompts[:n])
        head = _Item(item.prompts[:n], head_tokens, item.raw, item.klass, loop.create_future(),
                     item.queued_at)
        rest = _Item(item.prompts[n:], item.tokens - head_tokens, item.raw, item.klass,
                     loop.create_future(), item.queued_at)
        joined = asyncio.gather(head.future, rest.future)

        def finish(done: asyncio.Future) -> None:
            # retrieved even when nobody waits any more (no "never retrieved" error in the log)
            error = None if done.cancelled() else done.exception()
            if item.future.done():
                return
            if done.cancelled():
                item.future.cancel()
            elif error is not None:
                item.future.set_exception(error)
            else:
                first, second = done.result()
                item.future.set_result(first + second)

        joined.add_done_callback(finish)
        item.parts = [head, rest]
        return head, rest

    @classmethod
    def _abandon(cls, item: _Item) -> None:
        """Cancel what the item was cut into, now (a done-callback would run only after the
        caller has already cleaned the queue)."""
        for part in item.parts:
            part.future.cancel()  # no-op for a part already answered
            cls._abandon(part)

    def _launch(self, klass: str, batch: list[_Item], engine: Engine) -> None:
        tokens = sum(item.tokens for item in batch)
        self.calls += 1
        self.outstanding += tokens
        engine.acquire(tokens)  # now, so the next pick sees it (the call starts later)
        self.metrics.engine_outstanding_tokens.set(self.outstanding)
        self.metrics.batch_prompts.observe(sum(len(item.prompts) for item in batch))
        task = asyncio.get_running_loop().create_task(self._call(batch, tokens, engine))
        self._calls_tasks.add(task)
        task.add_done_callback(self._calls_tasks.discard)

    async def _call(self, batch: list[_Item], tokens: int, engine: Engine) -> None:
        try:
            unique: dict[tuple[int, ...], int] = {}
            slots = [unique.setdefault(tuple(p), len(unique)) for item in batch for p in item.prompts]
            prompts, raw = [list(p) for p in unique], batch[0].raw
            try:
                # the engine set releases `engine` when the call ends, or moves the call to
                # another engine if this one went away
                distinct = await self.engines.call(lambda c: c.classify(prompts, raw), tokens, engine)
                scores = [distinct[i] for i in slots]
            except EngineRejected:
                if len(batch) == 1:
                    raise
                # One request's input may be what the engine refused: score each request on its
                # own so only that request fails.
                await asyncio.gather(*(self._call_alone(item) for item in batch))
                return
            at = 0
            for item in batch:
                n = len(item.prompts)
                if not item.future.done():
                    item.future.set_result(scores[at: at + n])
                at += n
        except Exception as exc:  # engine down, timeout, bad answer: every caller learns it
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self.calls -= 1
            self.outstanding -= tokens
            self.metrics.engine_outstanding_tokens.set(self.outstanding)
            self._changed.set()

    async def _call_alone(self, item: _Item) -> None:
        try:
            result = await self.engines.classify(item.prompts, item.raw)
            if not item.future.done():
                item.future.set_result(result)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _pop_done_heads(self, klass: str) -> None:
        queue = self.queues[klass]
        while queue and queue[0].future.done():
            self.queued_prompts[klass] -= len(queue.popleft().prompts)

    def _drop_cancelled(self, klass: str) -> None:
        queue = self.queues[klass]
        if any(item.future.done() for item in queue):
            kept = deque(item for item in queue if not item.future.done())
            for item in queue:
                if item.future.done():
                    self.queued_prompts[klass] -= len(item.prompts)
            self.queues[klass] = kept
            self._publish_depth(klass)

    def _publish_depth(self, klass: str) -> None:
        self.metrics.queue_depth.labels(klass).set(self.queued_prompts[klass])
