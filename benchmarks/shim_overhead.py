"""What the shim costs: the shim in front of an instant fake vLLM, against the fake called directly.

    python -m benchmarks.shim_overhead [--smoke] [--workloads seed,rag] [--pin] [--profile DIR]

Starts benchmarks.fake_vllm (its own process) and one shim worker (`python -m server`,
RERANKER_WORKERS=1) in front of it, then, per workload:
  1. latency at concurrency 1: p50/p99 of POST {shim}/v1/rerank, and of POST {fake}/classify with
     the very token ids the shim sends (so the difference is what the shim adds);
  2. throughput: a closed loop at concurrency C (default 64) against the shim, and against the
     fake alone (to show the fake is not the bottleneck).
Prints one JSON line per workload with the figures and the targets (shim adds <= 1 ms p50,
one worker >= 2,000 req/s for the seed request). With --pin (>= 3 CPUs), the shim gets a CPU
of its own, so the client and the fake do not steal its time. With --profile DIR, py-spy samples
the shim during the throughput phase and the hottest functions are printed (JSON lines of kind
"profile") and saved under DIR (needs py-spy: `pip install py-spy`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.loadgen import (
    SEED_DOCS,
    SEED_QUERY,
    WORKLOADS,
    TokenCounter,
    _dumps,
    build_corpus,
    closed_loop,
    machine_info,
    now_utc,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "qwen3-reranker-tiny"
TARGET_ADDED_P50_MS = 1.0
TARGET_REQ_S = 2000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, budget: float = 60.0) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not up after {budget} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def pin(pid: int, cpus: set[int]) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, cpus)


def cpu_plan(enabled: bool) -> tuple[set, set, set]:
    """(shim, fake, client) CPU sets; empty sets = no pinning."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not enabled or len(cpus) < 3:
        return set(), set(), set()
    if len(cpus) >= 8:
        return {cpus[1]}, {cpus[2], cpus[3]}, set(cpus[4:8])
    return {cpus[0]}, {cpus[1]}, set(cpus[2:])


def start_fake(port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_vllm", "--port", str(port)],
                                cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    return proc


def start_shim(port: int, upstream: str, log: Path, extra_env: dict,
               root: Path = ROOT) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    if root != ROOT:  # a modified copy of the project (A/B of a server change)
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"RERANKER_VLLM_URL": upstream, "RERANKER_MODEL": str(MODEL_DIR),
                "RERANKER_SERVED_MODEL_NAME": "qwen3-reranker-tiny", "RERANKER_RATE_LIMIT": "",
                "RERANKER_LOG_LEVEL": "WARNING", "RERANKER_HOST": "127.0.0.1",
                "RERANKER_PORT": str(port), "RERANKER_WORKERS": "1", "RERANKER_MAX_MODEL_LEN": "8192"})
    env.update(extra_env)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=root, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/ready", proc)
    return proc


class Fixed:
    """The same body every time (the closed loop's `make`)."""

    def __init__(self, body: bytes, docs: int, tokens: int) -> None:
        self.item = (body, docs, tokens)

    def __call__(self, i: int):
        return self.item


def bodies(workload: str, counter: TokenCounter):
    """(shim body, fake /classify body with the same token ids, documents, prompt tokens)."""
    from server.scoring.prompt import PromptEncoder
    from server.scoring.tokenizer import load_tokenizer
    from server.settings import DEFAULT_INSTRUCTION

    if workload.startswith("seed"):
        query, docs = SEED_QUERY, list(SEED_DOCS)
    else:
        w = WORKLOADS[workload]
        corpus = build_corpus(w, counter, seed=7)
        query, docs = "how do I file a travel expense report?", corpus.docs[: w.docs]
    encoder = PromptEncoder(load_tokenizer(str(MODEL_DIR)))
    head = encoder.head(query, DEFAULT_INSTRUCTION)
    prompts = [encoder.assemble(head, p.ids) for p in encoder.documents(docs)]
    shim = _dumps({"model": "qwen3-reranker-tiny", "query": query, "documents": docs})
    fake = _dumps({"model": "qwen3-reranker-tiny", "input": prompts, "use_activation": True})
    return shim, fake, len(docs), sum(len(p) for p in prompts)


