"""Closed-loop load generator: the same workload against the shim and raw vLLM, side by side.

    python -m benchmarks.loadgen --shim http://127.0.0.1:8000 --vllm http://127.0.0.1:8001 \\
        --model qwen3-reranker-0.6b --workloads seed,rag --requests 500 [--smoke] [--out FILE]

For every workload, every concurrency level and every target, C client coroutines (spread over
`--procs` processes) each send a request, wait for the answer, and send the next, until N
requests have been answered (or `--max-seconds` has passed). A warm-up of W requests per target
(which also opens the C keep-alive connections) runs first and is not counted. One JSON line per
run is printed (and appended to `--out`): req/s, pairs/s, tokens/s, latency percentiles, errors
by kind, and machine/date metadata.

Targets:
  shim       POST {shim}/v1/rerank  {"model","query","documents"}   (Cohere/Jina dialect)
  shim-rank  POST {shim}/v1/rank    {"query","docs"}                (legacy dialect)
  vllm       POST {vllm}/rerank     {"model","query","documents"}   (raw vLLM, same engine)

Queries and documents are drawn deterministically from seeded RNGs: every request has its own
query (so vLLM's prefix cache sees realistic traffic: the system prompt, instruction and query
are shared by the documents of one request, not across requests), and each (workload, target,
concurrency) run uses its own seed, so a second target never hits prefixes cached by the first.
`seed` and `seed-repeat` send one identical request on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import math
import multiprocessing as mp
import os
import platform
import random
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # we fork after tokenising

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj)

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the project depends on orjson
    def _dumps(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    _loads = json.loads

SEED_QUERY = "如何申请差旅报销"
SEED_DOCS = ["员工手册第3章", "财务系统操作指南", "OA审批流程说明"]

# Common English words: almost every one is a single Qwen BPE token with its leading space, so a
# document of ~N tokens is ~N words (calibrated with the tokenizer when one is given).
WORDS = """the of and to in is for that on with as by at from this are be or it an was which
have not has but their they can all more one will also other its new were been time about
would these there may first after some system data two use used use such only when into any
most over people year years work state states city company business service services
information report policy process support management market research development government
public school students university health care medical patient patients water energy power
model models network software computer security access user users application applications
design quality product products customer customers price cost costs value financial budget
employee employees travel expense expenses approval request requests manual chapter guide
office department team project projects meeting plan plans training document documents
record records review reviews account accounts payment payments invoice invoices tax rate
rates level levels number numbers result results study studies group groups area areas
country world national international local community family history life water food
local river mountain road house building room street village town region north south east
west summer winter spring autumn light dark small large long short high low early late
good better best important different possible available current general special simple
open close start end change changes order orders form forms field fields test tests method
methods standard standards rule rules law laws court case cases example examples question
questions answer answers problem problems solution solutions approach approaches result
retrieval search query ranking relevance passage passages score scores language languages
text texts word words sentence sentences reader readers writer writers book books paper
papers article articles journal journals science scientific technology technical engineering
physics chemistry biology mathematics economics finance history culture art music film
""".split()

# Without a tokenizer: tokens per word of the text make_text() produces (measured with Qwen3's).
_FALLBACK_TOKENS_PER_WORD = 1.115
# Tokens the Qwen3-Reranker template adds around a document (system prompt, default instruction,
# markers) besides the query's: measured with Qwen3's tokenizer.
_FALLBACK_TEMPLATE_TOKENS = 72


@dataclass(frozen=True)
class Workload:
    name: str
    docs: int                    # documents per request
    doc_tokens: int              # approximate tokens per document (0: the fixed seed documents)
    concurrency: tuple[int, ...]
    requests: int                # measured requests per (target, concurrency) run
    fixed: bool = False          # one identical request, over and over
    min_model_len: int = 0       # the engine's max-model-len this workload needs
    procs: int = 0               # client processes; 0 = auto


WORKLOADS = {
    "seed": Workload("seed", 3, 0, (50,), 3000, fixed=True),
    "seed-repeat": Workload("seed-repeat", 3, 0, (64,), 10000, fixed=True),
    "short": Workload("short", 10, 40, (64,), 2000),
    "rag": Workload("rag", 20, 390, (8, 32), 400),
    "rag100": Workload("rag100", 100, 390, (8,), 100),
    "long": Workload("long", 10, 3600, (8,), 100, min_model_len=4096),
    # the interactive half of `mixed`: 3 short documents, a new query each time
    "small": Workload("small", 3, 12, (10,), 2000),
}
# mixed: `small` at low concurrency while `long` saturates the engine, for MIXED_SECONDS; then
# `long` alone for the same time: small-request latency under load, and what it costs bulk.
MIXED = ("small", 10, "long", 8)
MIXED_SECONDS = 20.0

TARGETS = {
    # name: (which base URL, path, body shape)
    "shim": ("shim", "/v1/rerank", "documents"),
    "shim-rank": ("shim", "/v1/rank", "docs"),
    "vllm": ("vllm", "/rerank", "documents"),
}


# --- text ---------------------------------------------------------------------------------------
class TokenCounter:
    """Token counts with the model's tokenizer when available, else a calibrated estimate."""

    def __init__(self, path: str | None) -> None:
        self.tok = None
        if path:
            p = Path(path)
            p = p / "tokenizer.json" if p.is_dir() else p
            if p.exists():
                from tokenizers import Tokenizer

                self.tok = Tokenizer.from_file(str(p))
        self.tokens_per_word = _FALLBACK_TOKENS_PER_WORD
        self.template_tokens = _FALLBACK_TEMPLATE_TOKENS
        if self.tok is not None:
            sample = make_text(random.Random(0), 4000)
            self.tokens_per_word = self.count([sample])[0] / 4000
            from server.scoring.prompt import render
            from server.settings import DEFAULT_INSTRUCTION

            from_prompt = render("", "", DEFAULT_INSTRUCTION)  # the template with empty slots
            self.template_tokens = len(self.tok.encode(from_prompt, add_special_tokens=False).ids)

    @property
    def exact(self) -> bool:
        return self.tok is not None

    def count(self, texts: list[str]) -> list[int]:
        if self.tok is None:
            return [max(1, round(len(t.split()) * self.tokens_per_word)) for t in texts]
        return [len(e.ids) for e in self.tok.encode_batch([" " + t for t in texts],
                                                         add_special_tokens=False)]


