"""The shim's shutdown against a request that waits in the kernel's accept queue when it begins.

Real uvicorn (DrainingServer) and a real socket; a trivial ASGI app stands in for the shim, and
the event loop is blocked on purpose, so the connection is queued, not yet accepted, at that
moment: under load that happens by chance (2 of 8 shutdowns in benchmarks/drain_churn.py, see
benchmarks/RESULTS.md), and closing the listener then resets a request the client already sent."""
import asyncio
import socket
import threading
import time

import uvicorn

from server.ops.drain import DrainingServer


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class _State:
    draining = False


class _App:
    state = _State()


def test_a_request_waiting_in_the_accept_queue_at_shutdown_is_answered():
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=5)
    server = DrainingServer(config, _App(), drain_window=0)
    answers = []

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            try:
                answers.append(c.recv(1024))
            except OSError as exc:
                answers.append(exc)

    async def scenario():
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        while not server.started:
            await asyncio.sleep(0.01)
        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(0.3)  # the loop is blocked: the connection completes in the kernel and waits
        server.should_exit = True
        await server.shutdown(sockets=[listener])  # begins before the loop could accept it
        await asyncio.wait_for(serving, 10)
        thread.join(10)

    asyncio.run(scenario())
    assert answers and isinstance(answers[0], bytes) and answers[0].startswith(b"HTTP/1.1 200"), answers
