"""vLLM's error shape: `{"error": {message, type, param, code}}`, what vLLM clients parse, plus
the shim's `detail`, `type` and request id (what the shim's other dialects carry).

vLLM answers 400 for every schema or input error, where the shim's own dialects answer 422.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from server.responses import FastJSONResponse

_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
                501: "NotImplementedError", 503: "ServiceUnavailableError"}
# server/errors._validation_detail writes schema errors as "<field.path>: <message>; ..." (or
# "<field.path> must ..."): the first path is vLLM's `param`. Domain errors are sentences, which
# never start that way.
_FIELD_PATH = re.compile(r"^([^\s:;]+)(?:: | must )")
_BODY_TAGS = {"seed", "vllm", "cohere", "tei"}


def _param(status: int, detail: str) -> str | None:
    if status == 400 and detail == "request body is not valid JSON":
        return "body"
    match = _FIELD_PATH.match(detail)
    if not match:
        return None
    path = match.group(1)
    head, _, rest = path.partition(".")
    if head in _BODY_TAGS and rest:  # a dialect's tag in a multi-dialect body's error path
        path = rest
    return path if path == "body" else f"body.{path}"


def error_body(status: int, detail: str, type_: str, request_id: str) -> tuple[int, dict]:
    """vLLM's error object (what vLLM clients parse) plus our `detail`, `type` (the shim's error
    kind, e.g. engine_unavailable, which the playground reads) and request id. vLLM answers 400
    for every schema or input error, where the shim's own dialects answer 422."""
    if status == 422:
        status = 400
    name = _ERROR_TYPES.get(status)
    if name is None:
        try:
            name = HTTPStatus(status).phrase
        except ValueError:
            name = type_
    return status, {"error": {"message": detail, "type": name, "param": _param(status, detail),
                              "code": status},
                    "detail": detail, "type": type_, "id": request_id}


class VllmErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="what went wrong, as a sentence")
    type: str = Field(description="vLLM's error class, e.g. BadRequestError, NotFoundError")
    param: str | None = Field(description="the field at fault (body.<path>) when known")
    code: int = Field(description="= the HTTP status")


class VllmErrorBody(BaseModel):
    """The model of `error_body` (and of vLLM's own errors as relayed): vLLM's error object, which
    vLLM clients parse, plus the shim's `detail`, `type` and request id."""

    model_config = ConfigDict(extra="forbid")

    error: VllmErrorInfo
    detail: str = Field(description="= error.message (what the shim's other dialects carry)")
    type: str = Field(description="the shim's kind of error, e.g. invalid_request, engine_unavailable")
    id: str = Field(description="the request id, also sent as the X-Request-Id header")




# the shim's error `type` of what vLLM answered (server/errors.py names the shim's own)
_RELAYED_TYPES = {404: "not_found", 501: "not_supported"}


def relayed_answer(request: Request, status: int, payload: bytes) -> Response:
    """vLLM's answer to a relayed request, as it is; its error bodies get the shim's `detail`,
    `type` and request id added (an error that is not vLLM's error object is answered in vLLM's
    shape, so a client always gets one shape on these routes)."""
    if status == 200:
        return Response(payload, media_type="application/json")
    try:
        answer = orjson.loads(payload)
    except orjson.JSONDecodeError:
        answer = None
    type_ = _RELAYED_TYPES.get(status, "invalid_request")
    if not (isinstance(answer, dict) and isinstance(answer.get("error"), dict)):
        text = payload[:500].decode("utf-8", "replace") or "no body"
        status, answer = error_body(status, f"the engine answered {status}: {text}", type_,
                                    request.scope.get("request_id", ""))
        return FastJSONResponse(answer, status_code=status)
    answer.setdefault("detail", answer["error"].get("message", ""))
    answer.setdefault("type", type_)
    answer.setdefault("id", request.scope.get("request_id", ""))
    return FastJSONResponse(answer, status_code=status)
