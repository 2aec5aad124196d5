"""The GPU benchmark phases, one module each, named by what they measure.

Each module has `NAME` (the subcommand: `run.sh NAME ...`), `SUMMARY` (one line for --help),
`add_arguments(parser)` (its own options) and `run(clock, args)`; `PHASES` below is the one
place a phase is registered (benchmarks/gpu/orchestrate.py makes the subcommands from it, and
tests/unit/test_gpu_phases.py checks every module here is in it). Shared machinery (the clock,
result lines, the launcher, extra shims, loadgen, hey, score probes) is benchmarks/gpu/harness.py.

Phases whose questions are answered (benchmarks/RESULTS.md has the figures and the commit that
measured them) were retired: baseline and levers (start-up and workloads at the first defaults,
shim and engine levers), fp8 (refused by the canary with vLLM 0.26), batching and front
(cross-request batching, where a small request's time goes). `fill` and `startup` measure what
they did against today's defaults.
"""

from __future__ import annotations

from benchmarks.gpu.phases import determinism, fill, mixed, multigpu, startup, vl, workloads

PHASES = {phase.NAME: phase for phase in (fill, startup, determinism, mixed, multigpu, workloads, vl)}
