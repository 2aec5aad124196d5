"""Prefix-first priming: would scoring a request's first pair before the rest save work?

    python -m benchmarks.priming --shim http://127.0.0.1:8000 --vllm http://127.0.0.1:8001 \
        --model NAME [--requests 6] [--docs 20] [--doc-words 300] [--out FILE]

Every pair of one request shares the system prompt + instruction + query + "<Document>: " prefix.
Sent in one /classify call, the pairs are scheduled in the same engine step, and vLLM's prefix
cache only serves blocks computed in an earlier step: each pair computes the query's blocks again
(the system prompt + instruction blocks are shared by every request, so they are cached after the
first request ever). Priming sends the first pair alone, then the rest, which then find the
query's full blocks cached.

This measures it through the shim against the real engine, each request with a fresh query (a
repeated query would be cached anyway), sequentially (c=1):
  plain    one request with all documents;
  primed   the same documents as two requests: the first document alone, then the others
           (what the shim would do inside one request; the engine sees the same calls).
From vLLM's own counters (`vllm:prompt_tokens_total`, `vllm:prompt_tokens_cached_total` or the
prefix-cache hits) it reports prompt tokens computed per request, and the wall time per request.
The token counts do not depend on the hardware (same tokenizer, same 16-token blocks); the time
on a CPU build only says which way the round trip goes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import httpx

from benchmarks.loadgen import make_query, make_text, metric_samples, metric_sum

COUNTERS = ("vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total",
            "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def counters(vllm: str) -> dict[str, float]:
    samples = metric_samples(vllm)
    return {name: metric_sum(samples, name) for name in COUNTERS}


def run(mode: str, shim: str, vllm: str, model: str, requests: int, docs: int, words: int,
        seed: int) -> dict:
    rng = random.Random(seed)
    with httpx.Client(base_url=shim, timeout=600) as client:  # one pooled keep-alive client
        before, t0 = counters(vllm), time.perf_counter()
        for _ in range(requests):
            query = make_query(rng) + f" ({rng.randrange(10**9)})"  # fresh: nothing of it cached
            documents = [make_text(rng, rng.randint(words // 2, words)) for _ in range(docs)]
            parts = [documents] if mode == "plain" else [documents[:1], documents[1:]]
            for part in parts:
                r = client.post("/v1/rerank", json={"model": model, "query": query, "documents": part})
                r.raise_for_status()
        seconds, after = time.perf_counter() - t0, counters(vllm)
    delta = {k: after[k] - before[k] for k in COUNTERS}
    cached = delta["vllm:prompt_tokens_cached_total"] or delta["vllm:prefix_cache_hits_total"]
    prompt = delta["vllm:prompt_tokens_total"] or delta["vllm:prefix_cache_queries_total"]
    return {"kind": "priming", "mode": mode, "requests": requests, "docs": docs,
            "computed_share": round((prompt - cached) / prompt, 4) if prompt else None,
            "prompt_tokens_per_request": round(prompt / requests, 1),
            "cached_tokens_per_request": round(cached / requests, 1),
            "computed_tokens_per_request": round((prompt - cached) / requests, 1),
            "seconds_per_request": round(seconds / requests, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shim", required=True)
    p.add_argument("--vllm", required=True, help="vLLM itself, for its /metrics counters")
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--doc-words", type=int, default=300)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    lines = []
    # plain, primed, plain again: the repeat shows what run-to-run time noise is
    for i, mode in enumerate(("plain", "primed", "plain")):
        line = run(mode, args.shim, args.vllm, args.model, args.requests, args.docs, args.doc_words,
                   seed=100 + i)
        lines.append(line)
        print(json.dumps(line), flush=True)
    plain, primed = lines[0], lines[1]
    # each run has its own documents (a repeat would be served from the cache): compare shares
    saved = 1 - primed["computed_share"] / plain["computed_share"]
    summary = {"kind": "priming_summary", "computed_tokens_saved": round(saved, 4),
               "seconds_primed_vs_plain": round(primed["seconds_per_request"]
                                                / plain["seconds_per_request"], 3),
               "seconds_plain_repeat_vs_plain": round(lines[2]["seconds_per_request"]
                                                      / plain["seconds_per_request"], 3)}
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            for line in (*lines, summary):
                fh.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
