"""Run the shim: `python -m server` (settings from RERANKER_* variables).

SIGTERM/SIGINT start a drain (server/ops/drain.py): readiness turns 503 at once; for
`drain_window` seconds everything is served and every response carries `Connection: close`, so
pooled keep-alive clients move off without racing a close; then new connections are refused,
connections quiet for the whole window are closed, and in-flight requests get `drain_timeout`.

With `workers` > 1 this process becomes a small pre-fork supervisor: it binds the socket once,
starts that many worker interpreters sharing it, forwards signals and restarts a worker that
dies, by the same restart policy as the launcher (server/ops/supervision.py): backoff, and exit
non-zero when the budget is spent. Metrics are merged across workers with prometheus-client's
multiprocess mode; admission limits are split evenly between workers (Settings.per_worker), and
so are rate limits unless a shared store holds them (server/ops/ratelimit.py).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import uvicorn

from server.ops.drain import DrainingServer
from server.ops.logs import setup_logging
from server.ops.supervision import GiveUp, RestartBudget, forward, on_stop_signals
from server.settings import Settings

log = logging.getLogger("server")
LISTEN_FD_ENV = "RERANKER_LISTEN_FD"
GC_GEN0_THRESHOLD = 20_000


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    from server.app import create_app  # after PROMETHEUS_MULTIPROC_DIR is set, in workers

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            timeout_graceful_shutdown=int(settings.drain_timeout),
                            # above every proxy's idle expiry in front (settings.keep_alive_timeout)
                            timeout_keep_alive=settings.keep_alive_timeout, access_log=False,
                            # client addresses are resolved by our trusted_proxies, not uvicorn
                            proxy_headers=False)
    _quiet_gc()
    DrainingServer(config, app, settings.drain_window).run(sockets=[sock] if sock else None)


def _quiet_gc() -> None:
    # Everything built so far (tokenizer, app, models) lives for the whole process: freezing it
    # keeps the cyclic collector from rescanning it, and a larger first generation makes young
    # collections rarer. Measured on the seed workload: see benchmarks/RESULTS.md (shim overhead).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def supervise_workers(settings: Settings) -> int:
    sock = socket.create_server((settings.host, settings.port), reuse_port=False, backlog=2048)
    sock.set_inheritable(True)
    env = {**os.environ, LISTEN_FD_ENV: str(sock.fileno()),
           "PROMETHEUS_MULTIPROC_DIR": os.environ.get("PROMETHEUS_MULTIPROC_DIR")
           or tempfile.mkdtemp(prefix="reranker-metrics-")}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "server"], env=env, pass_fds=[sock.fileno()])

    workers = [start() for _ in range(settings.shim_workers)]
    budget = RestartBudget.from_settings(settings)
    restart_at: dict[int, float] = {}  # worker slot -> when its replacement may start
    stopping = False
    code = 0

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        forward(signum, workers)

    on_stop_signals(on_signal)
    while not stopping:
        now = time.monotonic()
        for i, w in enumerate(workers):
            if w.poll() is None or stopping:
                continue
            if i not in restart_at:
                log.error("worker exited", extra={"pid": w.pid, "returncode": w.returncode})
                _mark_dead(w.pid, env["PROMETHEUS_MULTIPROC_DIR"])
                try:
                    restart_at[i] = now + budget.spend()
                except GiveUp as exc:
                    log.error("giving up on workers", extra={"reason": str(exc)})
                    stopping, code = True, 1
                    forward(signal.SIGTERM, workers)
                    break
            elif now >= restart_at[i]:
                del restart_at[i]
                workers[i] = start()
        time.sleep(0.5)
    for w in workers:
        w.wait()
    return code


def _mark_dead(pid: int, metrics_dir: str) -> None:
    # The directory is set for the workers only: name it (without it prometheus_client raised
    # here, and a worker's death took the whole supervisor down).
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)


def _settings() -> Settings:
    """Settings from RERANKER_* variables; a bad value is one line on stderr and exit 2."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "RERANKER_" + "_".join(map(str, error["loc"])).upper()
            print(f"reranker shim: {name}: {error['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    settings = _settings()
    setup_logging(settings.log_level)
    if LISTEN_FD_ENV in os.environ:  # a worker of the pre-fork supervisor
        sock = socket.socket(fileno=int(os.environ[LISTEN_FD_ENV]))
        serve(settings, sock)
    elif settings.shim_workers > 1:
        sys.exit(supervise_workers(settings))
    else:
        serve(settings)


if __name__ == "__main__":
    main()