def metric_samples(base_url: str, timeout: float = 10) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample on base_url/metrics (the shim's or vLLM's), parsed
    by prometheus_client; httpx.HTTPError when the page does not answer."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=timeout).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def metric_sum(samples: list[tuple[str, dict, float]], name: str) -> float:
    """One sample name's value summed over its label sets."""
    return sum(value for sample, _, value in samples if sample == name)


def make_text(rng: random.Random, words: int) -> str:
    out, sentence = [], 0
    for i in range(words):
        w = rng.choice(WORDS)
        if sentence == 0:
            w = w.capitalize()
        sentence += 1
        if sentence >= 8 + (i * 7) % 9 or i == words - 1:
            w += "."
            sentence = 0
        out.append(w)
    return " ".join(out)


def make_query(rng: random.Random) -> str:
    return make_text(rng, rng.randint(5, 12)).rstrip(".") + "?"


@dataclass
class Corpus:
    """The documents one workload draws from, with their token counts."""

    docs: list[str]
    doc_tokens: list[int]
    encoded: list[bytes]         # each document as a JSON string literal


def build_corpus(w: Workload, counter: TokenCounter, seed: int) -> Corpus:
    if w.fixed:
        docs = list(SEED_DOCS)
    else:
        rng = random.Random(zlib.crc32(f"corpus/{w.name}/{seed}".encode()))
        size = max(w.docs * 10, 200) if w.doc_tokens < 1000 else max(w.docs * 6, 40)
        words = max(1, round(w.doc_tokens / counter.tokens_per_word))
        docs = [make_text(rng, words) for _ in range(size)]
        if counter.exact:  # trim to the target where the estimate overshot
            counts = counter.count(docs)
            docs = [d if c <= w.doc_tokens * 1.03 else _trim(d, c, w.doc_tokens)
                    for d, c in zip(docs, counts)]
    return Corpus(docs, counter.count(docs), [_dumps(d) for d in docs])


def _trim(text: str, tokens: int, target: int) -> str:
    words = text.split()
    return " ".join(words[: max(1, int(len(words) * target / tokens))])


def draw(w: Workload, corpus: Corpus, seed: int, i: int) -> tuple[str, list[int]]:
    """Request i's query and the indices of its documents in `corpus` (seeded: a run's requests
    are the same whichever client sends them)."""
    rng = random.Random(seed * 1_000_003 + i)
    picks = rng.sample(range(len(corpus.docs)), min(w.docs, len(corpus.docs)))
    return make_query(rng), picks


