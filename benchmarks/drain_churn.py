"""Shutdown under connection churn: how many requests are lost when the shim gets SIGTERM while
clients open a fresh connection per request as fast as they can (an instant fake vLLM behind it).

    python -m benchmarks.drain_churn [--rounds 8] [--threads 16]

Each round starts benchmarks.fake_vllm and one shim worker, loads it for a second, sends SIGTERM
and counts outcomes: "200", "refused" (connect refused: fine, the client retries elsewhere) and
anything else (a reset or read error after the request was sent: a lost request). One JSON line
per round and a summary.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx

from tests.conftest import ROOT, free_port, start_shim

BODY = {"query": "q", "docs": ["a", "b", "c"]}


def one_round(threads: int, load_s: float) -> Counter:
    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_vllm", "--port", str(fake_port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outcomes: Counter = Counter()
    stop = threading.Event()
    try:
        shim = start_shim(f"http://127.0.0.1:{fake_port}", drain_window="0.5", log_level="WARNING")

        def client():
            while not stop.is_set():
                try:
                    outcomes[str(httpx.post(shim.url + "/v1/rank", json=BODY, timeout=30).status_code)] += 1
                except httpx.ConnectError:
                    outcomes["refused"] += 1
                    time.sleep(0.01)
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1

        pool = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        time.sleep(load_s)
        shim.proc.send_signal(signal.SIGTERM)
        shim.proc.wait(60)
        time.sleep(0.2)
    finally:
        stop.set()
        fake.terminate()
        fake.wait(30)
    for t in pool:
        t.join(30)
    return outcomes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--load-seconds", type=float, default=1.0)
    args = p.parse_args(argv)
    lost_rounds, lost = 0, Counter()
    for i in range(args.rounds):
        outcomes = one_round(args.threads, args.load_seconds)
        bad = {k: v for k, v in outcomes.items() if k not in ("200", "refused")}
        lost_rounds += bool(bad)
        lost.update(bad)
        print(json.dumps({"kind": "drain_round", "round": i, **outcomes}), flush=True)
    print(json.dumps({"kind": "drain_churn", "rounds": args.rounds, "threads": args.threads,
                      "rounds_with_lost_requests": lost_rounds, "lost": dict(lost),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
