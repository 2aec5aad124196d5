"""JSON responses serialised with orjson. Routes return these directly, so FastAPI skips its
slower jsonable_encoder pass (orjson also writes NaN as null instead of failing)."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return orjson.dumps(content)
