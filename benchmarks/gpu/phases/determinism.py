"""`determinism`: deterministic mode (the default) against --no-deterministic: the same 64 pairs
alone, in one batch of 64 and among c=32 other traffic, compared exactly (benchmarks/determinism.py),
then rag c=32 and seed through the shim, the same launcher otherwise, caches warm (the compile
cache for the default; --no-deterministic compiles its own graph on its first start).

    run.sh determinism
"""

from __future__ import annotations

import argparse

from benchmarks.gpu import harness as h
from benchmarks.gpu.phases.startup import startup_env

NAME = "determinism"
SUMMARY = "scores alone / batched / under load, and the throughput cost of deterministic mode"
CONFIGS = (("deterministic", []), ("non-deterministic", ["--no-deterministic"]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    quick = ["--max-seconds", "12"]
    for config, flags in CONFIGS:
        if clock.left() < 60:
            h.emit({"kind": "skipped", "step": "determinism", "config": config, "reason": "budget"})
            continue
        state = h.launcher_running()
        if not (state and state["config"] == "levers" and not flags):  # startup leaves `levers` up
            h.stop_launcher()
            try:
                line = h.start_launcher(config, flags, budget=min(150, clock.left() - 20),
                                        env=startup_env("levers", fresh=False), cold=False)
                h.emit({**line, "kind": "startup", "step": "determinism"})
            except RuntimeError as exc:
                h.emit({"kind": "error", "step": "determinism", "config": config, "error": str(exc)[:3000]})
                h.stop_launcher()
                continue
        h.det_probe(clock, config)
        h.loadgen(clock, config, "rag", targets="shim", concurrency="32", est_s=25, extra=quick)
        h.loadgen(clock, config, "seed", targets="shim", est_s=25, extra=quick)
    h.stop_launcher()
