"""`python -m launcher` / `reranker`: serve Qwen3-Reranker.

Flags are the fields of server.settings.Settings in kebab case (`--max-model-len 4096`), each
also an environment variable (RERANKER_MAX_MODEL_LEN). Anything after `--` goes to vLLM as is.
Modes: all (vLLM + shim, supervised), vllm (engine only), shim (API only, --vllm-url).
`reranker batch ...` and `reranker eval ...` are the offline jobs (offline/cli.py).
With no --model, an offline demo model (real Qwen3 tokenizer, random weights) is built and used.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from launcher import preflight
from launcher.demo_model import build as build_demo_model
from launcher.prewarm import seed_cache
from launcher.supervise import Supervisor
from launcher.vllm_args import engine_commands, fill_gpu
from server.ops.logs import setup_logging
from server.settings import DEMO_MODEL_DIR, Settings

log = logging.getLogger("launcher")


def parse(argv: list[str]) -> Settings:
    own, passthrough = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    try:
        settings = Settings(_cli_parse_args=own, _cli_kebab_case=True, _cli_prog_name="reranker",
                            _cli_implicit_flags=True)
    except ValidationError as exc:
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            flag = "-".join(map(str, error["loc"])).replace("_", "-")
            # a check across several settings (a model validator) names no single flag
            print(f"reranker: --{flag}: {message}" if flag else f"reranker: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    if passthrough:
        settings = settings.model_copy(update={"extra_vllm_args": settings.extra_vllm_args + passthrough})
    return settings


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["batch"], ["eval"]):  # the offline jobs (offline/cli.py) share the command
        from offline.cli import main as offline_main

        offline_main(argv)
        return
    settings = parse(argv)
    setup_logging(settings.log_level)
    try:
        preflight.check_ports(settings)  # first: it is instant
        preflight.check_gpus(settings)
        if settings.mode != "shim" and not settings.model:
            log.info("no --model given: using the offline demo model", extra={"path": DEMO_MODEL_DIR})
            # its tokenizer's BPE ranks are cached in cache_dir too (launcher/demo_model.py)
            build_demo_model("tiny", Path(DEMO_MODEL_DIR), cache_dir=Path(settings.cache_dir or ".cache"))
        architectures = preflight.check_model(settings)
        if settings.mode != "shim":
            settings, choice = fill_gpu(settings)
            if choice is not None:
                log.info("engines per GPU chosen", extra={"engines_per_gpu": choice.engines_per_gpu,
                                                          "cuda_mps": choice.mps, "reason": choice.reason})
        commands = engine_commands(settings, architectures) if settings.mode != "shim" else []
    except preflight.ConfigError as exc:
        # One line on stderr, what happened and what to do; exit 2 = fix the configuration.
        print(f"reranker: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if settings.mode == "shim":
        os.environ.update(settings.to_env())
        os.execv(sys.executable, [sys.executable, "-m", "server"])
    if settings.cache_seed:  # what the image made at build time, for a fresh cache volume
        copied = seed_cache(settings.cache_seed, settings.cache_dir)
        if copied:
            log.info("cache seeded", extra={"seed": settings.cache_seed, "files": copied})
    supervisor = Supervisor(settings, commands, with_shim=settings.mode == "all")
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
