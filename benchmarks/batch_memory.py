"""Memory of `reranker batch` over a large input: is it flat?

    python -m benchmarks.batch_memory --lines 10000 --docs 100 --out benchmarks/results/X.jsonl

Writes an input of LINES plain lines of DOCS documents each (10,000 x 100 = 1 M pairs), runs
`python -m offline batch` on it against benchmarks.fake_vllm (an instant stand-in: a real engine
on a CPU scores a few hundred pairs a second, and memory is the client's to show, not the
engine's), and samples the batch process's RSS as the output grows. Flat = the RSS once a tenth
of the output is written is (nearly) the peak: nothing grows with the input.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]


def make_input(path: Path, lines: int, docs: int) -> int:
    with open(path, "wb") as f:
        for i in range(lines):
            record = {"id": f"q{i}", "query": f"which passage answers question number {i}?",
                      "documents": [f"passage {j} of question {i}: some words to make it longer" for j in range(docs)]}
            f.write(orjson.dumps(record) + b"\n")
    return lines * docs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fake(log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_vllm", "--port", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fake server did not start")


def measure(input_path: Path, output: Path, url: str, pairs: int, concurrency: int = 16,
            timeout_s: float = 600) -> dict:
    """Run the batch job and sample its RSS (every 50 ms) against the output's size."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "offline", "batch", str(input_path), str(output),
                             "--service", url, "--plain-route", "/rerank", "--concurrency", str(concurrency),
                             "--progress-interval", "5"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[int, int]] = []  # (output bytes, rss bytes)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss
        except psutil.NoSuchProcess:
            break
        samples.append((output.stat().st_size if output.exists() else 0, rss))
        if time.monotonic() - started > timeout_s:
            proc.kill()
            raise RuntimeError("batch job over its time limit")
        time.sleep(0.05)
    log = proc.stdout.read().decode(errors="replace")
    seconds = time.monotonic() - started
    final = output.stat().st_size
    peak = max(rss for _, rss in samples)
    warm = [rss for size, rss in samples if size >= final / 10]
    at_tenth = warm[0] if warm else peak
    mib = 1024 * 1024
    return {"pairs": pairs, "lines": sum(1 for _ in open(output, "rb")), "exit_code": proc.returncode,
            "input_mib": round(input_path.stat().st_size / mib, 1), "output_mib": round(final / mib, 1),
            "rss_at_tenth_mib": round(at_tenth / mib, 1), "peak_rss_mib": round(peak / mib, 1),
            "growth_after_tenth_mib": round((peak - at_tenth) / mib, 1), "samples": len(samples),
            "seconds": round(seconds, 1), "pairs_per_s": round(pairs / seconds), "concurrency": concurrency,
            "log_tail": log.strip().splitlines()[-3:]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-out" / "batch-memory")
    parser.add_argument("--out", type=Path, default=None, help="append the result as a JSON line")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    input_path, output = args.work / "input.jsonl", args.work / "output.jsonl"
    output.unlink(missing_ok=True)
    pairs = make_input(input_path, args.lines, args.docs)
    fake, url = start_fake(args.work / "fake.log")
    try:
        result = measure(input_path, output, url, pairs, args.concurrency)
    finally:
        fake.terminate()
        fake.wait(10)
    result = {"bench": "batch_memory", "server": "benchmarks.fake_vllm", "machine": f"{os.cpu_count()} CPUs",
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
