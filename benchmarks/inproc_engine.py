"""What one engine serves with no HTTP hop and no vLLM API server in the way: vLLM's AsyncLLM in
this process, fed the shim's own prompt token ids, under the closed loops of `loadgen`'s small and
rag workloads. The figure is an upper bound for serving the engine in-process from the shim (the
shim's own parsing and response work are not in it); the gap to the shim on the same engine says
how much the hop through vLLM's API server costs.

    python -m benchmarks.inproc_engine --model DIR --vllm-argv '["--model", "DIR", ...]' \\
        --workloads small,rag

`--vllm-argv` is vLLM's API-server argument list (what the launcher passes to
`vllm.entrypoints.openai.api_server`), so the engine is configured exactly as the launcher's;
benchmarks/gpu/phases/fill.py (step `inproc`) copies it, and the environment, from the running
launcher's engine before stopping it. One JSON line per run on stdout, loadgen's fields plus the
GPU busy %, power and CPU % of this process and its engine core over the load alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from benchmarks import loadgen
from benchmarks.gpu.utilisation import Utilisation
from server.scoring.prompt import PromptEncoder
from server.scoring.tokenizer import load_tokenizer

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def keep_launcher_adjustments() -> None:
    """The launcher runs vLLM through launcher/vllm_entry.py when AOT compile is on; do the same."""
    from launcher.vllm_entry import keep_aot_compile

    keep_aot_compile()


def build_engine(argv: list[str]):
    from vllm.engine.arg_utils import AsyncEngineArgs
    try:
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    except ImportError:  # later vLLM releases moved it
        from vllm.entrypoints.launchers.cli_args import make_arg_parser  # type: ignore[no-redef]
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    return AsyncLLM.from_engine_args(engine_args, usage_context=UsageContext.OPENAI_API_SERVER)


class Prompts:
    """Request i of a workload as prompt token ids, built as the shim builds them."""

    def __init__(self, encoder: PromptEncoder, workload: loadgen.Workload, corpus: loadgen.Corpus,
                 seed: int) -> None:
        self.encoder, self.w, self.corpus, self.seed = encoder, workload, corpus, seed

    def __call__(self, i: int) -> list[list[int]]:
        query, picks = loadgen.draw(self.w, self.corpus, self.seed, i)
        head = self.encoder.head(query, INSTRUCTION)
        docs = self.encoder.documents([self.corpus.docs[p] for p in picks])
        return [self.encoder.assemble(head, d.ids) for d in docs]


async def score(engine, prompts: list[list[int]], tag: str) -> list[float]:
    from vllm import PoolingParams

    async def one(j: int, ids: list[int]) -> float:
        last = None
        async for out in engine.encode({"prompt_token_ids": ids},
                                       PoolingParams(task="classify", use_activation=True),
                                       request_id=f"{tag}-{j}"):
            last = out
        assert last is not None
        return float(last.outputs.data.reshape(-1)[-1])

    return await asyncio.gather(*(one(j, ids) for j, ids in enumerate(prompts)))


async def closed_loop(engine, make: Prompts, concurrency: int, requests: int, warmup: int) -> dict:
    latencies: list[float] = []
    pairs = tokens = errors = 0
    counter = iter(range(requests + warmup))
    measuring_from: list[float] = []

    async def worker() -> None:
        nonlocal pairs, tokens, errors
        for i in counter:
            if i == warmup:
                measuring_from.append(time.perf_counter())
            prompts = make(i)
            t = time.perf_counter()
            try:
                await score(engine, prompts, f"r{i}")
            except Exception:  # noqa: BLE001 - counted: an error is a figure of the run
                errors += 1
                continue
            if i >= warmup:
                latencies.append(time.perf_counter() - t)
                pairs += len(prompts)
                tokens += sum(map(len, prompts))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - (measuring_from[0] if measuring_from else time.perf_counter())
    lat = sorted(latencies)

    def pct(q: float) -> float | None:  # the same rank rule as loadgen's lines beside it
        return round(1000 * loadgen._percentile(lat, q), 2) if lat else None

    return {"requests": len(lat), "errors": errors, "req_s": round(len(lat) / wall, 1),
            "pairs_s": round(pairs / wall, 1), "tokens_s": round(tokens / wall, 1),
            "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "wall_s": round(wall, 1)}


async def main_async(args) -> int:
    keep_launcher_adjustments()
    tokenizer = load_tokenizer(args.model)
    encoder = PromptEncoder(tokenizer)
    counter = loadgen.TokenCounter(args.model)
    t = time.monotonic()
    engine = build_engine(json.loads(args.vllm_argv))
    print(json.dumps({"kind": "inproc_ready", "seconds": round(time.monotonic() - t, 1)}), flush=True)
    try:
        for name in args.workloads.split(","):
            w = loadgen.WORKLOADS[name]
            c = args.concurrency.get(name, w.concurrency[-1])
            n = args.requests.get(name, w.requests)
            seed = 4242 + len(name)
            make = Prompts(encoder, w, loadgen.build_corpus(w, counter, seed), seed)
            await closed_loop(engine, make, c, 0, min(n // 10, 100))  # warm the shapes first
            with Utilisation([os.getpid()]) as util:
                line = await closed_loop(engine, make, c, n, 0)
            print(json.dumps({"kind": "result", "target": "inproc", "workload": name,
                              "concurrency": c, "docs_per_request": w.docs, **line,
                              **util.fields()}), flush=True)
    finally:
        engine.shutdown()
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model directory (its tokenizer.json)")
    p.add_argument("--vllm-argv", required=True, help="vLLM API-server arguments, a JSON list")
    p.add_argument("--workloads", default="small,rag")
    p.add_argument("--concurrency", default="small=50,rag=32", help="per workload, name=c,...")
    p.add_argument("--requests", default="small=3000,rag=400", help="per workload, name=n,...")
    args = p.parse_args(argv)
    for key in ("concurrency", "requests"):
        setattr(args, key, {k: int(v) for k, v in (kv.split("=") for kv in getattr(args, key).split(",") if kv)})
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
