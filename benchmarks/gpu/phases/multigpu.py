"""`multigpu`: N = 1, 2, 4, 8 GPUs (those nvidia-smi lists; BENCH_GPUS overrides) in one pod, as
N engines behind the shim (`--multi-gpu-mode engines`, least outstanding tokens) and as one vLLM
with `--data-parallel-size N`: rag at c=32*N, seed with hey (c=50*N), long at c=8*N, mixed (small
c=10 while long runs at c=8*N); then throughput per GPU against N=1 (`{"kind": "multigpu"}` lines).

    run.sh multigpu [--ns 1,2,4] [--modes engines] [--fresh]

About 4 minutes a step: steps done on this machine are skipped, so repeat the call until the
summary has them all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import httpx

from benchmarks.gpu import harness as h
from benchmarks.loadgen import metric_samples

NAME = "multigpu"
SUMMARY = "N engines or data-parallel over N GPUs of one host: throughput per GPU against N=1"

MULTIGPU_NS = (1, 2, 4, 8)
MULTIGPU_MODES = ("engines", "data-parallel")
# Seconds one step needs at most: a launcher start (N engines load at once; warm compile cache)
# and rag, seed, long, mixed. A step that would not fit what is left of the call is skipped.
MULTIGPU_STEP_S = 240


def gpu_count() -> int:
    """GPUs on this box (nvidia-smi -L); BENCH_GPUS overrides (a CPU dry run: BENCH_GPUS=2)."""
    if os.environ.get("BENCH_GPUS"):
        return int(os.environ["BENCH_GPUS"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def multigpu_plan(gpus: int, ns: list[int], modes: list[str]) -> list[tuple[str, int]]:
    """(mode, N) steps, most important first: N=1 (the reference; both modes are the same single
    vLLM there), then each N for the engines mode before data-parallel, so a budget that runs
    out still leaves the primary path measured at every N."""
    plan = []
    for n in ns:
        if n > gpus:
            continue
        for mode in modes:
            if n == 1 and plan and plan[0][1] == 1:
                continue
            plan.append(("engines" if n == 1 else mode, n))
    return plan


def multigpu_done() -> set[tuple[str, int]]:
    """Steps already measured on this machine (results.jsonl survives while it stays warm), so
    the same call repeated does the next steps."""
    done = set()
    if h.RESULTS.exists():
        for line in h.RESULTS.read_text().splitlines():
            if '"multigpu_step"' in line:
                rec = json.loads(line)
                if rec.get("status") == "done":
                    done.add((rec["mode"], rec["n"]))
    return done


def engine_calls() -> dict[str, float]:
    """Calls the shim sent to each engine so far (reranker_engine_instance_calls_total)."""
    try:
        samples = metric_samples(h.SHIM)
    except httpx.HTTPError:
        return {}
    return {labels["engine"]: value for name, labels, value in samples
            if name == "reranker_engine_instance_calls_total"}


def phase_multigpu(clock: h.Clock, ns: list[int], modes: list[str], fresh: bool) -> None:
    """Each (mode, N) step this box can run, unless measured earlier on this machine (the same
    call repeated measures the rest); a summary of everything measured so far ends each call."""
    gpus = gpu_count()
    plan = multigpu_plan(gpus, ns, modes)
    if not plan:
        h.emit({"kind": "skipped", "step": "multigpu", "reason": f"{gpus} GPUs visible"})
        return
    done = set() if fresh else multigpu_done()
    for mode, n in plan:
        config = f"{mode}-n{n}"
        if (mode, n) in done:
            h.log(f"{config}: measured earlier on this machine")
            continue
        if clock.left() < MULTIGPU_STEP_S:
            h.emit({"kind": "skipped", "step": "multigpu", "config": config, "mode": mode, "n": n,
                    "reason": f"device-call budget: {clock.left():.0f} s left, a step needs "
                              f"~{MULTIGPU_STEP_S} s; run the phase again"})
            continue
        multigpu_step(clock, mode, n)
    h.stop_launcher()
    multigpu_summary()


def multigpu_step(clock: h.Clock, mode: str, n: int) -> None:
    config = f"{mode}-n{n}"
    flags = ["--engines", str(n), "--multi-gpu-mode", mode]
    h.stop_launcher()
    try:
        ready = h.start_launcher(config, flags, budget=min(300, clock.left() - 60))
        ready["all_engines_s"] = round(ready["seconds_to_ready"] + h.wait_all_engines(n, 120)[0], 1)
        h.emit({**ready, "mode": mode, "n": n})
    except RuntimeError as exc:
        h.emit({"kind": "error", "step": "multigpu", "config": config, "error": str(exc)[:3000]})
        h.emit({"kind": "multigpu_step", "mode": mode, "n": n, "status": "failed to start"})
        h.stop_launcher()
        return
    quick = ["--max-seconds", "20", "--meta", f"mode={mode}", "--meta", f"n={n}"]
    procs = ["--procs", str(min(4, n))]
    before = engine_calls()
    h.loadgen(clock, config, "rag", targets="shim", concurrency=str(32 * n), requests=400 * n,
            est_s=30, extra=quick + procs)
    h.hey(config, "shim", h.SHIM + "/v1/rank", h.SEED_BODY, n=h.HEY_N * n, c=min(50 * n, 400))
    h.loadgen(clock, config, "long", targets="shim", concurrency=str(8 * n), requests=100 * n,
            est_s=30, extra=quick)
    h.loadgen(clock, config, "mixed", targets="shim", est_s=50,
            extra=quick + ["--mixed-long-concurrency", str(8 * n)])
    after = engine_calls()
    spread = {e: after[e] - before.get(e, 0) for e in after}
    h.emit({"kind": "multigpu_step", "mode": mode, "n": n, "status": "done",
          "engine_calls": spread,  # engines mode: how evenly the shim spread the calls
          "seconds_left": round(clock.left())})


def multigpu_summary() -> None:
    """Throughput per GPU at each N against N=1, from every multigpu line on this machine.
    Targets: rag and long >= 0.9 x N x the one-GPU figure; seed scales until the
    front end saturates (reported, not judged)."""
    if not h.RESULTS.exists():
        return
    figures: dict[tuple[str, int, str], float] = {}
    for line in h.RESULTS.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("phase") != "multigpu" or not str(rec.get("config", "")).count("-n"):
            continue
        mode, _, n = rec["config"].rpartition("-n")
        key = (mode, int(n))
        if rec.get("kind") == "result" and rec.get("target") == "shim" and not rec.get("errors"):
            figures[(*key, rec["workload"])] = rec["pairs_s"]
        elif rec.get("kind") == "hey" and not rec.get("errors"):
            figures[(*key, "seed")] = rec["req_s"]
        elif rec.get("kind") == "mixed" and not rec.get("errors"):
            figures[(*key, "mixed")] = rec["long_pairs_s"]
            figures[(*key, "mixed_small_p95_ms")] = rec["small_p95_ms"]
    units = {"rag": "pairs/s", "long": "pairs/s", "seed": "req/s", "mixed": "long pairs/s"}
    for (mode, n, workload), value in sorted(figures.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        if workload not in units:
            continue
        one = figures.get(("engines", 1, workload))
        per_gpu = value / n
        line = {"kind": "multigpu", "workload": workload, "mode": mode, "n": n,
                "throughput": value, "unit": units[workload], "per_gpu": round(per_gpu, 1),
                "per_gpu_vs_n1": round(per_gpu / one, 3) if one else None}
        if workload == "mixed":
            line["small_p95_ms"] = figures.get((mode, n, "mixed_small_p95_ms"))
        if workload in ("rag", "long") and one:
            line["target"] = 0.9
            line["meets_target"] = per_gpu / one >= 0.9
        h.emit(line)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ns", default=",".join(map(str, MULTIGPU_NS)),
                        help="GPU counts to measure (those above the box's are left out)")
    parser.add_argument("--modes", default=",".join(MULTIGPU_MODES), help="engines,data-parallel")
    parser.add_argument("--fresh", action="store_true", help="measure steps done earlier again")


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    phase_multigpu(clock, [int(n) for n in args.ns.split(",") if n],
                   [m for m in args.modes.split(",") if m], args.fresh)
