"""What bytecode caches are worth at start-up: seconds to import vLLM's API server (what each vLLM
interpreter does first; vLLM starts two) with the installed .pyc files, and with none usable, as in
a container whose site-packages has no .pyc and whose non-root user cannot write any.

    python -m benchmarks.import_time [--module vllm.entrypoints.openai.api_server] [--runs 2]

Prints one JSON line per run and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def timed_import(module: str, bytecode: bool) -> float:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="no-pyc-") as empty:
        if not bytecode:  # look for .pyc in an empty tree and write none: every module compiles
            env.update(PYTHONPYCACHEPREFIX=empty, PYTHONDONTWRITEBYTECODE="1")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True)
        return time.perf_counter() - started


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module", default="vllm.entrypoints.openai.api_server")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args(argv)
    timed_import(args.module, True)  # warm the page cache and write any missing .pyc
    figures = {True: [], False: []}
    for run in range(args.runs):
        for bytecode in (True, False):  # alternate, so drift on a shared machine hits both
            seconds = timed_import(args.module, bytecode)
            figures[bytecode].append(seconds)
            print(json.dumps({"kind": "import_time", "module": args.module, "run": run,
                              "bytecode_cache": bytecode, "seconds": round(seconds, 2)}), flush=True)
    with_pyc, without = (min(figures[b]) for b in (True, False))
    print(json.dumps({"kind": "import_time_summary", "module": args.module, "runs": args.runs,
                      "best_with_pyc_s": round(with_pyc, 2), "best_without_pyc_s": round(without, 2),
                      "cost_without_pyc_s": round(without - with_pyc, 2), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
