"""One pure-ASGI middleware for every request: request id, body limit, metrics, access log.

Pure ASGI (not BaseHTTPMiddleware) because it sits on the hot path of every call.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

import orjson

from server.errors import default_error_body

log = logging.getLogger("server.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Request ids only need to be unique, not secret: a random per-process prefix and a counter cost
# a fraction of a urandom call per request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


class _BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    def __init__(self, app, metrics, max_body_bytes: int, dialect_of: dict) -> None:
        """`dialect_of`: scoring path -> its dialect (the registry). Those paths get metrics and
        an access log line (probes and scrapes do not), and their dialect shapes a 413."""
        self.app = app
        self.dialect_of = dialect_of
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id, declared_length = _read_headers(scope)
        scope["request_id"] = request_id
        path = scope["path"]
        endpoint = path if path in self.dialect_of else None
        status = {"code": 500, "started": False}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode())]
            await send(message)

        if declared_length > self.max_body:
            return await self._too_large(scope, send_wrapper)
        received = 0

        async def receive_wrapper():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge()
            return message

        started = time.perf_counter()
        if endpoint:
            self.metrics.inflight.inc()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if not status["started"]:
                await self._too_large(scope, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            if endpoint:
                self.metrics.inflight.dec()
                self.metrics.requests.labels(endpoint, str(status["code"])).inc()
                self.metrics.duration.labels(endpoint).observe(elapsed)
                _access_log(scope, request_id, status["code"], elapsed)

    async def _too_large(self, scope, send) -> None:
        detail = f"request body larger than the limit of {self.max_body} bytes (max_body_bytes)"
        dialect = self.dialect_of.get(scope["path"])
        shape = dialect.error if dialect is not None else default_error_body
        status, body = shape(413, detail, "payload_too_large", scope["request_id"])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": orjson.dumps(body)})


def _read_headers(scope) -> tuple[str, int]:
    """The request id (the client's if it is safe, else a new one) and the declared length."""
    request_id, length = "", 0
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_ID.match(text):
                request_id = text
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = 0
    return request_id or f"{_ID_PREFIX}{next(_ID_COUNTER):016x}", length


def _access_log(scope, request_id: str, status: int, elapsed: float) -> None:
    if log.isEnabledFor(logging.INFO):
        client = scope.get("client") or ("", 0)
        log.info("request", extra={"request_id": request_id, "method": scope["method"],
                                   "path": scope["path"], "status": status,
                                   "duration_ms": round(elapsed * 1000, 2), "client": client[0]})
