"""Several engines behind one shim: the engine set every engine call goes through.

One `EngineClient` per vLLM: one per GPU (or tensor-parallel group) in `multi_gpu_mode=engines`,
one in total otherwise. Rules, and why:

- Spreading: a call goes to the usable engine with the fewest outstanding prompt tokens (ties:
  the fewest calls in flight, then the engine chosen longest ago). Each shim worker keeps its own
  counts, so under light load every worker sees all engines idle at once; without the last tie
  rule each would send nearly everything to engine 0 and its first fallback, leaving the others
  idle (engines sharing one GPU showed it: docs/deployment.md "Filling one GPU").
  Tokens, not calls, because one call may be 3 prompts or 512 and an
  engine's time is its prompt tokens (prefill only); the dispatcher already counts them to keep
  its per-engine budget (server/scoring/dispatch.py), so the choice costs nothing extra.
- Usable: up (its last call or /health succeeded) and, when some engine has passed its readiness
  canary, one that passed its own. A fresh or restarted engine takes traffic once it has proved it
  scores for real, while the others carry the load; with no verified engine the up ones are used,
  and with none up, any: the call then fails fast and the client gets 503 + Retry-After. With one
  engine this is the engine whatever its state, exactly the single-engine behaviour.
- Failover: a call that fails with EngineUnavailable (connection refused, a disconnect, a 5xx or
  a 503) is sent once more to another usable engine; scoring is idempotent, so clients of a pod
  whose engine died see no error. The failed engine's client has already marked itself down
  (connection errors, 5xx; server/scoring/engine.py) and is skipped until the health watcher
  sees its /health answer 200 and its canary pass again (server/app.py). Timeouts are not moved:
  the engine may still be working on the call, a second engine would do it twice under load.
- Weight: a data-parallel vLLM is `engines` replicas behind one URL, so its token budget and
  call slots are that many times one engine's (Settings.engine_weight).

Per-engine metrics carry the label `engine` (the index, "0", "1", ...): up, verified, outstanding
tokens, calls in flight, calls and failovers; /metrics/engine merges vLLM's own metrics of every
engine with the same label.
"""

from __future__ import annotations

import asyncio
import logging

from server.scoring.errors import EngineUnavailable

log = logging.getLogger("server.engines")


class Engine:
    """One engine: its client and what is in flight to it."""

    __slots__ = ("client", "name", "weight", "outstanding", "calls", "verified", "warned_at",
                 "chosen", "_outstanding_gauge", "_calls_gauge", "_calls_counter", "_failovers")

    def __init__(self, client, name: str, weight: int, metrics) -> None:
        self.client = client
        self.name = name
        self.weight = weight
        self.outstanding = 0      # prompt tokens sent and not answered
        self.calls = 0            # calls in flight
        self.verified = False     # its readiness canary passed since it last came up
        self.chosen = 0           # when it was last chosen (EngineSet's choice counter)
        self.warned_at = float("-inf")
        self._outstanding_gauge = metrics.engine_instance_outstanding.labels(name)
        self._calls_gauge = metrics.engine_instance_inflight.labels(name)
        self._calls_counter = metrics.engine_instance_calls.labels(name)
        self._failovers = metrics.engine_failovers.labels(name)

    @property
    def up(self) -> bool:
        return self.client.healthy

    def acquire(self, tokens: int) -> None:
        self.calls += 1
        self.outstanding += tokens
        self._calls_counter.inc()
        self._publish()

    def release(self, tokens: int) -> None:
        self.calls -= 1
        self.outstanding -= tokens
        self._publish()

    def _publish(self) -> None:
        self._outstanding_gauge.set(self.outstanding)
        self._calls_gauge.set(self.calls)

    def state(self) -> dict:
        return {"engine": self.name, "up": self.up, "verified": self.verified,
                "outstanding_tokens": self.outstanding, "inflight_calls": self.calls}


