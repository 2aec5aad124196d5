"""Do the same (query, document) pairs get the same score however they are batched?

    python -m benchmarks.determinism --shim http://127.0.0.1:8000 --model NAME [--raw] [--out FILE]

One fixed set of pairs (one query, `--pairs` documents of mixed lengths, seeded) is scored
through the shim's /v1/rerank three ways:
  alone       one request per pair, one after another (the engine sees a batch of one);
  batch       one request with every pair (one engine call of --pairs documents);
  under_load  one request per pair again, `--concurrency` at a time, interleaved with as many
              unrelated requests (other queries, other lengths), so every pair lands in a
              different, crowded engine step.
Then `prefix_cache`: a fresh query's documents scored alone twice, the first time with nothing
of its prefix cached, the second time with the system prompt + instruction + query cached.

Scores are compared exactly (floats from JSON, bit for bit): `identical` counts equal pairs,
`max_abs_drift` the largest difference against `alone`. The shim's score cache must be off (the
default), or repeats would be answered from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

import httpx

from benchmarks.loadgen import make_query, make_text


def fixed_pairs(n: int = 64, seed: int = 12) -> tuple[str, list[str]]:
    """One query and n documents from 3 to ~300 words (so batches mix lengths)."""
    rng = random.Random(seed)
    query = make_query(rng)
    docs = [make_text(rng, rng.choice((3, 12, 40, 90, 180, 300))) for _ in range(n)]
    return query, list(dict.fromkeys(docs))  # the shim scores a repeated document once


def _scores(data: dict, n: int) -> list[float]:
    """relevance_score by index (with raw_scores it carries the logit)."""
    out = [0.0] * n
    for item in data["results"]:
        out[item["index"]] = item["relevance_score"]
    return out


def _body(model: str, query: str, docs: list[str], raw: bool) -> dict:
    body = {"model": model, "query": query, "documents": docs}
    if raw:
        body["raw_scores"] = True
    return body


def score_alone(client: httpx.Client, url: str, model: str, query: str, docs: list[str],
                raw: bool = False) -> list[float]:
    out = []
    for doc in docs:
        r = client.post(url + "/v1/rerank", json=_body(model, query, [doc], raw))
        r.raise_for_status()
        out.append(_scores(r.json(), 1)[0])
    return out


def score_batch(client: httpx.Client, url: str, model: str, query: str, docs: list[str],
                raw: bool = False) -> list[float]:
    r = client.post(url + "/v1/rerank", json=_body(model, query, docs, raw))
    r.raise_for_status()
    return _scores(r.json(), len(docs))


async def _under_load(url: str, model: str, query: str, docs: list[str], concurrency: int,
                      raw: bool, seed: int, noise_docs: int, noise_words: int) -> list[float]:
    rng = random.Random(seed)
    # unrelated traffic: other queries, 1..noise_docs documents of other lengths, one per probe pair
    noise = [(make_query(rng), [make_text(rng, rng.randint(5, noise_words))
                                for _ in range(rng.randint(1, noise_docs))])
             for _ in docs]
    jobs: list[tuple[int | None, str, list[str]]] = []
    for i, doc in enumerate(docs):
        jobs += [(i, query, [doc]), (None, *noise[i])]
    rng.shuffle(jobs)
    out: list[float | None] = [None] * len(docs)
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                index, q, ds = queue.get_nowait()
                r = await client.post(url + "/v1/rerank", json=_body(model, q, ds, raw))
                r.raise_for_status()
                if index is not None:
                    out[index] = _scores(r.json(), 1)[0]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [float(s) for s in out]


def score_under_load(url: str, model: str, query: str, docs: list[str], concurrency: int = 32,
                     raw: bool = False, seed: int = 99, noise_docs: int = 20,
                     noise_words: int = 250) -> list[float]:
    return asyncio.run(_under_load(url, model, query, docs, concurrency, raw, seed, noise_docs,
                                   noise_words))


def compare(ref: list[float], other: list[float]) -> dict:
    diffs = [abs(a - b) for a, b in zip(ref, other)]
    return {"pairs": len(diffs), "identical": sum(a == b for a, b in zip(ref, other)),
            "max_abs_drift": max(diffs), "mean_abs_drift": sum(diffs) / len(diffs)}


def probe(url: str, model: str, pairs: int = 64, concurrency: int = 32, raw: bool = False,
          seed: int = 12) -> dict:
    """Every comparison against `alone`, plus the prefix-cache check. Pure client side."""
    query, docs = fixed_pairs(pairs, seed)
    started = time.monotonic()
    with httpx.Client(timeout=120) as client:
        alone = score_alone(client, url, model, query, docs, raw)
        batch = score_batch(client, url, model, query, docs, raw)
        loaded = score_under_load(url, model, query, docs, concurrency, raw)
        again = score_alone(client, url, model, query, docs, raw)
        fresh_query, fresh_docs = fixed_pairs(8, seed + 1000)
        first = score_alone(client, url, model, fresh_query, fresh_docs, raw)
        second = score_alone(client, url, model, fresh_query, fresh_docs, raw)
    return {"kind": "determinism", "score": "raw logit" if raw else "relevance_score",
            "pairs": len(docs), "concurrency": concurrency,
            "batch_vs_alone": compare(alone, batch), "under_load_vs_alone": compare(alone, loaded),
            "alone_again_vs_alone": compare(alone, again),
            "prefix_cache": compare(first, second),
            "seconds": round(time.monotonic() - started, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shim", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--raw", action="store_true", help="compare raw logits, not P(yes)")
    p.add_argument("--label", default="")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    result = probe(args.shim.rstrip("/"), args.model, args.pairs, args.concurrency, args.raw)
    if args.label:
        result["label"] = args.label
    text = json.dumps(result)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
