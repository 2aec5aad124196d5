"""The GPU benchmark's command line, run by benchmarks/gpu/run.sh on the device machine (or any
GPU box with the project's venv):

    python3 -m benchmarks.gpu.orchestrate PHASE --budget SECONDS [the phase's options]
    python3 -m benchmarks.gpu.orchestrate PHASE --help

One subcommand per phase module in benchmarks/gpu/phases/ (registered in its `PHASES`), plus
`stop` (stop a launcher left running by an earlier call). A phase keeps inside --budget: a step
that would not fit what is left is reported as `{"kind": "skipped"}`, so a device call is never
cut off by its limit. Result lines, logs and the launcher left running: benchmarks/gpu/harness.py.
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks.gpu import harness as h
from benchmarks.gpu.phases import PHASES


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--budget", type=float, default=540, help="seconds this call may take")
    p = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu.orchestrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="phase", required=True, metavar="PHASE")
    for name, phase in PHASES.items():
        phase.add_arguments(sub.add_parser(
            name, parents=[common], help=phase.SUMMARY, description=phase.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter))
    sub.add_parser("stop", parents=[common], help="stop a launcher left running by an earlier call")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    clock = h.Clock(args.budget)
    h.CLOCK = clock
    h.WORK.mkdir(parents=True, exist_ok=True)
    h.LOGS.mkdir(parents=True, exist_ok=True)
    gpu = h.gpu_name()
    os.environ["BENCH_GPU"] = gpu
    h.COMMON.update({"phase": args.phase, "gpu": gpu, "versions": h.versions()})
    try:
        if args.phase == "stop":
            h.stop_launcher()
        else:
            PHASES[args.phase].run(clock, args)
    except Exception as exc:  # noqa: BLE001 - report, keep what was measured
        h.emit({"kind": "error", "phase": args.phase, "error": f"{type(exc).__name__}: {exc}"[:3000]})
        return 1
    h.log(f"phase {args.phase} done, {clock.left():.0f} s of budget left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
