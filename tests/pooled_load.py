"""Load shaped like real callers for drain tests: N threads, each with ONE reused `httpx.Client`
(a pooled keep-alive connection, as every SDK and `requests.Session` keeps), posting as fast as
the answers come back.

What counts as accepted: a request whose bytes went out on a TCP connection the server had
accepted. A request that never got a connection (`httpx.ConnectError` / `ConnectTimeout`: the SYN
was refused or dropped, the listener is gone) was not accepted; clients retry those elsewhere.
Anything else that is not a 200 (ReadError, RemoteProtocolError, WriteError, a reset, a timeout, a
5xx) happened to a request written to an established connection: a LOSS.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcomes:
    ok: int = 0
    ok_after_mark: int = 0
    ok_before_mark: int = 0  # after every client was warm: the steady rate SIGTERM met
    steady_seconds: float = 0.0
    refused: int = 0
    lost: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.ok + len(self.lost)

    def summary(self) -> str:
        rate = self.ok_before_mark / self.steady_seconds if self.steady_seconds else 0.0
        return (f"{self.accepted} accepted ({rate:.0f} req/s when SIGTERM came), {len(self.lost)} lost, "
                f"{self.ok_after_mark} answered after SIGTERM, {self.refused} refused at connect")


class PooledLoad:
    def __init__(self, url: str, body: dict, clients: int = 16, path: str = "/v1/rank") -> None:
        self.url = url.rstrip("/") + path
        self.body = body
        self.clients = clients
        self._stop = threading.Event()
        self._mark: float | None = None
        self._warm: float | None = None
        self._ok_at_warm = self._ok_at_mark = 0
        self._results: list[Outcomes] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self):
        for _ in range(self.clients):
            out = Outcomes()
            self._results.append(out)
            # daemon: a failed assert in the test must not leave clients looping forever
            thread = threading.Thread(target=self._client, args=(out,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_warm(self, timeout: float = 60) -> None:
        """Until every client has had an answer (thread and connection set up): the steady load."""
        deadline = time.monotonic() + timeout
        while not all(out.ok for out in self._results):
            if time.monotonic() > deadline:
                raise AssertionError(f"clients not warm after {timeout} s: {[o.ok for o in self._results]}")
            time.sleep(0.01)
        self._warm = time.monotonic()
        self._ok_at_warm = self._answered()

    def mark(self) -> None:
        """Note the moment of SIGTERM: answers after it are counted apart."""
        self._mark = time.monotonic()
        self._ok_at_mark = self._answered()

    def _answered(self) -> int:
        return sum(out.ok for out in self._results)  # the threads' counters, read without a lock

    def stop(self) -> Outcomes:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        total = Outcomes()
        for out in self._results:
            total.ok += out.ok
            total.ok_after_mark += out.ok_after_mark
            total.refused += out.refused
            total.lost += out.lost
        if self._warm is not None and self._mark is not None:
            total.steady_seconds = self._mark - self._warm
            total.ok_before_mark = self._ok_at_mark - self._ok_at_warm
        return total

    def _client(self, out: Outcomes) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json=self.body)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    out.refused += 1
                    time.sleep(0.01)
                    continue
                except httpx.HTTPError as exc:
                    out.lost.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    out.lost.append(f"HTTP {response.status_code}: {response.text[:200]}")
                    continue
                out.ok += 1
                if self._mark is not None and time.monotonic() > self._mark:
                    out.ok_after_mark += 1