class Requests:
    """Request i of one run, as (body bytes, documents, estimated prompt tokens)."""

    def __init__(self, w: Workload, corpus: Corpus, counter: TokenCounter, target: str,
                 model: str, seed: int, top_n: int | None) -> None:
        self.w, self.corpus, self.counter = w, corpus, counter
        self.shape = TARGETS[target][2]
        self.model = model
        self.seed = seed
        self.top_n = top_n
        self._fixed = self._build(SEED_QUERY, list(range(len(SEED_DOCS)))) if w.fixed else None

    def __call__(self, i: int) -> tuple[bytes, int, int]:
        if self._fixed is not None:
            return self._fixed
        return self._build(*draw(self.w, self.corpus, self.seed, i))

    def _build(self, query: str, picks: list[int]) -> tuple[bytes, int, int]:
        docs = b"[" + b",".join(self.corpus.encoded[p] for p in picks) + b"]"
        head = {"query": query}
        if self.shape == "documents":
            head = {"model": self.model, **head}
            if self.top_n:
                head["top_n"] = self.top_n
        body = _dumps(head)[:-1] + b',"' + self.shape.encode() + b'":' + docs + b"}"
        q_tokens = self.counter.count([query])[0]
        tokens = sum(self.corpus.doc_tokens[p] for p in picks) + len(picks) * (
            self.counter.template_tokens + q_tokens)
        return body, len(picks), tokens


# --- the closed loop --------------------------------------------------------------------------
@dataclass
class Record:
    start: float
    latency: float
    error: str | None
    tokens: int          # from the response's usage, else the estimate
    usage: bool          # tokens came from the response


def _check(data, expected: int) -> tuple[str | None, int | None]:
    if not isinstance(data, dict):
        return "bad_response", None
    results = data.get("results", data.get("data"))  # rerank dialects; vLLM /classify: data
    if not isinstance(results, list) or len(results) != expected:
        return "bad_response", None
    usage = data.get("usage") or {}
    tokens = usage.get("total_tokens") or usage.get("prompt_tokens")
    return None, tokens if isinstance(tokens, int) else None


def _error_kind(exc: BaseException) -> str:
    name = type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError) or "Timeout" in name:
        return "timeout"
    if "Connect" in name:
        return "connect"
    if "Disconnect" in name or "RemoteProtocol" in name or "Reset" in name:
        return "disconnect"
    return name


