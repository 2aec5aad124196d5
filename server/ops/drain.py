"""Drain without losing requests from pooled keep-alive clients.

The race this closes: HTTP/1.1 gives a server no way to tell a client "do not reuse this idle
connection" except closing it, and a client may be writing a request on it at that very moment;
it then gets a reset or an empty answer (httpx: ReadError / RemoteProtocolError), although the
server "accepted" it. uvicorn's own shutdown closes every idle connection at once, so under load
SIGTERM lost a few requests each time (tests/integration/test_drain.py). Load balancers do not
help: kube-proxy and most proxies steer only new connections, pooled clients keep using old ones.

So, on SIGTERM (`DrainingServer.handle_exit`):
1. readiness fails at once (`AppState.draining`), so load balancers stop sending new connections;
2. for `drain_window` seconds nothing is closed and everything is served, but every response
   carries `Connection: close` (uvicorn, with httptools or h11, then closes the connection right
   after that response). A client that reads such an answer will not reuse the connection, so
   a connection closed this way never races a request. A pooled client that sends at least once
   in the window has moved off by its end;
3. then new connections are refused and the accept queue emptied before the listener closes
   (server/ops/listener.py);
4. a connection still open and idle is closed only once nothing has arrived on it for
   `drain_window` + 1 s: a connection that idle was last used before SIGTERM, so its client
   has forgotten it if its pool expires idle connections within the window (httpx: 5 s, the
   default window is 5 s; the extra second covers the client seeing the last answer later than
   the server sent it). A connection accepted a moment ago is not idle in that sense: its
   request is on the way and is answered (with `Connection: close`);
5. in-flight requests finish within `drain_timeout` of the listener closing; then the process
   exits (the launcher stops vLLM only after that).

What remains: a client that keeps idle connections longer than the window (`requests.Session`
never expires them, nginx keeps upstream connections `keepalive_timeout`) and writes on one in
the instant step 4 closes it. Proxies retry that case (deploy/nginx/reranker.conf:
`proxy_next_upstream error ... non_idempotent`); for such direct clients raise the window.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvicorn

from server.ops.listener import queued_connections, refuse_new_connections
from server.state import app_state

log = logging.getLogger("server")
# After the window, a connection is closed once it carried nothing for drain_window + this.
IDLE_MARGIN_S = 1.0
_ACCEPT_QUEUE_WAIT_S = 2.0
_POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    """uvicorn.Server with the drain above. `app` is the FastAPI app (its AppState.draining drives
    readiness); `config.app` is wrapped so responses carry Connection: close while draining."""

    def __init__(self, config: uvicorn.Config, app, drain_window: float) -> None:
        config.app = CloseWhileDraining(config.app, self)
        super().__init__(config)
        self.fastapi_app = app
        self.drain_window = drain_window
        self.draining = False

    async def startup(self, sockets=None) -> None:
        self.config.http_protocol_class = tracked_protocol(self.config.http_protocol_class)
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.draining:  # a second signal: stop now
            self.force_exit = True
            return super().handle_exit(sig, frame)
        self.draining = True
        app_state(self.fastapi_app).draining = True
        log.info("drain started", extra={"signal": int(sig), "window_s": self.drain_window})
        asyncio.get_event_loop().call_later(self.drain_window, self._end_window)

    def _end_window(self) -> None:
        self.should_exit = True  # uvicorn's main loop notices and calls shutdown()

    async def shutdown(self, sockets=None) -> None:
        await self._empty_accept_queues()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        # In-flight requests get drain_timeout from here; the idle connections are closed
        # meanwhile, uvicorn's shutdown then waits for the busy ones with what is left.
        budget = self.config.timeout_graceful_shutdown
        deadline = None if budget is None else time.monotonic() + budget
        await self._close_quiet_connections(deadline)
        if deadline is not None:
            # uvicorn declares it int and uses it as a timeout: the fraction of a second counts
            self.config.timeout_graceful_shutdown = max(0.0, deadline - time.monotonic())  # type: ignore[assignment]
        await super().shutdown(sockets)

    async def _empty_accept_queues(self) -> None:
        # Closing a listener resets connections still in its accept queue: refuse new ones
        # first and let the accept loop (still running) take what is queued.
        listeners = [sock for server in self.servers for sock in server.sockets]
        if not all(refuse_new_connections(sock) for sock in listeners):
            return
        deadline = time.monotonic() + _ACCEPT_QUEUE_WAIT_S
        while any(queued_connections(s) for s in listeners) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)

    async def _close_quiet_connections(self, deadline: float | None) -> None:
        """Close idle connections once they have been quiet for drain_window + margin; wait for
        the others to get their request (answered with Connection: close) or to turn quiet."""
        quiet_s = self.drain_window + IDLE_MARGIN_S
        stop_at = time.monotonic() + quiet_s
        if deadline is not None:
            stop_at = min(stop_at, deadline)
        while True:
            now = time.monotonic()
            waiting = False
            for conn in list(self.server_state.connections):
                if not _idle(conn):
                    continue  # a request in progress: its response closes the connection
                if now - getattr(conn, "last_active", 0.0) >= quiet_s:
                    conn.shutdown()  # uvicorn's own close of an idle connection
                else:
                    waiting = True
            if not waiting or now >= stop_at or self.force_exit:
                return
            await asyncio.sleep(_POLL_S)


def _idle(conn) -> bool:
    cycle = getattr(conn, "cycle", None)
    return cycle is None or cycle.response_complete


class CloseWhileDraining:
    """Pure ASGI: once the server drains, every response carries `Connection: close`."""

    def __init__(self, app, server: DrainingServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        server = self.server

        async def send_closing(message):
            if message["type"] == "http.response.start" and server.draining:
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" and b"close" in value.lower()
                           for name, value in headers):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


def tracked_protocol(base: type) -> type:
    """uvicorn's HTTP protocol class (httptools or h11) that records when its connection last
    saw traffic: accepted, bytes received, or a response completed."""
    if getattr(base, "tracks_activity", False):
        return base

    class Tracked(base):
        tracks_activity = True
        last_active = 0.0

        def connection_made(self, transport) -> None:
            self.last_active = time.monotonic()
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            self.last_active = time.monotonic()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self.last_active = time.monotonic()
            super().on_response_complete()

    Tracked.__name__ = Tracked.__qualname__ = f"Tracked{base.__name__}"
    return Tracked
