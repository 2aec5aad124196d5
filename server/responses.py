"""JSON responses serialised with orjson. Routes return these directly, so FastAPI skips its
slower jsonable_encoder pass.

Why not FastAPI's own: `ORJSONResponse` is deprecated since FastAPI 0.13x in favour of
`response_model` serialisation, which validates every body against its model on the hot path.
Bodies here are plain dicts built by the dialects; the tests validate them against the declared
models instead (tests/inprocess/test_contracts.py)."""

from __future__ import annotations

import json

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        try:
            return orjson.dumps(content)
        except TypeError:
            # orjson refuses integers beyond 64 bits, which a document object echoed back from
            # the request may hold (JSON has no such limit): the standard encoder takes them.
            # Anything it refuses too is a real bug and still a 500.
            return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
