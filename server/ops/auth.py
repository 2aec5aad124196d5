"""Bearer auth as one dependency: static API keys and/or JWT (HS256 / RS256).

Off unless keys or a JWT key are configured. When off, any Authorization header is accepted:
the Cohere and Jina SDKs refuse to start without a key, so they always send a dummy one.
The header is parsed by FastAPI's `HTTPBearer` (which also declares the scheme in OpenAPI when
auth is on); this module only decides whether the token is good.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

import jwt
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.errors import ApiError


class Authenticator:
    def __init__(self, settings) -> None:
        self.keys = [k.encode() for k in _load_keys(settings)]
        self.jwt_keys = _jwt_keys(settings)
        self.issuer = settings.jwt_issuer or None
        self.audience = settings.jwt_audience or None

    @property
    def enabled(self) -> bool:
        return bool(self.keys or self.jwt_keys)

    def identify(self, credentials: HTTPAuthorizationCredentials | None) -> str | None:
        """The caller's identity (key or JWT subject) for rate limiting; raises 401 when refused."""
        if not self.enabled:
            return None
        token = credentials.credentials.strip() if credentials is not None else ""
        if not token:
            raise _unauthorized("missing bearer token")
        if self._key_matches(token.encode()):
            return "key:" + token[-8:]
        if self.jwt_keys and token.count(".") == 2:
            return "jwt:" + self._verify_jwt(token)
        raise _unauthorized("invalid API key")

    def _key_matches(self, token: bytes) -> bool:
        # Compare against every key so the time taken does not reveal which one nearly matched.
        return any([hmac.compare_digest(token, key) for key in self.keys])

    def _verify_jwt(self, token: str) -> str:
        options: Any = {"require": ["exp"] + (["iss"] if self.issuer else []) + (["aud"] if self.audience else [])}
        last_error = "invalid token"
        for algorithm, key in self.jwt_keys:
            try:
                claims = jwt.decode(token, key, algorithms=[algorithm], issuer=self.issuer,
                                    audience=self.audience, options=options)
                return str(claims.get("sub", "anonymous"))
            except jwt.PyJWTError as exc:
                last_error = str(exc)
        raise _unauthorized(f"invalid token: {last_error}")


# auto_error=False: a missing or non-bearer header reaches `identify`, which answers 401 in our
# error shape with WWW-Authenticate (HTTPBearer's own error would be FastAPI's 403/401 body).
bearer_scheme = HTTPBearer(auto_error=False, description="an API key or a JWT")


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, detail, "unauthorized", {"WWW-Authenticate": 'Bearer realm="reranker"'})


def _load_keys(settings) -> list[str]:
    keys = [k for k in settings.api_keys if k]
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    return keys


def _jwt_keys(settings) -> list[tuple[str, str]]:
    keys = []
    if settings.jwt_secret:
        keys.append(("HS256", settings.jwt_secret))
    if settings.jwt_public_key:
        text = settings.jwt_public_key
        if "BEGIN" not in text:
            text = Path(text).read_text()
        keys.append(("RS256", text))
    return keys
