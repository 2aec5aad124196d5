"""`startup`: seconds from `python -m launcher` to the shim's /ready, cold (empty caches) and warm
(caches present), each with the launcher's timeline of vLLM's start-up phases, for the launcher's
defaults and with its start-up levers turned off; the fixed probe's scores of every start against
the first one (the levers change how vLLM starts, never what it computes).

    run.sh startup [--configs levers,baseline]

The most important starts first, so a call cut off early still has them; `levers` is left
running (warm) for `determinism`.
"""

from __future__ import annotations

import argparse
import os
import subprocess

from benchmarks.gpu import harness as h

NAME = "startup"
SUMMARY = "cold and warm starts to /ready with vLLM's start-up timeline, levers on and off"

STARTUP = h.WORK / "startup"  # one cache directory (or HOME) per configuration, so each has a cold start
# The launcher's start-up levers turned off, one by one where the timeline cannot tell them apart.
# Deterministic mode stays as the defaults have it, so that scores must be identical across all
# of these.
NO_LEVERS = ["--no-vllm-fork-engine", "--cache-dir", "", "--", "--model-impl", "auto"]
CONFIGS = {
    # name: (launcher flags, environment; a None value removes the variable)
    "levers": ([], {}),                               # the launcher's defaults
    "baseline": (NO_LEVERS, {"VLLM_ENABLE_STARTUP_PLAN": "0"}),
    "levers-no-plan": ([], {"VLLM_ENABLE_STARTUP_PLAN": "0"}),
    "baseline+fork": (["--cache-dir", "", "--", "--model-impl", "auto"], {"VLLM_ENABLE_STARTUP_PLAN": "0"}),
}
CACHE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "XDG_CACHE_HOME")
# (configuration, cold, seconds the start may take), in the order they run
PLAN = [("levers", True, 90), ("levers", False, 45), ("baseline", True, 150),
        ("baseline", False, 110), ("baseline+fork", False, 90), ("levers-no-plan", False, 45),
        ("levers", False, 45)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {','.join(CONFIGS)}")


def startup_env(config: str, fresh: bool) -> dict:
    """Where `config` keeps its caches: <STARTUP>/<cache group>/ (RERANKER_CACHE_DIR), or, with
    --cache-dir "" (vLLM's own defaults: ~/.cache/vllm, /tmp/torchinductor_*, ~/.triton), a HOME
    and TMPDIR of its own. `fresh` empties it first (a cold start)."""
    flags, extra = CONFIGS[config]
    group = "baseline" if "--cache-dir" in flags else "levers"  # the plan does not change the cache
    home = STARTUP / group
    if fresh:
        subprocess.run(["rm", "-rf", str(home)])
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env: dict[str, str | None] = {k: None for k in CACHE_VARS}
    env.update({k: None for k in os.environ if k.startswith("RERANKER_")})  # run.sh's RERANKER_CACHE_DIR
    if group == "baseline":
        env.update({"HOME": str(home), "TMPDIR": str(home / "tmp")})
    else:
        env["RERANKER_CACHE_DIR"] = str(home / "cache")
    env.update(extra)
    return env


def timed_start(clock: h.Clock, config: str, cold: bool, reference: list, est_s: float) -> list:
    """One start of `config` to /ready (timeline included), its scores against the reference,
    then stop. Returns the scores."""
    if clock.left() < est_s:
        h.emit({"kind": "skipped", "step": "startup", "config": config, "start": "cold" if cold else "warm",
                "reason": f"device-call budget: {clock.left():.0f} s left, step needs ~{est_s:.0f} s"})
        return []
    flags, _ = CONFIGS[config]
    h.stop_launcher()
    try:
        line = h.start_launcher(config, flags, budget=min(est_s * 2.5, 300),
                                env=startup_env(config, fresh=cold), cold=cold)
    except RuntimeError as exc:
        h.emit({"kind": "error", "step": "startup", "config": config, "error": str(exc)[:3000]})
        h.stop_launcher()
        return []
    line["kind"] = "startup"
    scores = h.fixed_probe()
    if reference and scores:
        line["scores_vs_first"] = h.drift(reference, scores)
    h.emit(line)
    return scores


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    configs = args.configs.split(",")
    reference: list = []
    for config, cold, est_s in PLAN:
        if config not in configs:
            continue
        scores = timed_start(clock, config, cold, reference, est_s)
        reference = reference or scores
    if h.launcher_running() is None:
        h.stop_launcher()
