"""The shim -> vLLM hop: a call that fails before any response byte is retried once (scoring is
idempotent); one that fails mid-response is not. A fake engine (a raw asyncio server) forces the
faults: real vLLM closes a reused idle connection only by chance (facts.md: 1 in 3,000-6,000)."""

from __future__ import annotations

import asyncio
import socket
import struct

import orjson
import pytest

from server.scoring.engine import EngineClient
from server.scoring.errors import EngineTimeout

ANSWER = orjson.dumps({"data": [{"index": 0, "probs": [0.75]}]})


async def read_request(reader: asyncio.StreamReader) -> bool:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return True


def ok_response() -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(ANSWER)) + ANSWER


class FakeEngine:
    """Answers each connection's first request; what happens to the second one on the same
    (pooled) connection is `on_reuse`: "close" (FIN, no answer), "reset" (RST, no answer)."""

    def __init__(self, on_reuse: str) -> None:
        self.on_reuse = on_reuse
        self.requests = 0

    async def handle(self, reader, writer) -> None:
        served = 0
        while await read_request(reader):
            self.requests += 1
            if served and self.on_reuse in ("close", "reset"):
                if self.on_reuse == "reset":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                return
            writer.write(ok_response())
            await writer.drain()
            served += 1
        writer.close()


@pytest.mark.parametrize("on_reuse", ["close", "reset"])
def test_a_call_on_a_pooled_connection_the_engine_closed_is_retried_once_fake_engine(on_reuse):
    async def scenario():
        engine = FakeEngine(on_reuse)
        server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(f"http://127.0.0.1:{port}", "m", timeout=5)
        try:
            assert await client.classify([[1, 2, 3]], raw=False) == [0.75]
            # the pooled connection is reused; the engine drops it with the request unanswered
            assert await client.classify([[1, 2, 3]], raw=False) == [0.75]
        finally:
            await client.aclose()
            server.close()
        return engine.requests

    # first call, the dropped one, its retry on a new connection
    assert asyncio.run(scenario()) == 3


def test_a_timeout_mid_response_is_not_retried_fake_engine():
    requests = 0

    async def stall(reader, writer):
        nonlocal requests
        if await read_request(reader):
            requests += 1
            # the engine has started answering: a retry could double the work of a slow call
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"da")
            await writer.drain()
            await asyncio.sleep(5)
        writer.close()

    async def scenario():
        server = await asyncio.start_server(stall, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = EngineClient(f"http://127.0.0.1:{port}", "m", timeout=0.5)
        try:
            with pytest.raises(EngineTimeout):
                await client.classify([[1, 2, 3]], raw=False)
        finally:
            await client.aclose()
            server.close()

    asyncio.run(scenario())
    assert requests == 1
