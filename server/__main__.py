"""Run the shim: `python -m server` (settings from RERANKER_* variables).

SIGTERM/SIGINT start a drain: readiness turns 503 at once, requests keep being served for
`drain_delay` seconds (load balancers stop sending), then uvicorn stops accepting and waits up
to `drain_timeout` for in-flight requests before exiting.

With `workers` > 1 this process becomes a small pre-fork supervisor: it binds the socket once,
starts that many worker interpreters sharing it, forwards signals and restarts a worker that
dies, by the same restart policy as the launcher (server/ops/supervision.py): backoff, and exit
non-zero when the budget is spent. Metrics are merged across workers with prometheus-client's
multiprocess mode; admission limits are split evenly between workers (Settings.per_worker), and
so are rate limits unless a shared store holds them (server/ops/ratelimit.py).
"""

from __future__ import annotations

import asyncio
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

from server.ops.listener import queued_connections, refuse_new_connections
from server.ops.logs import setup_logging
from server.ops.supervision import GiveUp, RestartBudget, forward, on_stop_signals
from server.settings import Settings

log = logging.getLogger("server")
LISTEN_FD_ENV = "RERANKER_LISTEN_FD"
_SETTLE_S = 0.5
_ACCEPT_QUEUE_WAIT_S = 2.0
GC_GEN0_THRESHOLD = 20_000


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app, drain_delay: float) -> None:
        super().__init__(config)
        self.fastapi_app = app
        self.drain_delay = drain_delay
        self._drain_started = False

    def handle_exit(self, sig, frame) -> None:
        if self._drain_started:  # a second signal: stop now
            self.force_exit = True
            return super().handle_exit(sig, frame)
        self._drain_started = True
        self.fastapi_app.state.draining = True
        log.info("drain started", extra={"signal": int(sig), "delay_s": self.drain_delay})
        asyncio.get_event_loop().call_later(self.drain_delay, self._stop_accepting)

    def _stop_accepting(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        # Closing the listener resets connections still in its accept queue: refuse new ones
        # first and accept what is queued (server/ops/listener.py). uvicorn then closes every
        # connection that has no request in progress; one accepted a moment ago may carry a
        # request not parsed yet, so stop accepting, let such requests arrive, then shut down.
        await self._empty_accept_queues()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await asyncio.sleep(_SETTLE_S)
        await super().shutdown(sockets)

    async def _empty_accept_queues(self) -> None:
        listeners = [sock for server in self.servers for sock in server.sockets]
        if not all(refuse_new_connections(sock) for sock in listeners):
            return
        deadline = time.monotonic() + _ACCEPT_QUEUE_WAIT_S
        while any(queued_connections(s) for s in listeners) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the server's accept loop is still running


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    from server.app import create_app  # after PROMETHEUS_MULTIPROC_DIR is set, in workers

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            timeout_graceful_shutdown=int(settings.drain_timeout),
                            timeout_keep_alive=30, access_log=False,
                            # client addresses are resolved by our trusted_proxies, not uvicorn
                            proxy_headers=False)
    _quiet_gc()
    DrainingServer(config, app, settings.drain_delay).run(sockets=[sock] if sock else None)


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
