"""Start vLLM and the shim side by side, wait for vLLM, and keep both running.

Policy when vLLM dies on its own: restart it after a backoff (2 s, doubling, capped at 30 s);
after `vllm_max_restarts` restarts within `vllm_restart_window` seconds, give up: drain the shim
and exit non-zero so systemd / Kubernetes restarts the whole service. The shim stays up while
vLLM restarts and answers 503 + Retry-After, so clients retry instead of hanging.

Shutdown (SIGTERM/SIGINT): the shim drains first (readiness 503, the drain window with
`Connection: close`, in-flight requests finish; server/ops/drain.py), and only then is vLLM
stopped, with its own --shutdown-timeout, so nothing accepted is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil

from launcher.timeline import Timeline, tee
from launcher.vllm_args import check_cache_dir, vllm_environment
from server.ops.supervision import GiveUp, RestartBudget, forward, on_stop_signals

log = logging.getLogger("launcher")
_POLL_S = 0.5
_PROGRESS_EVERY_S = 10.0
_READY_POLL_S = 0.1     # while waiting for the shim's canary after vLLM turned healthy
_READY_WAIT_S = 300.0   # stop waiting for it (the summary is logged without "ready")


def _launched_at() -> float:
    """This process's start as a time.monotonic() value: phases count from the launch itself,
    interpreter and launcher imports included."""
    try:
        age = time.time() - psutil.Process().create_time()
    except (psutil.Error, OSError):
        age = 0.0
    return time.monotonic() - max(0.0, age)


class StartFailed(Exception):
    pass


class Supervisor:
    def __init__(self, settings, vllm_cmd: list[str], with_shim: bool) -> None:
        self.settings = settings
        self.vllm_cmd = vllm_cmd
        self.with_shim = with_shim
        self.vllm: subprocess.Popen | None = None
        self.shim: subprocess.Popen | None = None
        self.stopping = False
        self.shim_signalled = False
        self.restarts = RestartBudget.from_settings(settings)
        self.timeline: Timeline | None = None
        self._ready_deadline: float | None = None  # set while waiting for the shim's /ready
        self._tees: list[threading.Thread] = []

    # --- entry -----------------------------------------------------------------------------
    def run(self) -> int:
        on_stop_signals(self._on_signal)
        try:
            self._start_vllm()
            # The shim starts alongside, not after: while the model loads it already answers
            # liveness, and 503 + Retry-After instead of connection refused, and it is ready
            # the moment its canary passes, not a shim start-up later.
            if self.with_shim:
                self._start_shim()
            try:
                self._wait_healthy()
            except StartFailed as exc:  # a first start that fails is a configuration problem
                raise GiveUp(str(exc)) from exc
            while not self.stopping:
                self._watch()
                self._check_ready()
                time.sleep(_POLL_S if self._ready_deadline is None else _READY_POLL_S)
        except GiveUp as exc:
            log.error("giving up", extra={"reason": str(exc)})
            self._shutdown()
            return 1
        self._shutdown()
        return 0

    def _on_signal(self, signum, frame) -> None:
        log.info("shutdown requested", extra={"signal": signum})
        self.stopping = True
        # Readiness must fail at once, not after the next poll of the main loop: pass the signal
        # on now so the shim starts draining. A second signal reaches the shim too (stop now).
        if forward(signum, [self.shim]):
            self.shim_signalled = True

    # --- vLLM ------------------------------------------------------------------------------
    def _start_vllm(self) -> None:
        first = self.timeline is None
        self.timeline = Timeline(_launched_at() if first else time.monotonic(),
                                 since="launch" if first else "restart")
        self._ready_deadline = None
        log.info("starting vLLM", extra={"argv": self.vllm_cmd})
        env = vllm_environment(os.environ, settings=self.settings, argv=self.vllm_cmd)
        problem = check_cache_dir(env) if first else None
        if problem:
            log.warning("cache directory not writable: every vLLM start will be a cold one "
                        "(model-info inspection, torch.compile)", extra={"reason": problem})
        # vLLM's output goes through the launcher unchanged (stdout to stdout, stderr to
        # stderr); reading it on the way is how the start-up timeline sees vLLM's phases.
        self.vllm = subprocess.Popen(self.vllm_cmd, env=env, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.timeline.mark("vllm_started")
        self._tees = [threading.Thread(target=tee, args=(src, dst.fileno(), self.timeline.feed),
                                       name="vllm-output", daemon=True)
                      for src, dst in ((self.vllm.stdout, sys.stdout), (self.vllm.stderr, sys.stderr))]
        for thread in self._tees:
            thread.start()

    def _start_vllm_and_wait(self) -> None:
        self._start_vllm()
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        url = self._vllm_url() + "/health"
        started = time.monotonic()
        next_progress = started + _PROGRESS_EVERY_S
        while not self.stopping:
            if self.vllm.poll() is not None:
                raise StartFailed(f"vLLM exited with {self.vllm.returncode} while starting")
            if _healthy(url):
                log.info("vLLM ready", extra={"seconds": round(time.monotonic() - started, 1)})
                self.timeline.mark("health")
                if self.with_shim:  # ready = the shim's canary passed (see _check_ready)
                    self._ready_deadline = time.monotonic() + _READY_WAIT_S
                else:
                    self.timeline.finish()
                return
            now = time.monotonic()
            if now - started > self.settings.vllm_startup_timeout:
                _killpg(self.vllm)
                raise StartFailed(f"vLLM not healthy after {self.settings.vllm_startup_timeout:.0f} s")
            if now >= next_progress:
                log.info("waiting for vLLM", extra={"elapsed_s": round(now - started),
                                                    "budget_s": self.settings.vllm_startup_timeout})
                next_progress = now + _PROGRESS_EVERY_S
            time.sleep(_POLL_S)

    def _vllm_url(self) -> str:
        """The vLLM this launcher started (not a --vllm-url, which only the shim mode uses)."""
        return self.settings.model_copy(update={"vllm_url": ""}).upstream_url

    def _local_host(self, host: str | None = None) -> str:
        host = self.settings.vllm_host if host is None else host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def _check_ready(self) -> None:
        """After vLLM is healthy: the moment the shim's /ready turns 200 (its canary scored)
        ends the start-up timeline."""
        if self._ready_deadline is None:
            return
        url = f"http://{self._local_host(self.settings.host)}:{self.settings.port}/ready"
        if _healthy(url, timeout=1.0):
            self.timeline.mark("ready")
        elif time.monotonic() < self._ready_deadline:
            return
        self._ready_deadline = None
        self.timeline.finish()

    def _watch(self) -> None:
        if self.vllm.poll() is not None:
            log.error("vLLM exited", extra={"returncode": self.vllm.returncode})
            _killpg(self.vllm)  # its engine-core children must not outlive it
            self._restart_vllm()
        if self.shim is not None and self.shim.poll() is not None and not self.stopping:
            log.error("shim exited", extra={"returncode": self.shim.returncode})
            self.restarts.spend()
            self._start_shim()

    def _restart_vllm(self) -> None:
        while not self.stopping:
            delay = self.restarts.spend()  # raises GiveUp when the budget is spent
            log.info("restarting vLLM", extra={"backoff_s": delay, "restarts": len(self.restarts.times)})
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(_POLL_S)
            if self.stopping:
                return
            try:
                self._start_vllm_and_wait()
                return
            except StartFailed as exc:
                log.error("vLLM restart failed", extra={"reason": str(exc)})

    # --- shim ------------------------------------------------------------------------------
    def _start_shim(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        env["RERANKER_VLLM_URL"] = self._vllm_url()
        self.shim = subprocess.Popen([sys.executable, "-m", "server"], env=env, start_new_session=True)
        log.info("shim started", extra={"pid": self.shim.pid, "port": self.settings.port})

    # --- shutdown ----------------------------------------------------------------------------
    def _shutdown(self) -> None:
        s = self.settings
        if self.shim is not None:
            # the window, then in-flight requests get drain_timeout; 5 s for the accept queue
            # and the app's own shutdown
            _stop(self.shim, s.drain_window + s.drain_timeout + 5, "shim",
                  signalled=self.shim_signalled)
        if self.vllm is not None:
            _stop(self.vllm, s.vllm_shutdown_timeout + 15, "vLLM")
        for thread in self._tees:  # vLLM's last words, written before the launcher exits
            thread.join(timeout=2.0)


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen, timeout: float, name: str, signalled: bool = False) -> None:
    if proc.poll() is not None:
        return
    log.info(f"stopping {name}", extra={"pid": proc.pid, "timeout_s": timeout})
    if not signalled:  # a second SIGTERM would mean "stop now" to the shim, not "drain"
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning(f"{name} did not stop in time; killing", extra={"pid": proc.pid})
        _killpg(proc)
        proc.wait()
    _killpg(proc)


def _killpg(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group (children of a process that died or was killed)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