class EngineSet:
    """The engines behind this shim, with the call interface of one EngineClient."""

    def __init__(self, clients: list, metrics, weight: int = 1) -> None:
        if not clients:
            raise ValueError("an engine set needs at least one engine")
        self.members = [Engine(c, str(i), weight, metrics) for i, c in enumerate(clients)]
        self.single = len(self.members) == 1
        self.metrics = metrics
        self._choices = 0

    # --- what callers read ---------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.members[0].client.model_name

    @property
    def healthy(self) -> bool:
        """Some engine is up: the pod can score."""
        return any(e.up for e in self.members)

    @property
    def verified(self) -> bool:
        """Some engine is up and passed its canary: the pod may take traffic."""
        return any(e.up and e.verified for e in self.members)

    # --- choosing an engine -------------------------------------------------------------------
    def choose(self, room=None, exclude: Engine | None = None) -> Engine | None:
        """The engine for the next call: among the usable ones (module docstring) for which
        `room(engine)` holds, the one with the fewest outstanding tokens, ties the fewest calls.
        None when none has room. `exclude` (a failover): never that one, and only an engine
        that is up."""
        if self.single and exclude is None:  # the common case costs one call of `room`
            engine = self.members[0]
            return engine if room is None or room(engine) else None
        best = None
        for engine in self._usable(exclude):
            if room is not None and not room(engine):
                continue
            if best is None or ((engine.outstanding, engine.calls, engine.chosen)
                                < (best.outstanding, best.calls, best.chosen)):
                best = engine
        if best is not None:
            self._choices += 1
            best.chosen = self._choices
        return best

    def _usable(self, exclude: Engine | None) -> list[Engine]:
        members = [e for e in self.members if e is not exclude]
        up = [e for e in members if e.up]
        verified = [e for e in up if e.verified]
        if verified:
            return verified
        if up or exclude is not None:
            return up
        return members  # nothing is up: fail fast on one of them (503), do not queue forever

    # --- calls ----------------------------------------------------------------------------------
    async def call(self, fn, tokens: int = 0, engine: Engine | None = None, pinned: bool = False):
        """`await fn(client)` on `engine` (already acquired by the caller, who gives it up to
        this call) or on the least-loaded one; on EngineUnavailable once more on another engine,
        unless `pinned` (a canary proves one engine). Always releases what it used."""
        if engine is None:
            chosen = self.choose()
            assert chosen is not None  # without room or exclude, choose() always names one
            engine = chosen
            engine.acquire(tokens)
        try:
            try:
                return await fn(engine.client)
            except EngineUnavailable as exc:
                if pinned or self.single:
                    raise
                other = self.choose(exclude=engine)
                if other is None:
                    raise
                log.warning("engine call failed; sent to another engine",
                            extra={"engine": engine.name, "to": other.name, "reason": str(exc)})
                engine._failovers.inc()
                engine.release(tokens)
                engine = other
                engine.acquire(tokens)
                return await fn(engine.client)
        finally:
            engine.release(tokens)

    async def classify(self, prompts: list[list[int]], raw: bool, on: Engine | None = None) -> list[float]:
        tokens = sum(len(p) for p in prompts)
        if on is not None:
            on.acquire(tokens)
        return await self.call(lambda c: c.classify(prompts, raw), tokens, on, pinned=on is not None)

    async def rerank(self, query: str | dict, documents: list[str] | list[str | dict], instruction: str,
                     raw: bool, on: Engine | None = None, tokens: int | None = None) -> list[float]:
        """vLLM's /rerank; a query or document may be vLLM's multimodal {"content": [parts]}
        (Qwen3-VL-Reranker), whose prompt tokens the caller counted (`tokens`)."""
        if tokens is None:  # vLLM tokenises text itself: estimate ~4 characters a token
            texts = [d for d in documents if isinstance(d, str)]
            query_chars = len(query) if isinstance(query, str) else 0
            tokens = (sum(map(len, texts)) + len(documents) * (query_chars + len(instruction))) // 4
        if on is not None:
            on.acquire(tokens)
        return await self.call(lambda c: c.rerank(query, documents, instruction, raw), tokens, on,
                               pinned=on is not None)

    async def forward(self, method: str, path: str, content: bytes | None = None) -> tuple[int, bytes]:
        return await self.call(lambda c: c.forward(method, path, content))

    # --- health and metrics -----------------------------------------------------------------
    async def check_health(self) -> bool:
        await asyncio.gather(*(e.client.check_health() for e in self.members))
        return self.healthy

    async def metrics_text(self) -> str:
        """vLLM's metrics: one engine's as they are; several engines' merged into one
        exposition, each sample labelled with its engine's index (replacing vLLM's own `engine`
        label, which is the data-parallel rank and 0 in a single-engine vLLM)."""
        if self.single:
            return await self.members[0].client.metrics_text()
        texts = await asyncio.gather(*(e.client.metrics_text() for e in self.members),
                                     return_exceptions=True)
        found = {e.name: t for e, t in zip(self.members, texts) if isinstance(t, str)}
        if not found:
            raise EngineUnavailable("engine metrics unreachable")
        return merge_metrics(found)

    async def aclose(self) -> None:
        await asyncio.gather(*(e.client.aclose() for e in self.members))


def merge_metrics(texts: dict[str, str]) -> str:
    """Prometheus text expositions of several engines as one, each sample labelled `engine`.
    (Concatenating them would repeat every # TYPE line, which Prometheus refuses.)"""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict = {}
    for name, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, family)
            samples = [Sample(s.name, {**s.labels, "engine": _engine_label(name, s.labels)},
                              s.value, s.timestamp, s.exemplar) for s in family.samples]
            if merged is family:
                family.samples = samples
            else:
                merged.samples.extend(samples)

    class _Merged:
        def collect(self):
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry).decode()


def _engine_label(name: str, labels: dict) -> str:
    theirs = labels.get("engine")
    return name if theirs in (None, "", "0") else f"{name}/{theirs}"
