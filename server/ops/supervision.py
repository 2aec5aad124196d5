"""What both supervisors share: the launcher (vLLM + shim, launcher/supervise.py) and the shim's
pre-fork parent (its workers, server/__main__.py) restart children by one policy and pass
signals on the same way.

Policy: a child that dies is restarted after a backoff (vllm_restart_backoff, doubling, capped at
30 s); more than vllm_max_restarts restarts within vllm_restart_window seconds means something is
wrong that restarting will not fix: give up, exit non-zero, and let systemd / Kubernetes (which
also see the crash loop) take over.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable

BACKOFF_CAP_S = 30.0


class GiveUp(Exception):
    pass


class RestartBudget:
    def __init__(self, max_restarts: int, window: float, backoff: float) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.backoff = backoff
        self.times: list[float] = []

    @classmethod
    def from_settings(cls, settings) -> RestartBudget:
        return cls(settings.vllm_max_restarts, settings.vllm_restart_window,
                   settings.vllm_restart_backoff)

    def spend(self) -> float:
        """Count one restart; the backoff to wait before it. Raises GiveUp when spent."""
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < self.window] + [now]
        if len(self.times) > self.max_restarts:
            raise GiveUp(f"{len(self.times) - 1} restarts within {self.window:.0f} s")
        return min(BACKOFF_CAP_S, self.backoff * 2 ** (len(self.times) - 1))


def forward(signum: int, children: Iterable[subprocess.Popen | None]) -> int:
    """Pass a signal on to every live child; how many got it."""
    sent = 0
    for child in children:
        if child is not None and child.poll() is None:
            child.send_signal(signum)
            sent += 1
    return sent


def on_stop_signals(handler) -> None:
    """SIGTERM (Kubernetes, systemd) and SIGINT (a terminal) both mean: drain, then stop."""
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
