"""JSON responses serialised with orjson (fast, and NaN-safe: orjson writes NaN as null)."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content)
