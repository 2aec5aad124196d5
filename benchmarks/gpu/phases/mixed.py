"""`mixed`: small interactive requests while long bulk work saturates the engine, on one launcher
configuration (--flags; default the launcher's defaults): mixed beside raw vLLM, at the default
engine token budget and at each of --budgets (engine-wide, split across the shim's workers), the
determinism probe, each shim variant (--variants, one extra shim each) with its --variant-steps,
then rag c=8/32, long and rag100 beside raw vLLM and hey seed c=50 with per-process CPU.

    run.sh mixed [--budgets 8192,65536] [--variants bulk_split_to_budget=false,engine_token_budget=24576+workers=2]
                 [--variant-steps mixed,det,rag] [--flags=--enforce-eager] [--targets shim]
"""

from __future__ import annotations

import argparse
import shlex
import time

import httpx
import psutil

from benchmarks.gpu import harness as h
from benchmarks.loadgen import metric_samples, metric_sum

NAME = "mixed"
SUMMARY = "small requests under long saturation: engine token budgets, shim variants, rag/long beside raw vLLM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flags", default="", help="launcher flags (write --flags=--x for one flag)")
    parser.add_argument("--budgets", default="32768,98304",
                        help="engine token budgets for mixed, each through an extra shim ('' for none)")
    parser.add_argument("--variants", default="",
                        help="shim settings tried one at a time, e.g. bulk_split_to_budget=false,"
                             "engine_token_budget=24576 (a=1+b=2: several in one shim)")
    parser.add_argument("--variant-steps", default="mixed,det,rag",
                        help="what each variant runs beyond mixed (det, rag)")
    parser.add_argument("--targets", default="shim,vllm")


def variant_settings(variant: str) -> dict[str, str]:
    """A shim variant: key=value, several joined by `+` (a=1+b=2)."""
    return dict(kv.split("=", 1) for kv in variant.split("+"))


class CpuSample:
    """CPU seconds per process (vLLM API server, engine core, shim workers, clients) over a step,
    as % of one core: which process saturates first is where per-request cost must go down."""

    def __init__(self, config: str, step: str, shim_url: str = h.SHIM) -> None:
        self.config, self.step, self.shim_url = config, step, shim_url

    @staticmethod
    def _snapshot() -> dict:
        snap = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if "python" not in cmd and "VLLM" not in (proc.info["name"] or "") and "hey" not in cmd:
                    continue
                t = proc.cpu_times()
                snap[proc.info["pid"]] = (proc.info["name"], cmd[:100], t.user + t.system)
            except psutil.Error:
                continue
        return snap

    def _batch_stats(self) -> tuple[float, float]:
        try:
            samples = metric_samples(self.shim_url, timeout=5)
        except httpx.HTTPError:
            return 0.0, 0.0
        return (metric_sum(samples, "reranker_engine_batch_prompts_sum"),
                metric_sum(samples, "reranker_engine_batch_prompts_count"))

    def __enter__(self):
        self.t0, self.before, self.b0 = time.monotonic(), self._snapshot(), self._batch_stats()
        return self

    def __exit__(self, *exc):
        seconds = time.monotonic() - self.t0
        after, b1 = self._snapshot(), self._batch_stats()
        rows = []
        for pid, (name, cmd, cpu) in after.items():
            if pid in self.before:
                used = cpu - self.before[pid][2]
                if used > 0.05 * seconds:
                    rows.append({"pid": pid, "name": name, "cmd": cmd,
                                 "cpu_pct": round(100 * used / seconds, 1)})
        rows.sort(key=lambda r: -r["cpu_pct"])
        calls = b1[1] - self.b0[1]
        h.emit({"kind": "cpu", "config": self.config, "step": self.step, "seconds": round(seconds, 1),
                "engine_calls": calls, "prompts_per_call": round((b1[0] - self.b0[0]) / calls, 2)
                if calls else None, "processes": rows[:12]})


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    flags = shlex.split(args.flags)
    budgets = [int(b) for b in args.budgets.split(",") if b]
    variants = [v for v in args.variants.split(",") if v]
    config = "defaults" if not flags else " ".join(flags)
    h.ensure_launcher(config, flags)
    h.loadgen(clock, config, "mixed", targets=args.targets, est_s=50 * len(args.targets.split(",")))
    for budget in budgets:
        with h.Shims(1, engine_token_budget=str(budget)) as shim:
            h.loadgen(clock, f"budget{budget}", "mixed", shim=shim.urls, targets="shim", est_s=50)
    # scores of the configuration measured: bit-identical alone, batched (cut across calls
    # right after interactive work) and under load
    h.det_probe(clock, config, est_s=15)
    for variant in variants:
        with h.Shims(1, **variant_settings(variant)) as shim:
            h.loadgen(clock, variant, "mixed", shim=shim.urls, targets="shim", est_s=50)
            if "det" in args.variant_steps:
                h.det_probe(clock, variant, est_s=15, url=shim.urls[0])
            if "rag" in args.variant_steps:  # rag requests (~9k tokens) are bulk work too
                h.loadgen(clock, variant, "rag", shim=shim.urls, targets="shim", est_s=45)
    h.loadgen(clock, config, "rag", targets="shim,vllm", est_s=70)
    h.loadgen(clock, config, "long,rag100", targets="shim,vllm", est_s=70)
    with CpuSample(config, "hey seed c=50"):
        h.hey(config, "shim", h.SHIM + "/v1/rank", h.SEED_BODY, c=50)
