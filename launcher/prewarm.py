"""Fill a cache seed with what a vLLM start can reuse and that needs no GPU: vLLM's model-info
inspection of the Qwen3 model classes.

    python -m launcher.prewarm --cache-dir /opt/reranker/cache-seed

vLLM inspects a model class in a subprocess that imports vLLM again (10-30 s of every start on an
empty cache) and keeps the result in `$VLLM_CACHE_ROOT/modelinfos/`, keyed by a hash of the model's
source file, so a result made at image build time holds for every start of that image. The image
runs this at build time; at start the launcher copies what the pod's cache lacks from the seed
(`cache_seed`, `seed_cache` below), so a new pod on a fresh volume skips the inspection too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from launcher.vllm_args import vllm_cache_root

# vLLM serves a Qwen3 reranker (original or converted) through this registered class
ARCHITECTURES = ("Qwen3ForCausalLM",)
# what a seed holds, relative to the cache directory: small files vLLM validates itself
SEEDED = ("vllm/modelinfos",)


def prewarm(cache_dir: str) -> list[Path]:
    """Run vLLM's own inspection with VLLM_CACHE_ROOT under `cache_dir`; the files it wrote."""
    root = vllm_cache_root(cache_dir)
    code = ("from vllm.model_executor.models.registry import ModelRegistry\n"
            f"for arch in {ARCHITECTURES!r}:\n"
            "    assert ModelRegistry._try_inspect_model_cls(arch) is not None, arch\n")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "VLLM_CACHE_ROOT": root})
    return sorted((Path(root) / "modelinfos").glob("*.json"))


def seed_cache(seed_dir: str, cache_dir: str) -> list[str]:
    """Copy the seed's files that `cache_dir` lacks (never overwriting: what a start wrote is at
    least as fresh); the relative paths copied. A missing or unreadable seed copies nothing."""
    copied: list[str] = []
    if not seed_dir or not cache_dir:
        return copied
    for part in SEEDED:
        src = Path(seed_dir) / part
        if not src.is_dir():
            continue
        for path in sorted(src.glob("*")):
            target = Path(cache_dir) / part / path.name
            if path.is_file() and not target.exists():
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
                    copied.append(f"{part}/{path.name}")
                except OSError:
                    continue
    return copied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", required=True, help="the seed directory to fill")
    args = parser.parse_args(argv)
    for path in prewarm(args.cache_dir):
        print(path)


if __name__ == "__main__":
    main()
