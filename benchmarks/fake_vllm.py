"""An instant stand-in for vLLM: answers /classify, /rerank, /health and /metrics at once.

    python -m benchmarks.fake_vllm --port 9001

Raw ASGI (no framework) on uvicorn with httptools/uvloop, so that it costs as little as possible
and the shim in front of it is what gets measured (benchmarks/shim_overhead.py). Scores are a
deterministic function of the input so that clients see varied, valid numbers.
"""

from __future__ import annotations

import argparse

import orjson

_JSON = [(b"content-type", b"application/json")]


CONSTANT: float | None = None  # --constant P: every score is P (a broken engine, for tests)


def _prob(seed: int) -> float:
    if CONSTANT is not None:
        return CONSTANT
    return ((seed * 2654435761) % 1000) / 1000.0


def _classify(body: dict) -> dict:
    inputs = body.get("input") or []
    tokens = sum(len(x) for x in inputs)
    data = [{"index": i, "label": "LABEL_0", "probs": [_prob(len(x) + x[-1] if x else i)],
             "num_classes": 1} for i, x in enumerate(inputs)]
    return {"id": "classify-fake", "object": "list", "created": 0, "model": body.get("model"),
            "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _rerank(body: dict) -> dict:
    docs = body.get("documents") or []
    results = [{"index": i, "relevance_score": _prob(len(d) + i), "document": {"text": d}}
               for i, d in enumerate(docs)]
    results.sort(key=lambda r: -r["relevance_score"])
    tokens = sum(len(d) for d in docs)
    return {"id": "rerank-fake", "model": body.get("model"), "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    path = scope["path"]
    status, headers, payload = 200, _JSON, b"{}"
    try:
        if path == "/classify":
            payload = orjson.dumps(_classify(orjson.loads(b"".join(chunks))))
        elif path == "/rerank":
            payload = orjson.dumps(_rerank(orjson.loads(b"".join(chunks))))
        elif path == "/health":
            payload = b""
        elif path == "/metrics":
            headers, payload = [(b"content-type", b"text/plain")], b"# fake vLLM\n"
        else:
            status, payload = 404, b'{"error":"not found"}'
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        status, payload = 400, orjson.dumps({"error": {"message": str(exc)}})
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def main(argv=None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--constant", type=float, default=None, help="answer this score for everything")
    args = parser.parse_args(argv)
    global CONSTANT
    CONSTANT = args.constant
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="auto", http="auto", timeout_keep_alive=30)


if __name__ == "__main__":
    main()
