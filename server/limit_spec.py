"""What a rate-limit setting may say: the limit's form and the storage URI's scheme.

Shared by the settings (which reject a bad value at start-up, in the launcher too) and the rate
limiter (server/ops/ratelimit.py), so the settings need not import the limiter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from limits import RateLimitItem

# scheme -> whether it is a shared store. Only what the installed clients can serve (redis-py).
SCHEMES = {"memory": False, "redis": True, "rediss": True, "redis+unix": True,
           "redis+sentinel": True, "redis+cluster": True}


def parse_limit(spec: str) -> RateLimitItem:
    """One `limits` item from "N/period" or "N per period"; ValueError says what is accepted."""
    from limits import parse  # here, not at the top: the launcher imports the settings and rarely needs it

    hint = 'write one limit as "N/second", "N/minute", "N/hour" or "N/day" (e.g. 600/minute), or "" for off'
    if any(sep in spec for sep in ";,|"):
        raise ValueError(f"one rate limit only, got {spec!r}: {hint}")
    try:
        item = parse(spec)
    except ValueError:
        raise ValueError(f"not a rate limit: {spec!r}: {hint}") from None
    if item.amount < 1:
        raise ValueError(f"rate limit {spec!r} admits nothing: {hint}")
    return item


def storage_scheme(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower().removeprefix("async+") if "://" in uri else ""
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported rate-limit storage {redact(uri)!r}: use memory:// or "
                         "redis://host:6379/0 (also rediss://, redis+unix://, redis+sentinel://, "
                         "redis+cluster://)")
    return scheme


def redact(uri: str) -> str:
    """The URI without its password, for logs."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable>"
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