def profile_shim(pid: int, seconds: float, out_dir: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print(json.dumps({"kind": "profile", "error": "py-spy not installed (pip install py-spy)"}))
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250",
                             "--format", "raw", "-o", str(out_dir / "shim.folded")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(folded: Path, top: int = 25) -> dict:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own, incl, total = Counter(), Counter(), 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        # frame: "function (file.py:line)"; drop line numbers so a function is one row
        names = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames]
        own[names[-1]] += n
        for name in set(names):
            incl[name] += n

    def share(c):
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(incl)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.shim_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="seed", help="comma list: seed, short, rag")
    p.add_argument("--latency-requests", type=int, default=3000)
    p.add_argument("--throughput-requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--procs", type=int, default=0, help="client processes (0: auto)")
    p.add_argument("--pin", action="store_true", help="give the shim a CPU of its own")
    p.add_argument("--engine-api", default="tokens", choices=["tokens", "rerank"])
    p.add_argument("--profile", default="", help="directory: py-spy the shim under load")
    p.add_argument("--smoke", action="store_true", help="CI mode: a few hundred requests")
    p.add_argument("--out", default="")
    p.add_argument("--label", default="")
    p.add_argument("--shim-root", default="", help="run the shim from this copy of the project "
                   "(A/B a change to server/ without touching the checkout)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.latency_requests, args.throughput_requests = 100, 300
        args.concurrency = min(args.concurrency, 16)
    from launcher.demo_model import build

    build("tiny", MODEL_DIR)
    logs = ROOT / ".cache" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    shim_cpus, fake_cpus, client_cpus = cpu_plan(args.pin)
    fake_port, shim_port = free_port(), free_port()
    fake = start_fake(fake_port, logs / "fake_vllm.log")
    pin(fake.pid, fake_cpus)
    shim = None
    out = open(args.out, "a") if args.out else None
    counter = TokenCounter(str(MODEL_DIR))
    common = {"date": now_utc(), "machine": machine_info(), "label": args.label,
              "pinned": bool(shim_cpus), "engine_api": args.engine_api,
              "shim_root": args.shim_root or "."}
    status = 0
    try:
        shim = start_shim(shim_port, f"http://127.0.0.1:{fake_port}", logs / "shim_overhead.log",
                          {"RERANKER_ENGINE_API": args.engine_api},
                          Path(args.shim_root).resolve() if args.shim_root else ROOT)
        pin(shim.pid, shim_cpus)
        pin(0, client_cpus)
        procs = args.procs or max(1, min(4, len(client_cpus) or 1))
        for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
            shim_body, fake_body, docs, tokens = bodies(workload, counter)
            shim_url = f"http://127.0.0.1:{shim_port}/v1/rerank"
            fake_url = f"http://127.0.0.1:{fake_port}/classify"
            if args.engine_api == "rerank":
                fake_body = shim_body
                fake_url = f"http://127.0.0.1:{fake_port}/rerank"
            n_lat = args.latency_requests
            warm = max(50, n_lat // 20)
            # latency: direct, shim, direct again (the fake's p50 is the mean of both passes)
            d1 = closed_loop(fake_url, Fixed(fake_body, docs, tokens), 1, n_lat, warm)
            s1 = closed_loop(shim_url, Fixed(shim_body, docs, tokens), 1, n_lat, warm)
            d2 = closed_loop(fake_url, Fixed(fake_body, docs, tokens), 1, n_lat, warm)
            direct_p50 = (d1["p50_ms"] + d2["p50_ms"]) / 2
            direct_p99 = (d1["p99_ms"] + d2["p99_ms"]) / 2
            c, n_tp = args.concurrency, args.throughput_requests
            spy = None
            if args.profile:
                spy = profile_shim(shim.pid, 10, Path(args.profile) / workload)
                time.sleep(0.5)
            cpu0 = cpu_seconds(shim.pid)
            st = closed_loop(shim_url, Fixed(shim_body, docs, tokens), c, n_tp, 4 * c, procs,
                             max_seconds=30)
            # CPU time the shim spent per request under load: independent of what else runs on
            # the machine, so 1000 / cpu_ms is the rate one worker could reach on a free core
            cpu_ms = (cpu_seconds(shim.pid) - cpu0) * 1000 / max(1, st["requests"] + 4 * c)
            if spy is not None:
                spy.wait(60)
            dt = closed_loop(fake_url, Fixed(fake_body, docs, tokens), c, n_tp, 4 * c, procs,
                             max_seconds=30)
            errors = s1["errors"] + st["errors"] + d1["errors"] + d2["errors"] + dt["errors"]
            added = s1["p50_ms"] - direct_p50
            line = {
                "kind": "shim_overhead", "workload": workload, "docs_per_request": docs,
                "prompt_tokens": tokens,
                "direct_p50_ms": round(direct_p50, 3), "shim_p50_ms": s1["p50_ms"],
                "added_p50_ms": round(added, 3),
                "direct_p99_ms": round(direct_p99, 3), "shim_p99_ms": s1["p99_ms"],
                "added_p99_ms": round(s1["p99_ms"] - direct_p99, 3),
                "shim_max_req_s": st["req_s"], "shim_p50_ms_at_c": st["p50_ms"],
                "shim_cpu_ms_per_req": round(cpu_ms, 3),
                "shim_cpu_bound_req_s": round(1000 / cpu_ms, 1) if cpu_ms > 0 else None,
                "direct_max_req_s": dt["req_s"], "concurrency": c, "client_procs": procs,
                "latency_requests": n_lat, "throughput_requests": st["requests"],
                "errors": errors,
                "target_added_p50_ms": TARGET_ADDED_P50_MS, "target_req_s": TARGET_REQ_S,
                "meets_latency": added <= TARGET_ADDED_P50_MS,
                "meets_throughput": st["req_s"] >= TARGET_REQ_S, **common,
            }
            text = json.dumps(line, ensure_ascii=False)
            print(text, flush=True)
            if out:
                out.write(text + "\n")
            if errors:
                status = 1
            folded = Path(args.profile) / workload / "shim.folded" if args.profile else None
            if folded is not None and folded.exists():
                prof = {"kind": "profile", "workload": workload, **summarise_profile(folded),
                        "folded": str(folded), **common}
                text = json.dumps(prof, ensure_ascii=False)
                print(text, flush=True)
                if out:
                    out.write(text + "\n")
    finally:
        if shim is not None:
            stop(shim)
        stop(fake)
        if out:
            out.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
