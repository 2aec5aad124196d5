"""Throughput of `reranker batch` against a running service, and what it costs interactive traffic.

    python -m benchmarks.batch_throughput --service http://127.0.0.1:8000 \\
        --tokenizer models/qwen3-reranker-0.6b [--requests 1000] [--out FILE]

Three phases against the same service, each with fresh queries (no prefix-cache reuse):
  1. the service's own rag throughput: loadgen's closed loop, `rag` (20 documents of ~390 tokens)
     at c=32 on /v1/rerank, the reference figure;
  2. `small` requests (3 short documents) at c=10 alone: their p50/p99;
  3. `reranker batch --concurrency 32` over REQUESTS rag-shaped plain lines, while the same
     `small` stream runs beside it: the job's pairs/s (its own summary: from its first request to
     its last answer) as a share of phase 1, and the small requests' p99 under it.
The target: the batch at >= 90 % of phase 1 while the small stream keeps its p99.
`--smoke`: a CPU-sized run (loadgen's smoke workloads, 40 lines).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import orjson

from benchmarks import loadgen

ROOT = Path(__file__).resolve().parents[1]
_SUMMARY = re.compile(r"([\d,]+) pairs in ([\d.]+) s")


def write_batch_input(path: Path, w: loadgen.Workload, corpus: loadgen.Corpus, requests: int, seed: int) -> int:
    """REQUESTS plain lines drawn as loadgen draws its rag requests (own query each)."""
    import random

    pairs = 0
    with open(path, "wb") as f:
        for i in range(requests):
            rng = random.Random(seed * 1_000_003 + i)
            picks = rng.sample(range(len(corpus.docs)), min(w.docs, len(corpus.docs)))
            f.write(orjson.dumps({"id": f"r{i}", "query": loadgen.make_query(rng),
                                  "documents": [corpus.docs[p] for p in picks]}) + b"\n")
            pairs += len(picks)
    return pairs


def closed(url: str, w: loadgen.Workload, corpus, counter, c: int, n: int, tag: str, seed: int,
           max_seconds: float) -> dict:
    make = loadgen.Requests(w, corpus, counter, "shim", "", zlib.crc32(f"{seed}/{tag}".encode()), None)
    stats = loadgen.closed_loop([url + "/v1/rerank"], make, c, n, max(8, 2 * c), 1, 120.0, max_seconds)
    stats["pairs_s"] = round(stats["ok"] * w.docs / stats["wall_s"], 1)
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", required=True)
    p.add_argument("--tokenizer", default="", help="tokenizer.json or model dir, for token counts")
    p.add_argument("--requests", type=int, default=1000, help="rag lines in the batch input")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    args = p.parse_args(argv)
    url = args.service.rstrip("/")
    counter = loadgen.TokenCounter(args.tokenizer or None)
    rag, small = loadgen.WORKLOADS["rag"], loadgen.WORKLOADS["small"]
    requests, seconds = args.requests, 60.0
    if args.smoke:
        rag, small, requests, seconds = loadgen.smoke(rag), loadgen.smoke(small), 40, 15.0
    rag_corpus = loadgen.build_corpus(rag, counter, args.seed)
    small_corpus = loadgen.build_corpus(small, counter, args.seed)

    service = closed(url, rag, rag_corpus, counter, args.concurrency, requests, "rag", args.seed, seconds)
    alone = closed(url, small, small_corpus, counter, 10, 10**6, "small-alone", args.seed, seconds / 2)

    with tempfile.TemporaryDirectory() as tmp:
        input_path, output = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        pairs = write_batch_input(input_path, rag, rag_corpus, requests, args.seed + 1)
        beside: dict = {}
        # the small stream covers the batch's run: it starts once the job's first answer is
        # written and stops (its closed loop's time cap) before the job is expected to end
        expected_s = pairs / service["pairs_s"] if service["pairs_s"] else seconds
        # this checkout first, then whatever the caller's path already holds (a site dir on the GPU box)
        child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
        proc = subprocess.Popen([sys.executable, "-m", "offline", "batch", str(input_path), str(output),
                                 "--service", url, "--concurrency", str(args.concurrency),
                                 "--progress-interval", "5"], cwd=ROOT, env=child_env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None and not (output.exists() and output.stat().st_size > 0):
            time.sleep(0.05)
        thread = threading.Thread(target=lambda: beside.update(closed(
            url, small, small_corpus, counter, 10, 10**6, "small-beside", args.seed, max(1.0, 0.8 * expected_s))))
        thread.start()
        log, _ = proc.communicate()
        thread.join()
    found = _SUMMARY.findall(log)
    batch_pairs, batch_seconds = (int(found[-1][0].replace(",", "")), float(found[-1][1])) if found else (0, 0.0)
    batch_pairs_s = round(batch_pairs / batch_seconds, 1) if batch_seconds else 0.0
    result = {
        "bench": "batch_throughput", "service": url, "smoke": args.smoke, "concurrency": args.concurrency,
        "date": loadgen.now_utc(), "machine": loadgen.machine_info(),
        "service_rag_pairs_s": service["pairs_s"], "batch_pairs": pairs, "batch_exit_code": proc.returncode,
        "batch_pairs_s": batch_pairs_s,
        "batch_share_of_service": round(batch_pairs_s / service["pairs_s"], 3) if service["pairs_s"] else None,
        "small_alone_p50_ms": alone["p50_ms"], "small_alone_p99_ms": alone["p99_ms"],
        "small_beside_batch_p50_ms": beside.get("p50_ms"), "small_beside_batch_p99_ms": beside.get("p99_ms"),
        "errors": service["errors"] + alone["errors"] + beside.get("errors", 0),
        "batch_log_tail": log.strip().splitlines()[-2:],
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