class _Client:
    """aiohttp when installed (faster), else httpx; one keep-alive connection per worker."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        try:
            import aiohttp
        except ImportError:
            aiohttp = None
        if aiohttp is not None:
            conn = aiohttp.TCPConnector(limit=concurrency + 8, ttl_dns_cache=3600,
                                        enable_cleanup_closed=True)
            self._aio = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(
                total=timeout), headers={"content-type": "application/json"},
                skip_auto_headers=("User-Agent",))
            self._httpx = None
            self.name = "aiohttp"
        else:
            import httpx

            self._aio = None
            self._httpx = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(
                max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8),
                headers={"content-type": "application/json"})
            self.name = "httpx"

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        if self._aio is not None:
            async with self._aio.post(url, data=body) as resp:
                return resp.status, await resp.read()
        resp = await self._httpx.post(url, content=body)
        return resp.status_code, resp.content

    async def close(self) -> None:
        if self._aio is not None:
            await self._aio.close()
        else:
            await self._httpx.aclose()


async def _loop(client: _Client, urls: list[str], make, indices, concurrency: int,
                deadline: float, records: list[Record] | None, errors: dict) -> None:
    it = iter(indices)

    async def worker(url: str) -> None:
        for i in it:  # one shared iterator: each index is sent once
            if time.perf_counter() > deadline:
                return
            body, ndocs, est = make(i)
            t0 = time.perf_counter()
            error, tokens = None, None
            try:
                status, content = await client.post(url, body)
                if status != 200:
                    error = f"http_{status}"
                    if len(errors.setdefault("samples", [])) < 3:
                        errors["samples"].append(f"{status}: {content[:200].decode(errors='replace')}")
                else:
                    error, tokens = _check(_loads(content), ndocs)
            except Exception as exc:  # noqa: BLE001 - every failure is an error kind
                error = _error_kind(exc)
                if len(errors.setdefault("samples", [])) < 3:
                    errors["samples"].append(f"{type(exc).__name__}: {exc}"[:200])
            latency = time.perf_counter() - t0
            if records is not None:
                records.append(Record(t0, latency, error, tokens if tokens is not None else est,
                                      tokens is not None))

    # several URLs (e.g. one per shim process): worker j always uses URL j mod k
    await asyncio.gather(*(worker(urls[j % len(urls)]) for j in range(concurrency)))


async def _drive(urls, make, concurrency, warm, measured, timeout, max_seconds, barrier):
    client = _Client(concurrency, timeout)
    errors: dict = {}
    try:
        await _loop(client, urls, make, warm, concurrency, math.inf, None, errors)
        if barrier is not None:
            barrier.wait()
        begin = time.perf_counter()
        records: list[Record] = []
        await _loop(client, urls, make, measured, concurrency, begin + max_seconds, records, errors)
        end = time.perf_counter()
    finally:
        await client.close()
    return begin, end, records, errors.get("samples", []), client.name


def _use_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass


def _child(args, barrier, queue) -> None:
    _use_uvloop()
    try:
        queue.put(("ok", asyncio.run(_drive(*args, barrier))))
    except BaseException as exc:  # noqa: BLE001 - report to the parent
        barrier.abort()
        queue.put(("error", repr(exc)))


def closed_loop(url: str | list[str], make, concurrency: int, requests: int, warmup: int,
                procs: int = 1, timeout: float = 120.0, max_seconds: float = 60.0) -> dict:
    """Run N measured requests (after W warm-up ones) at concurrency C; return the figures.

    `url` may be a list (several servers): the workers are spread over them evenly.

    `make(i)` gives request i as (body, documents, estimated tokens); measured requests are
    i = 0..N-1, warm-up ones i = N..N+W-1 (different content, same shape).
    """
    urls = [url] if isinstance(url, str) else list(url)
    procs = max(1, min(procs, concurrency))
    parts = []
    for k in range(procs):
        c_k = concurrency // procs + (1 if k < concurrency % procs else 0)
        parts.append((c_k, range(k, requests, procs), range(requests + k, requests + warmup, procs)))
    if procs == 1:
        _use_uvloop()
        c_k, measured, warm = parts[0]
        results = [asyncio.run(_drive(urls, make, c_k, warm, measured, timeout, max_seconds, None))]
    else:
        ctx = mp.get_context("fork")
        barrier, queue = ctx.Barrier(procs), ctx.Queue()
        # process k gets the URLs of its own workers' global indices k, k+P, ... (mod k URLs)
        children = [ctx.Process(target=_child, args=(([urls[(k + j * procs) % len(urls)]
                                                        for j in range(max(1, c_k))],
                                                       make, c_k, warm, measured, timeout,
                                                      max_seconds), barrier, queue), daemon=True)
                    for k, (c_k, measured, warm) in enumerate(parts)]
        for child in children:
            child.start()
        results = []
        for _ in children:
            status, value = queue.get()
            if status != "ok":
                raise RuntimeError(f"client process failed: {value}")
            results.append(value)
        for child in children:
            child.join()
    return summarise(results, concurrency, procs)


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def summarise(results, concurrency: int, procs: int) -> dict:
    begin = min(r[0] for r in results)
    records = [rec for r in results for rec in r[2]]
    end = max([r[1] for r in results] + [rec.start + rec.latency for rec in records])
    wall = max(end - begin, 1e-9)
    ok = [rec for rec in records if rec.error is None]
    kinds: dict[str, int] = {}
    for rec in records:
        if rec.error is not None:
            kinds[rec.error] = kinds.get(rec.error, 0) + 1
    lat = sorted(rec.latency * 1000 for rec in ok)
    samples = [s for r in results for s in r[3]][:3]
    out = {
        "concurrency": concurrency, "procs": procs, "client": results[0][4],
        "requests": len(records), "ok": len(ok), "errors": len(records) - len(ok),
        "error_kinds": kinds, "wall_s": round(wall, 3),
        "req_s": round(len(ok) / wall, 1),
        "tokens_s": round(sum(rec.tokens for rec in ok) / wall, 1),
        "tokens_source": "usage" if ok and all(rec.usage for rec in ok) else "estimate",
        "p50_ms": round(_percentile(lat, 0.50), 2), "p95_ms": round(_percentile(lat, 0.95), 2),
        "p99_ms": round(_percentile(lat, 0.99), 2),
        "mean_ms": round(sum(lat) / len(lat), 2) if lat else float("nan"),
        "max_ms": round(lat[-1], 2) if lat else float("nan"),
    }
    if samples:
        out["error_samples"] = samples
    return out


# --- metadata -----------------------------------------------------------------------------------
def machine_info() -> dict:
    info = {"host": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    gpu = os.environ.get("BENCH_GPU")
    if gpu is None:
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            gpu = ""
    info["gpu"] = gpu.replace("\n", " + ") or "none"
    if os.environ.get("BENCH_MACHINE"):
        info["machine"] = os.environ["BENCH_MACHINE"]
    return info


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --- CLI ----------------------------------------------------------------------------------------
def smoke(w: Workload) -> Workload:
    return replace(w, docs=min(w.docs, 5), doc_tokens=min(w.doc_tokens, 48),
                   concurrency=tuple(sorted({min(c, 4) for c in w.concurrency})), requests=20,
                   min_model_len=0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shim", default="", help="base URL of the shim (e.g. http://127.0.0.1:8000); "
                   "a comma list spreads the load over several shim processes")
    p.add_argument("--vllm", default="", help="base URL of raw vLLM (e.g. http://127.0.0.1:8001)")
    p.add_argument("--model", default="", help="served model name (the `model` field for vLLM)")
    p.add_argument("--workloads", default="seed,rag", help=f"comma list of {','.join(WORKLOADS)}")
    p.add_argument("--targets", default="shim,vllm", help=f"comma list of {','.join(TARGETS)}")
    p.add_argument("--concurrency", default="", help="comma list overriding each workload's levels")
    p.add_argument("--requests", type=int, default=0, help="measured requests per run (0: workload's)")
    p.add_argument("--warmup", type=int, default=-1, help="warm-up requests per run (-1: 2 x C, >= 8)")
    p.add_argument("--procs", type=int, default=0, help="client processes (0: auto)")
    p.add_argument("--tokenizer", default="", help="tokenizer.json or model dir, for token counts")
    p.add_argument("--max-model-len", type=int, default=0,
                   help="the engine's max-model-len: workloads needing more are skipped")
    p.add_argument("--top-n", type=int, default=0, help="top_n for /v1/rerank (0: all)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-seconds", type=float, default=60.0, help="cap on one run's measured phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--label", default="", help="free text naming the configuration (levers)")
    p.add_argument("--meta", action="append", default=[], help="KEY=VALUE added to every line")
    p.add_argument("--smoke", action="store_true", help="CI mode: 20 requests, c<=4, small docs")
    p.add_argument("--out", default="", help="also append the JSON lines to this file")
    p.add_argument("--mixed-long-concurrency", type=int, default=0,
                   help=f"mixed: concurrency of the long requests (0: {MIXED[3]}; several GPUs: "
                   "scale it so every engine is loaded)")
    return p.parse_args(argv)


def auto_procs(w: Workload, concurrency: int) -> int:
    if w.procs:
        return w.procs
    cpus = os.cpu_count() or 1
    if w.doc_tokens * w.docs > 2000 or cpus < 8:  # heavy requests: one client process keeps up
        return 1
    return max(1, min(4, cpus // 4, concurrency // 8))


def main(argv=None) -> int:
    args = parse_args(argv)
    bases = {"shim": [u.rstrip("/") for u in args.shim.split(",") if u.strip()],
             "vllm": [u.rstrip("/") for u in args.vllm.split(",") if u.strip()]}
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            raise SystemExit(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
    targets = [t for t in targets if bases[TARGETS[t][0]]]
    if not targets:
        raise SystemExit("no target: give --shim and/or --vllm")
    if "vllm" in targets and not args.model:
        raise SystemExit("--model is needed for raw vLLM (its `model` field)")
    counter = TokenCounter(args.tokenizer or None)
    meta = dict(kv.split("=", 1) for kv in args.meta)
    common = {"date": now_utc(), "machine": machine_info(), "label": args.label, **meta}
    out = open(args.out, "a") if args.out else None

    def emit(line: dict) -> None:
        text = json.dumps(line, ensure_ascii=False)
        print(text, flush=True)
        if out:
            out.write(text + "\n")
            out.flush()

    failures = 0
    for name in [n.strip() for n in args.workloads.split(",") if n.strip()]:
        if name == "mixed":
            for target in targets:
                emit(mixed(args, counter, bases, target, common))
            continue
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
        w = smoke(WORKLOADS[name]) if args.smoke else WORKLOADS[name]
        if args.max_model_len and w.min_model_len > args.max_model_len:
            emit({"kind": "skipped", "workload": name, "reason":
                  f"needs max-model-len >= {w.min_model_len}", **common})
            continue
        levels = [int(c) for c in args.concurrency.split(",") if c] or list(w.concurrency)
        corpus = build_corpus(w, counter, args.seed)
        avg_doc_tokens = sum(corpus.doc_tokens) / len(corpus.doc_tokens)
        for c in levels:
            n = args.requests or w.requests
            warmup = args.warmup if args.warmup >= 0 else max(8, 2 * c)
            if args.smoke and args.warmup < 0:
                warmup = c
            by_target = {}
            for target in targets:
                base, path, _ = TARGETS[target]
                seed = zlib.crc32(f"{args.seed}/{name}/{target}/{c}".encode())
                make = Requests(w, corpus, counter, target, args.model, seed, args.top_n or None)
                procs = args.procs or auto_procs(w, c)
                urls = [u + path for u in bases[base]]
                stats = closed_loop(urls, make, c, n, warmup, procs, args.timeout, args.max_seconds)
                line = {"kind": "result", "target": target, "url": ",".join(urls),
                        "workload": name, "docs_per_request": w.docs,
                        "doc_tokens_avg": round(avg_doc_tokens, 1),
                        "token_counts": "tokenizer" if counter.exact else "estimate",
                        "warmup": warmup, **stats,
                        "pairs_s": round(stats["ok"] * w.docs / stats["wall_s"], 1), **common}
                # keep the headline figures first when read by eye
                order = ["kind", "target", "workload", "concurrency", "requests", "errors",
                         "error_kinds", "req_s", "pairs_s", "tokens_s", "p50_ms", "p95_ms", "p99_ms"]
                line = {k: line[k] for k in order} | {k: v for k, v in line.items() if k not in order}
                emit(line)
                by_target[target] = line
                failures += line["errors"]
            if "shim" in by_target and "vllm" in by_target:
                s, v = by_target["shim"], by_target["vllm"]
                emit({"kind": "compare", "workload": name, "concurrency": c,
                      "shim_vs_vllm_req_s": round(s["req_s"] / v["req_s"], 3) if v["req_s"] else None,
                      "shim_minus_vllm_p50_ms": round(s["p50_ms"] - v["p50_ms"], 2),
                      "shim_minus_vllm_p99_ms": round(s["p99_ms"] - v["p99_ms"], 2), **common})
    if out:
        out.close()
    return 1 if failures else 0


def mixed(args, counter: TokenCounter, bases: dict, target: str, common: dict) -> dict:
    """Small requests at low concurrency while long ones saturate the engine, then long alone."""
    import threading

    small_name, small_c, long_name, long_c = MIXED
    long_c = args.mixed_long_concurrency or long_c
    seconds = 4.0 if args.smoke else MIXED_SECONDS
    base, path, _ = TARGETS[target]
    urls = [u + path for u in bases[base]]

    def run(name: str, c: int, tag: str, out: dict) -> None:
        w = smoke(WORKLOADS[name]) if args.smoke else WORKLOADS[name]
        corpus = build_corpus(w, counter, args.seed)
        make = Requests(w, corpus, counter, target, args.model,
                        zlib.crc32(f"{args.seed}/mixed/{tag}/{target}".encode()), None)
        out[tag] = closed_loop(urls, make, c, 10**6, c, 1, args.timeout, seconds)
        out[tag]["pairs_s"] = round(out[tag]["ok"] * w.docs / out[tag]["wall_s"], 1)

    got: dict = {}
    threads = [threading.Thread(target=run, args=(small_name, small_c, "small", got)),
               threading.Thread(target=run, args=(long_name, long_c, "long", got))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run(long_name, long_c, "long_alone", got)
    small, long_, alone = got["small"], got["long"], got["long_alone"]
    return {"kind": "mixed", "target": target, "workload": "mixed", "url": ",".join(urls),
            "small_concurrency": small_c, "long_concurrency": long_c, "seconds": seconds,
            "small_p50_ms": small["p50_ms"], "small_p95_ms": small["p95_ms"],
            "small_p99_ms": small["p99_ms"], "small_req_s": small["req_s"],
            "long_pairs_s": long_["pairs_s"], "long_alone_pairs_s": alone["pairs_s"],
            "long_share_of_alone": round(long_["pairs_s"] / alone["pairs_s"], 3) if alone["pairs_s"] else None,
            "long_p95_ms": long_["p95_ms"],
            "errors": small["errors"] + long_["errors"] + alone["errors"],
            "error_kinds": {**small["error_kinds"], **long_["error_kinds"]}, **common}


if __name__ == "__main__":
    sys.exit(main())
