"""Start vLLM and the shim side by side, wait for vLLM, and keep both running.

Policy when vLLM dies on its own: restart it after a backoff (2 s, doubling, capped at 30 s);
after `vllm_max_restarts` restarts within `vllm_restart_window` seconds, give up: drain the shim
and exit non-zero so systemd / Kubernetes restarts the whole service. The shim stays up while
vLLM restarts and answers 503 + Retry-After, so clients retry instead of hanging.

Shutdown (SIGTERM/SIGINT): the shim drains first (readiness 503, the drain window with
`Connection: close`, in-flight requests finish; server/ops/drain.py), and only then is vLLM
stopped, with its own --shutdown-timeout, so nothing accepted is lost.

Several engines (`engines` > 1 in multi_gpu_mode `engines`, issue 16): one vLLM per engine, each
on its own port (vllm_port + i) and GPUs (CUDA_VISIBLE_DEVICES; launcher/vllm_args.py
engine_commands), each watched and restarted on its own by the same policy with a restart budget
of its own, while the shim sends its traffic to the others. The main loop never blocks on one
engine: each is a small state machine (starting, running, waiting out a backoff) polled in turn.
One engine spending its budget gives up the whole launcher as with one engine (exit 1: a GPU that
keeps failing needs Kubernetes or a person, not a pod quietly serving at reduced capacity). On
shutdown every engine is stopped at once, after the shim.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from launcher import gpu as gpu_facts
from launcher.timeline import Timeline, tee
from launcher.vllm_args import check_cache_dir, gpu_visible, vllm_environment
from server.ops.supervision import GiveUp, RestartBudget, forward, on_stop_signals

log = logging.getLogger("launcher")
_POLL_S = 0.5
_PROGRESS_EVERY_S = 10.0
# uvicorn's access-log line for a request vLLM answered with 200 ("GET /health HTTP/1.1" 200 OK)
_ANSWERED = re.compile(r'"(?:GET|POST) /\S* HTTP/[\d.]+" 200')
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


class Engine:
    """One vLLM process of this launcher: its argv and environment, the process, its start-up
    timeline and its own restart budget. States: held (a cold compile cache: waiting for engine
    0), starting (spawned, waiting for /health), running, backoff (dead, restarting at
    `restart_at`)."""

    def __init__(self, index: int, cmd: list[str], env: dict[str, str], settings, url: str,
                 several: bool) -> None:
        self.index = index
        self.cmd = cmd
        self.env = env
        self.url = url
        self.settings = settings
        self.labels = {"engine": str(index)} if several else {}
        self.proc: subprocess.Popen | None = None
        self.timeline: Timeline | None = None
        self.restarts = RestartBudget.from_settings(settings)
        self.state = "new"
        self.first = True                 # the first start: a failure is a configuration problem
        self.started_at = 0.0
        self.next_progress = 0.0
        self.restart_at = 0.0
        self.ready_deadline: float | None = None  # set while waiting for the shim's canary
        self.tees: list[threading.Thread] = []
        self.answered = False             # this vLLM answered a request with 200 (its access log)

    def _feed(self, line: str) -> None:
        self.timeline.feed(line)
        if not self.answered and _ANSWERED.search(line):
            self.answered = True

    def spawn(self, first: bool) -> None:
        self.timeline = Timeline(_launched_at() if first else time.monotonic(),
                                 since="launch" if first else "restart",
                                 engine=self.labels.get("engine"))
        self.ready_deadline = None
        self.answered = False
        log.info("starting vLLM", extra={"argv": self.cmd, **self.labels,
                                         **({"env": self.env} if self.env else {})})
        env = {**vllm_environment(os.environ, settings=self.settings, argv=self.cmd), **self.env}
        problem = check_cache_dir(env) if first and self.index == 0 else None
        if problem:
            log.warning("cache directory not writable: every vLLM start will be a cold one "
                        "(model-info inspection, torch.compile)", extra={"reason": problem})
        # vLLM's output goes through the launcher unchanged (stdout to stdout, stderr to
        # stderr); reading it on the way is how the start-up timeline sees vLLM's phases.
        self.proc = subprocess.Popen(self.cmd, env=env, start_new_session=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.timeline.mark("vllm_started")
        self.tees = [threading.Thread(target=tee, args=(src, dst.fileno(), self._feed),
                                      name="vllm-output", daemon=True)
                     for src, dst in ((self.proc.stdout, sys.stdout), (self.proc.stderr, sys.stderr))]
        for thread in self.tees:
            thread.start()
        self.state = "starting"
        self.started_at = time.monotonic()
        self.next_progress = self.started_at + _PROGRESS_EVERY_S

    def schedule_restart(self) -> None:
        """Back off, then start again; GiveUp when this engine's budget is spent."""
        delay = self.restarts.spend()
        log.info("restarting vLLM", extra={"backoff_s": delay, "restarts": len(self.restarts.times),
                                           **self.labels})
        self.state = "backoff"
        self.restart_at = time.monotonic() + delay


