"""The drain window, step by step, on real uvicorn (DrainingServer) and real sockets, with both of
uvicorn's HTTP parsers (httptools, the default here, and h11): a trivial ASGI app stands in for
the shim and raw sockets for pooled clients, so every moment is chosen, not left to chance.

Timeline (window W = 1 s, SIGTERM at t = 0): connections A, B, C and D, E as below."""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import uvicorn

from server.ops.drain import IDLE_MARGIN_S, DrainingServer

WINDOW_S = 1.0


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/slow":
        await asyncio.sleep(0.5)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class _App:
    """Only what the drain reads: the app state's draining flag (server/state.py)."""

    def __init__(self) -> None:
        self.state = SimpleNamespace(reranker=SimpleNamespace(draining=False))


class Client:
    """One pooled keep-alive connection, spoken by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, path: str = "/") -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())

    def response(self) -> bytes:
        data = b""
        while b"\r\n\r\nok" not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before a full response: {data!r}")
            data += chunk
        return data

    def request(self, path: str = "/") -> bytes:
        self.send(path)
        return self.response()

    def closed_by_server(self, wait: float = 0.0) -> bool:
        readable, _, _ = select.select([self.sock], [], [], wait)
        return bool(readable) and self.sock.recv(1) == b""


def closes(head: bytes) -> bool:
    return b"connection: close" in head.lower()


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_pooled_connections_are_moved_off_during_the_window_never_closed_under_a_request(http):
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, http=http, log_config=None, lifespan="off", timeout_graceful_shutdown=10)
    fastapi_app = _App()
    server = DrainingServer(config, fastapi_app, drain_window=WINDOW_S)
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def run():
        loop_box.append(asyncio.get_running_loop())
        await server.serve(sockets=[listener])

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started

    a, b, slow = Client(port), Client(port), Client(port)
    assert not closes(a.request()) and not closes(b.request())  # ordinary keep-alive before
    slow.send("/slow")  # in flight when SIGTERM comes
    time.sleep(0.1)

    loop_box[0].call_soon_threadsafe(server.handle_exit, signal.SIGTERM, None)
    term = time.monotonic()
    time.sleep(0.05)
    assert fastapi_app.state.reranker.draining  # readiness fails at once

    # in flight at SIGTERM: answered, and told to close
    assert closes(slow.response()) and slow.closed_by_server(wait=2)

    time.sleep(max(0.0, term + 0.3 - time.monotonic()))
    # A was idle when SIGTERM came and sends in the window: answered, with Connection: close,
    # and only then closed (the client knows not to reuse it: no race)
    head = a.request()
    assert head.startswith(b"HTTP/1.1 200") and closes(head)
    assert a.closed_by_server(wait=2)
    # a new connection in the window is served too, once
    c = Client(port)
    assert closes(c.request()) and c.closed_by_server(wait=2)

    time.sleep(max(0.0, term + 0.6 - time.monotonic()))
    d = Client(port)  # connects near the end of the window, sends only after it
    time.sleep(max(0.0, term + 0.8 - time.monotonic()))
    # B, idle all along, is not closed during the window
    assert not b.closed_by_server()

    # the window is over, the listener is closed: no new connections...
    deadline = time.monotonic() + 5
    while any(srv.is_serving() for srv in server.servers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time.monotonic() - term >= WINDOW_S
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    # ... but D, accepted before, is not idle in the drain's sense: its request is answered
    assert closes(d.request())

    # B carried nothing for the whole window (+ margin): its client has dropped it, so the
    # server closes it now, and then exits
    assert b.closed_by_server(wait=WINDOW_S + IDLE_MARGIN_S + 2)
    assert time.monotonic() - term >= WINDOW_S
    thread.join(10)
    assert not thread.is_alive()
    for client in (a, b, slow, c, d):
        client.sock.close()


def test_drain_delay_is_still_accepted_as_the_old_name_of_drain_window(monkeypatch):
    from launcher.cli import parse
    from server.settings import Settings

    assert Settings().drain_window == 5.0
    assert parse(["--drain-delay", "3"]).drain_window == 3.0
    assert parse(["--drain-delay", "3", "--drain-window", "4"]).drain_window == 4.0
    monkeypatch.setenv("RERANKER_DRAIN_DELAY", "7")
    settings = Settings()
    assert settings.drain_window == 7.0
    # what the launcher hands the shim keeps the value
    monkeypatch.delenv("RERANKER_DRAIN_DELAY")
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings().drain_window == 7.0
