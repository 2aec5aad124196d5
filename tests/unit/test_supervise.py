"""The launcher's restart policy: back off, then give up so systemd/Kubernetes take over."""

import sys

import pytest

from launcher.supervise import GiveUp, Supervisor
from server.settings import Settings


def supervisor(**settings) -> Supervisor:
    return Supervisor(Settings(**settings), vllm_cmd=["true"], with_shim=False)


def test_backoff_doubles_and_is_capped():
    sup = supervisor(vllm_max_restarts=10, vllm_restart_backoff=2.0)
    assert [sup._count_restart() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_gives_up_after_max_restarts_within_the_window():
    sup = supervisor(vllm_max_restarts=3, vllm_restart_window=600)
    for _ in range(3):
        sup._count_restart()
    with pytest.raises(GiveUp):
        sup._count_restart()


def test_restarts_outside_the_window_are_forgotten(monkeypatch):
    import launcher.supervise as supervise

    now = [1000.0]
    monkeypatch.setattr(supervise.time, "monotonic", lambda: now[0])
    sup = supervisor(vllm_max_restarts=2, vllm_restart_window=60)
    sup._count_restart()
    sup._count_restart()
    now[0] += 61
    assert sup._count_restart() == 2.0  # a fresh budget, and the backoff starts again


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