class Supervisor:
    def __init__(self, settings, vllm_cmd, with_shim: bool) -> None:
        """`vllm_cmd`: one vLLM argv, or (argv, environment overrides) per engine
        (launcher/vllm_args.py engine_commands)."""
        self.settings = settings
        commands = [(vllm_cmd, {})] if vllm_cmd and isinstance(vllm_cmd[0], str) else list(vllm_cmd)
        host = self._local_host()
        ports = settings.vllm_ports if len(settings.vllm_ports) == len(commands) else [settings.vllm_port]
        self.engines = [Engine(i, cmd, env, settings, f"http://{host}:{port}", len(commands) > 1)
                        for i, ((cmd, env), port) in enumerate(zip(commands, ports))]
        self.with_shim = with_shim
        self.shim: subprocess.Popen | None = None
        self.stopping = False
        self.shim_signalled = False
        self.restarts = RestartBudget.from_settings(settings)  # the shim's
        self._shim_ready_url = f"http://{self._local_host(settings.host)}:{settings.port}/ready"

    @property
    def vllm(self) -> subprocess.Popen | None:
        """The (first) engine's process."""
        return self.engines[0].proc

    # --- entry -----------------------------------------------------------------------------
    def run(self) -> int:
        on_stop_signals(self._on_signal)
        try:
            self._start_mps()
            hold = self._cold_compile_cache()
            for engine in self.engines:
                if hold and engine.index > 0:
                    engine.state = "held"  # until engine 0 has filled the compile cache
                else:
                    engine.spawn(first=True)
            if hold:
                log.info("compile cache empty: the other engines start once engine 0 is up",
                         extra={"engines": len(self.engines)})
            # The shim starts alongside, not after: while the model loads it already answers
            # liveness, and 503 + Retry-After instead of connection refused, and it is ready
            # the moment its canary passes, not a shim start-up later.
            if self.with_shim:
                self._start_shim()
            while not self.stopping:
                for engine in self.engines:
                    self._tick(engine)
                self._watch_shim()
                self._check_ready()
                waiting = any(e.ready_deadline is not None for e in self.engines)
                time.sleep(_READY_POLL_S if waiting else _POLL_S)
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
    def _tick(self, engine: Engine) -> None:
        if engine.state == "starting":
            try:
                self._check_starting(engine)
            except StartFailed as exc:
                # A first start that fails is a configuration problem, unless this vLLM already
                # answered requests: the shim polls it too and may have verified it and sent it
                # work before this loop (every 0.5 s) saw it healthy; dying then is a crash like
                # any other, restarted (CI caught a SIGKILL landing in that gap).
                if engine.first and not engine.answered:
                    raise GiveUp(str(exc)) from exc
                log.error("vLLM restart failed", extra={"reason": str(exc), **engine.labels})
                engine.schedule_restart()
        elif engine.state == "running":
            if engine.proc.poll() is not None:
                log.error("vLLM exited", extra={"returncode": engine.proc.returncode, **engine.labels})
                _killpg(engine.proc)  # its engine-core children must not outlive it
                engine.schedule_restart()
        elif engine.state == "backoff" and time.monotonic() >= engine.restart_at:
            engine.spawn(first=False)
        elif engine.state == "held" and self._may_start(engine):
            engine.spawn(first=True)

    def _may_start(self, engine: Engine) -> bool:
        """A held engine starts once engine 0 is up (its compile cache is filled). Engines
        sharing a GPU need no order: each has a fixed KV cache (launcher/gpu.py), so none sizes
        itself from memory another is still taking."""
        return self.engines[0].state in ("running", "backoff")

    # --- MPS ---------------------------------------------------------------------------------
    def _mps_wanted(self) -> bool:
        return self.settings.cuda_mps and gpu_visible()

    def _start_mps(self) -> None:
        """The engines' MPS control daemon (cuda_mps), started before any engine: a CUDA
        process joins MPS only if the daemon runs when it creates its context."""
        if not self._mps_wanted():
            return
        problem = gpu_facts.start_mps(gpu_facts.mps_env(self.settings.cache_dir))
        if problem:
            raise GiveUp(f"cuda_mps: {problem}")
        log.info("MPS control daemon started", extra=gpu_facts.mps_env(self.settings.cache_dir))

    def _cold_compile_cache(self) -> bool:
        """Several engines and nothing compiled yet: N processes compiling the same graph into
        the same cache directory at once (they are all rank 0 of the same configuration) race on
        its files, so engine 0 compiles alone and the others start from its cache. A cold start
        then takes about two starts; every later start, all engines at once."""
        if len(self.engines) < 2 or self.settings.enforce_eager:
            return False
        env = vllm_environment(os.environ, settings=self.settings)
        root = Path(env.get("VLLM_CACHE_ROOT") or Path.home() / ".cache" / "vllm")
        return not (root / "torch_compile_cache").exists()

    def _check_starting(self, engine: Engine) -> None:
        if engine.proc.poll() is not None:
            raise StartFailed(f"vLLM exited with {engine.proc.returncode} while starting")
        if _healthy(engine.url + "/health"):
            log.info("vLLM ready", extra={"seconds": round(time.monotonic() - engine.started_at, 1),
                                          **engine.labels})
            engine.timeline.mark("health")
            engine.state = "running"
            engine.first = False
            if self.with_shim:  # ready = the shim's canary passed (see _check_ready)
                engine.ready_deadline = time.monotonic() + _READY_WAIT_S
            else:
                engine.timeline.finish()
            return
        now = time.monotonic()
        if now - engine.started_at > self.settings.vllm_startup_timeout:
            _killpg(engine.proc)
            raise StartFailed(f"vLLM not healthy after {self.settings.vllm_startup_timeout:.0f} s")
        if now >= engine.next_progress:
            log.info("waiting for vLLM", extra={"elapsed_s": round(now - engine.started_at),
                                                "budget_s": self.settings.vllm_startup_timeout,
                                                **engine.labels})
            engine.next_progress = now + _PROGRESS_EVERY_S

    def _local_host(self, host: str | None = None) -> str:
        host = self.settings.vllm_host if host is None else host
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def _check_ready(self) -> None:
        """After an engine is healthy: the moment the shim says it passed its canary (one engine:
        /ready turns 200; several: /ready lists it verified) ends its start-up timeline."""
        pending = [e for e in self.engines if e.ready_deadline is not None]
        if not pending:
            return
        verified = self._verified_engines()
        for engine in pending:
            if str(engine.index) in verified:
                engine.timeline.mark("ready")
            elif time.monotonic() < engine.ready_deadline:
                continue
            engine.ready_deadline = None
            engine.timeline.finish()

    def _verified_engines(self) -> set[str]:
        try:
            r = httpx.get(self._shim_ready_url, timeout=1.0)
        except httpx.HTTPError:
            return set()
        if len(self.engines) == 1:
            return {"0"} if r.status_code == 200 else set()
        try:
            return {e["engine"] for e in r.json().get("engines", []) if e.get("up") and e.get("verified")}
        except (ValueError, AttributeError, KeyError, TypeError):
            return set()

    def _watch_shim(self) -> None:
        if self.shim is not None and self.shim.poll() is not None and not self.stopping:
            log.error("shim exited", extra={"returncode": self.shim.returncode})
            self.restarts.spend()
            self._start_shim()

    # --- shim ------------------------------------------------------------------------------
    def _start_shim(self) -> None:
        env = {**os.environ, **self.settings.to_env()}
        # every engine's URL; the shim spreads work over them (server/scoring/engines.py)
        env["RERANKER_VLLM_URL"] = ",".join(e.url for e in self.engines)
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
        # every engine at once (each drains its own calls within --shutdown-timeout)
        _stop_all([e.proc for e in self.engines if e.proc is not None], s.vllm_shutdown_timeout + 15,
                  "vLLM")
        for engine in self.engines:  # vLLM's last words, written before the launcher exits
            for thread in engine.tees:
                thread.join(timeout=2.0)
        if self._mps_wanted():  # after every engine: stopping it under a client kills the client
            gpu_facts.stop_mps(gpu_facts.mps_env(self.settings.cache_dir))


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen, timeout: float, name: str, signalled: bool = False) -> None:
    _stop_all([proc], timeout, name, signalled)


def _stop_all(procs: list[subprocess.Popen], timeout: float, name: str, signalled: bool = False) -> None:
    """SIGTERM to each live process at once, then wait for all of them within `timeout`; what
    is left then is killed. Every process group is killed at the end (their children)."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        log.info(f"stopping {name}", extra={"pid": proc.pid, "timeout_s": timeout})
        if not signalled:  # a second SIGTERM would mean "stop now" to the shim, not "drain"
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning(f"{name} did not stop in time; killing", extra={"pid": proc.pid})
            _killpg(proc)
            proc.wait()
    for proc in procs:
        _killpg(proc)


def _killpg(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group (children of a process that died or was killed)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
