"""Run a vLLM entry module with the launcher's in-process adjustments:

    python -m launcher.vllm_entry vllm.entrypoints.openai.api_server --model ...

Used only when an adjustment is asked for (`aot_compile`); otherwise the launcher runs vLLM's
module directly. The module name stays on the command line, so tools that find vLLM's API server
by its command line still do.

Adjustment: ahead-of-time compilation under batch-invariant kernels. vLLM 0.26 turns
VLLM_USE_AOT_COMPILE off when VLLM_BATCH_INVARIANT=1 (`override_envs_for_invariance` in
model_executor/layers/batch_invariant.py), so every warm start traces the model with Dynamo again
although the compiled graph is cached; later vLLM releases dropped that override once their
batch-invariance tests passed with it on. With RERANKER_KEEP_AOT_COMPILE=1 the value of
VLLM_USE_AOT_COMPILE given to this process is put back right after vLLM's override. The patch
lives in this process: an engine core forked from it (the launcher's default on GPUs) inherits
it; a spawned one imports vLLM afresh and keeps vLLM's override (a slower start, same scores)."""

from __future__ import annotations

import importlib
import os
import runpy
import sys
from typing import Any


def keep_aot_compile() -> bool:
    """Put VLLM_USE_AOT_COMPILE back after vLLM's batch-invariance override. False when there is
    nothing to keep or vLLM has no such override (other versions)."""
    wanted = os.environ.get("VLLM_USE_AOT_COMPILE")
    if os.environ.get("RERANKER_KEEP_AOT_COMPILE") != "1" or wanted is None:
        return False
    try:
        batch_invariant: Any = importlib.import_module("vllm.model_executor.layers.batch_invariant")
    except ImportError:
        return False
    override = getattr(batch_invariant, "override_envs_for_invariance", None)
    if override is None:
        return False

    def override_keeping_aot() -> None:
        override()
        os.environ["VLLM_USE_AOT_COMPILE"] = wanted

    batch_invariant.override_envs_for_invariance = override_keeping_aot
    return True


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m launcher.vllm_entry MODULE [ARGS...]")
    module, *args = argv
    keep_aot_compile()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
