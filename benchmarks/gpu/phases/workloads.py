"""`workloads`: the named loadgen workloads on one launcher configuration, through the shim and
against raw vLLM on the same engine.

    run.sh workloads --config mnbt32k --flags "--max-num-batched-tokens 32768" --workloads rag,long
"""

from __future__ import annotations

import argparse
import shlex

from benchmarks.gpu import harness as h

NAME = "workloads"
SUMMARY = "the named workloads on one launcher configuration (--flags), shim and raw vLLM side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="custom", help="the configuration's name in the result lines")
    parser.add_argument("--flags", default="", help="launcher flags (write --flags=--x for one flag)")
    parser.add_argument("--workloads", default="seed,rag,long",
                        help="benchmarks/loadgen.py workloads: seed, seed-repeat, short, small, rag, "
                             "rag100, long, mixed")
    parser.add_argument("--targets", default="shim,vllm")
    parser.add_argument("--concurrency", default="", help="e.g. 8,32 (default: each workload's own)")


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    flags = shlex.split(args.flags)
    h.ensure_launcher(args.config, flags)
    for workload in args.workloads.split(","):
        h.loadgen(clock, args.config, workload, targets=args.targets, concurrency=args.concurrency,
                  est_s=40)
