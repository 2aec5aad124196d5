"""JSON responses outside a route's response model.

A dialect's route returns its response model (FastAPI serialises it with pydantic, straight to
JSON bytes, and the OpenAPI document describes it). What is not a response model goes out here:
error bodies and health answers (`FastJSONResponse`, orjson), and a response model from a route
that may also answer with a relayed vLLM response (`model_response`)."""

from __future__ import annotations

import json

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response


class FastJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            # orjson refuses integers beyond 64 bits, which a document object echoed back from
            # the request may hold (JSON has no such limit): the standard encoder takes them.
            # Anything it refuses too is a real bug and still a 500.
            return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def model_response(model: BaseModel) -> Response:
    """A response model as FastAPI renders a route's own (pydantic's JSON), for a route whose
    return type cannot be one model: it may also pass vLLM's answer on as it came."""
    return Response(model.model_dump_json(), media_type="application/json")
