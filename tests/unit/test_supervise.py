"""The launcher's restart policy: back off, then give up so systemd/Kubernetes take over."""

import sys

import pytest

from launcher.supervise import Supervisor
from server.ops.supervision import GiveUp
from server.settings import Settings


def supervisor(**settings) -> Supervisor:
    return Supervisor(Settings(**settings), vllm_cmd=["true"], with_shim=False)


def test_backoff_doubles_and_is_capped():
    sup = supervisor(vllm_max_restarts=10, vllm_restart_backoff=2.0)
    assert [sup.restarts.spend() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_gives_up_after_max_restarts_within_the_window():
    sup = supervisor(vllm_max_restarts=3, vllm_restart_window=600)
    for _ in range(3):
        sup.restarts.spend()
    with pytest.raises(GiveUp):
        sup.restarts.spend()


def test_restarts_outside_the_window_are_forgotten(monkeypatch):
    import server.ops.supervision as supervise

    now = [1000.0]
    monkeypatch.setattr(supervise.time, "monotonic", lambda: now[0])
    sup = supervisor(vllm_max_restarts=2, vllm_restart_window=60)
    sup.restarts.spend()
    sup.restarts.spend()
    now[0] += 61
    assert sup.restarts.spend() == 2.0  # a fresh budget, and the backoff starts again


def test_an_engine_that_cannot_start_makes_the_launcher_exit_non_zero():
    """A first start that fails is a configuration problem: exit 1 at once, no restart loop."""
    import signal

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    sup = Supervisor(Settings(vllm_startup_timeout=30), [sys.executable, "-c", "raise SystemExit(3)"],
                     with_shim=False)
    try:
        assert sup.run() == 1
    finally:  # run() installs the launcher's own handlers
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_sigterm_reaches_the_shim_at_once_and_only_once():
    """Readiness must turn 503 right away: the shim gets the signal from the handler itself, and
    shutdown does not send a second SIGTERM (which the shim reads as "stop now, skip the drain")."""
    import signal
    import subprocess

    from launcher import supervise

    # a stand-in shim that counts SIGTERMs and exits on the second: a real shim would force-exit
    counter = ("import signal,sys,time\nn=[0]\n"
               "def h(*a):\n n[0]+=1\n print(n[0],flush=True)\n"
               "signal.signal(signal.SIGTERM,h)\nprint('up',flush=True)\n"
               "t=time.time()\nwhile time.time()-t<3: time.sleep(0.05)\n")
    sup = supervisor()
    sup.shim = subprocess.Popen([sys.executable, "-c", counter], stdout=subprocess.PIPE, text=True)
    assert sup.shim.stdout.readline().strip() == "up"
    sup._on_signal(signal.SIGTERM, None)
    assert sup.shim.stdout.readline().strip() == "1"  # delivered before any main-loop poll
    supervise._stop(sup.shim, 10, "shim", signalled=sup.shim_signalled)
    assert sup.shim.stdout.read().strip() == ""  # no second SIGTERM
