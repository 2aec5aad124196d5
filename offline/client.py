"""The offline tools' side of the service: a pooled HTTP client that marks its work bulk, retries
overload and outages as the service asks, and (`launched`) a service of its own for one job.

Why bulk: the shim dispatches interactive work first and keeps bulk work under an engine token
budget while interactive traffic is around (docs/deployment.md, "Mixed traffic"), so a batch job
sent with `X-Priority: bulk` does not take a live search box's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

# Statuses the service answers when it is momentarily unable to score (rate limit, admission
# control, engine restarting, a proxy in front of it): worth waiting for and trying again.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass
class Answer:
    """One HTTP answer, or (status None) the transport failure that ended the attempts."""

    status: int | None
    body: bytes
    request_id: str
    error: str = ""           # transport failure: what happened
    attempts: int = 1


class ServiceClient:
    """Async client of one running service: at most `concurrency` requests in flight, each tried
    up to `max_attempts` times while the answer is a retryable status (waiting `Retry-After`,
    capped at `max_wait_s`) or a transport failure (exponential back-off). Scoring is
    idempotent, so a retry is always safe."""

    def __init__(self, base_url: str, *, concurrency: int = 8, api_key: str | None = None,
                 timeout_s: float = 600.0, max_attempts: int = 8, max_wait_s: float = 60.0,
                 priority: str = "bulk") -> None:
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max(1, max_attempts)
        self.max_wait_s = max_wait_s
        headers = {"content-type": "application/json", "x-priority": priority,
                   "user-agent": "reranker-offline"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        self.retries = 0  # attempts beyond the first, over the client's life (for the summary)

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self._http.aclose()

    async def post(self, path: str, content: bytes) -> Answer:
        backoff = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post(path, content=content)
            except httpx.TransportError as exc:  # refused, reset, timed out: nothing was answered
                if attempt >= self.max_attempts:
                    return Answer(None, b"", "", f"{type(exc).__name__}: {exc}".strip(": "), attempt)
                wait = backoff
            else:
                request_id = response.headers.get("x-request-id", "")
                if response.status_code not in RETRYABLE_STATUSES or attempt >= self.max_attempts:
                    return Answer(response.status_code, response.content, request_id, attempts=attempt)
                wait = _retry_after(response.headers.get("retry-after"), backoff)
            self.retries += 1
            # jitter, so that a crowd of requests refused together does not come back together
            await asyncio.sleep(min(wait, self.max_wait_s) * random.uniform(1.0, 1.25))
            backoff = min(backoff * 2, self.max_wait_s)


def _retry_after(value: str | None, fallback: float) -> float:
    """Seconds from a Retry-After header (delta-seconds; an HTTP date is rare enough here to
    fall back to the back-off)."""
    try:
        return max(0.0, float(value)) if value is not None else fallback
    except ValueError:
        return fallback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(launcher_args: list[str], log_path: Path, ready_timeout_s: float = 900.0,
             stop_timeout_s: float = 120.0) -> Iterator[str]:
    """A service of our own for one job: `python -m launcher` with the given flags (the same
    flags and RERANKER_* variables as `reranker`) on free loopback ports, yielded as its URL once
    /ready answers 200, stopped with SIGTERM (its normal drain) when the job ends."""
    port, vllm_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "launcher", "--host", "127.0.0.1", "--port", str(port),
           "--vllm-port", str(vllm_port), *launcher_args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # a session of its own: a Ctrl-C at the terminal reaches the job, which then stops the
        # service in order, instead of reaching vLLM and the shim directly
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    # a SIGTERM while we wait (the job's own runner giving up) must still stop the service:
    # as SystemExit it unwinds through the `finally` below, where the default action would not
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        try:
            _wait_ready(proc, url, log_path, ready_timeout_s)
        finally:
            signal.signal(signal.SIGTERM, previous)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class LaunchError(RuntimeError):
    pass


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"the launched service exited with code {proc.returncode} before it was "
                              f"ready; its log ({log_path}) ends:\n{_tail(log_path)}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise LaunchError(f"the launched service was not ready after {timeout_s:.0f} s; its log "
                      f"({log_path}) ends:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
