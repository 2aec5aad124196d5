"""Shutdown of the listening socket on the real Linux kernel: refuse new connections, keep the
ones already queued (closing a listener with a queue resets those: a lost, already-sent request)."""

import socket
import time

from server.ops.listener import queued_connections, refuse_new_connections


def test_queued_connection_survives_while_new_ones_are_refused():
    server = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = server.getsockname()[1]
    early = socket.create_connection(("127.0.0.1", port))
    early.sendall(b"POST /v1/rank")
    deadline = time.monotonic() + 2
    while queued_connections(server) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queued_connections(server) == 1

    assert refuse_new_connections(server)
    late = socket.socket()
    late.settimeout(0.3)
    try:
        late.connect(("127.0.0.1", port))
        connected = True
    except TimeoutError:
        connected = False
    assert not connected  # its SYN is dropped: it will be refused once the listener closes

    conn, _ = server.accept()  # the queued one is intact, request bytes and all
    assert conn.recv(64) == b"POST /v1/rank"
    assert queued_connections(server) == 0
    for s in (conn, early, late, server):
        s.close()
