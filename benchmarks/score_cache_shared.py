"""Would a shared Redis be worth it as the score cache across replicas? Two numbers decide it:

1. latency: what a Redis MGET/SET of one request's keys costs from the shim's event loop (real
   redis-server on loopback, redis-py asyncio, 50 concurrent requests), next to the in-process
   TTLCache the shim uses today;
2. hit rate: local caches in R replicas (round-robin) against one shared cache, for a repeated-
   query workload (Zipf over distinct requests; simulated, not a production trace).

    .venv/bin/python -m benchmarks.score_cache_shared [--replicas 4] [--requests 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from cachetools import TTLCache

from tests.redisd import RedisServer


async def redis_latency(uri: str, keys_per_request: int, requests: int, concurrency: int) -> list[float]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(uri)
    await client.mset({f"score:{i}": b"0.123456789,1.23456789" for i in range(10_000)})
    took: list[float] = []

    async def one(n: int) -> None:
        keys = [f"score:{(n * keys_per_request + j) % 20_000}" for j in range(keys_per_request)]
        started = time.perf_counter()
        values = await client.mget(keys)
        misses = {k: b"0.5,0.0" for k, v in zip(keys, values) if v is None}
        if misses:  # what a miss adds: store the fresh scores with a TTL
            async with client.pipeline(transaction=False) as pipe:
                for k, v in misses.items():
                    pipe.set(k, v, ex=3600)
                await pipe.execute()
        took.append(time.perf_counter() - started)

    sem = asyncio.Semaphore(concurrency)

    async def bounded(n: int) -> None:
        async with sem:
            await one(n)

    await asyncio.gather(*(bounded(n) for n in range(requests)))
    await client.aclose()
    return took


def local_latency(keys_per_request: int, requests: int) -> list[float]:
    cache: TTLCache = TTLCache(100_000, 3600)
    for i in range(10_000):
        cache[f"score:{i}"] = (0.123, 1.23)
    took = []
    for n in range(requests):
        keys = [f"score:{(n * keys_per_request + j) % 20_000}" for j in range(keys_per_request)]
        started = time.perf_counter()
        hits = {k: cache[k] for k in keys if k in cache}
        for k in keys:
            if k not in hits:
                cache[k] = (0.5, 0.0)
        took.append(time.perf_counter() - started)
    return took


def hit_rates(replicas: int, requests: int, distinct: int, skew: float, entries: int) -> tuple[float, float]:
    rng = random.Random(7)
    weights = [1 / (rank + 1) ** skew for rank in range(distinct)]
    stream = rng.choices(range(distinct), weights, k=requests)
    local = [TTLCache(entries, 10**9) for _ in range(replicas)]
    shared: TTLCache = TTLCache(entries, 10**9)
    local_hits = shared_hits = 0
    for n, item in enumerate(stream):
        cache = local[n % replicas]
        local_hits += item in cache
        cache[item] = 1
        shared_hits += item in shared
        shared[item] = 1
    return local_hits / requests, shared_hits / requests


def pct(values: list[float], q: float) -> float:
    return sorted(values)[int(q * (len(values) - 1))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200_000)
    args = ap.parse_args()
    server = RedisServer().start()
    try:
        for k in (3, 100):
            remote = asyncio.run(redis_latency(server.uri, k, 5000, 50))
            local = local_latency(k, 5000)
            print(f"{k:>3} keys/request  redis MGET(+SET on miss): p50 {pct(remote, .5):.2f} ms "
                  f"p99 {pct(remote, .99):.2f} ms | in-process TTLCache: p50 {pct(local, .5):.4f} ms "
                  f"p99 {pct(local, .99):.4f} ms")
    finally:
        server.kill()
    for distinct, skew in ((10_000, 1.0), (100_000, 1.0), (100_000, 0.6)):
        local, shared = hit_rates(args.replicas, args.requests, distinct, skew, 100_000)
        print(f"{args.requests} requests over {distinct} distinct (Zipf {skew}), {args.replicas} replicas: "
              f"hit rate local {local:.1%}, shared {shared:.1%}")


if __name__ == "__main__":
    main()
