"""The GPU benchmark's phases (benchmarks/gpu/phases/): each module is registered and becomes a
subcommand of benchmarks/gpu/orchestrate.py with its own options; the command lines docs/gpu.md
gives parse; a phase run end to end here (no GPU, no budget) reports its steps as skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import orchestrate
from benchmarks.gpu.phases import PHASES, fill, multigpu
from tests.conftest import ROOT

PHASE_DIR = ROOT / "benchmarks" / "gpu" / "phases"


def test_every_phase_module_is_registered_under_its_own_name():
    modules = {p.stem for p in PHASE_DIR.glob("*.py") if p.stem != "__init__"}
    assert modules == set(PHASES)
    for name, phase in PHASES.items():
        assert phase.NAME == name == phase.__name__.rsplit(".", 1)[1]
        assert phase.SUMMARY and phase.__doc__ and callable(phase.add_arguments) and callable(phase.run)


def test_each_phase_is_a_subcommand_with_the_common_budget():
    parser = orchestrate.parser()
    for name in [*PHASES, "stop"]:
        args = parser.parse_args([name, "--budget", "5"])
        assert (args.phase, args.budget) == (name, 5.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["baseline"])  # retired


def test_the_documented_fill_command_line_parses_as_before():
    args = orchestrate.parser().parse_args([
        "fill", "--budget", "540", "--fill-configs", "n1,n4,n2+graphs16k@seed/small",
        "--fill-steps", "seed,small,rag,profile", "--fill-raw", "n1", "--fill-profile-starts"])
    assert (args.fill_configs, args.fill_steps, args.fill_raw, args.fill_profile_starts) == (
        "n1,n4,n2+graphs16k@seed/small", "seed,small,rag,profile", "n1", True)
    defaults = orchestrate.parser().parse_args(["fill"])
    assert (defaults.fill_configs, defaults.fill_steps, defaults.fill_raw) == ("n1,n2,n4,n4+mps", "seed,small,rag", "n1")


def test_fill_configurations_become_launcher_flags_with_vllms_after_the_separator():
    assert fill.config_flags("n1") == (1, ["--no-fill-gpu"])  # one engine, whatever the launcher would choose
    assert fill.config_flags("auto") == (0, [])  # the launcher's own choice
    n, flags = fill.config_flags("n2+mps+graphs8k+step64k")
    assert n == 2
    assert flags[:6] == ["--engines", "2", "--engines-per-gpu", "2", "--cuda-mps", "--max-num-batched-tokens"]
    assert flags[flags.index("--"):][:2] == ["--", "--cudagraph-capture-sizes"]
    with pytest.raises(ValueError):
        fill.config_flags("n2+turbo")


def test_multigpu_measures_one_gpu_first_then_the_engines_mode_at_each_n():
    assert multigpu.multigpu_plan(4, [1, 2, 4, 8], ["engines", "data-parallel"]) == [
        ("engines", 1), ("engines", 2), ("data-parallel", 2), ("engines", 4), ("data-parallel", 4)]


def test_a_phase_without_budget_reports_its_steps_skipped(tmp_path: Path):
    env = {**os.environ, "BENCH_WORK": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu.orchestrate", "fill", "--budget", "1",
                           "--fill-configs", "n1,n2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(line["kind"], line["config"], line["phase"]) for line in lines] == [
        ("skipped", "n1", "fill"), ("skipped", "n2", "fill")]
