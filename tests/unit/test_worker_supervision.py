"""The shim's pre-fork parent restarts dead workers by the launcher's policy (backoff, budget),
and exits non-zero when the budget is spent. No engine needed: workers start without vLLM."""

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from tests.conftest import MODEL_DIR, ROOT, engine_env, ensure_model, eventually, free_port


def workers_of(parent: int) -> list[int]:
    """Live worker pids (a killed one stays a zombie until the parent reaps it)."""
    pids = []
    for child in psutil.Process(parent).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(pids)


def test_dead_workers_are_restarted_then_the_supervisor_gives_up():
    ensure_model()
    port = free_port()
    env = engine_env(RERANKER_MODE="shim", RERANKER_MODEL=str(MODEL_DIR), RERANKER_PORT=str(port),
                     RERANKER_HOST="127.0.0.1", RERANKER_VLLM_URL="http://127.0.0.1:9",
                     RERANKER_WORKERS="2", RERANKER_VLLM_MAX_RESTARTS="2",
                     RERANKER_VLLM_RESTART_BACKOFF="0.2", RERANKER_DRAIN_TIMEOUT="2")
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def live() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert eventually(lambda: live() and len(workers_of(proc.pid)) == 2, timeout=90)
        first = workers_of(proc.pid)
        os.kill(first[0], signal.SIGKILL)
        assert eventually(lambda: len(set(workers_of(proc.pid)) - set(first)) == 1, timeout=60)
        assert eventually(live, timeout=30) and proc.poll() is None  # one restart: still serving
        for _ in range(2):  # two more deaths inside the window: over the budget of 2
            os.kill(workers_of(proc.pid)[0], signal.SIGKILL)
            time.sleep(0.5)
        assert proc.wait(60) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
