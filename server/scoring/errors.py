"""Domain errors of the scoring core and the engine client.

The core says *what* went wrong; the HTTP edge (server/errors.py, and each dialect's error shape)
decides the status code and the body. Nothing under server/scoring knows about HTTP.
"""

from __future__ import annotations


class ScoringError(Exception):
    """Base class: `detail` is a sentence a client can act on."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(ScoringError):
    """The request cannot be scored as sent (empty query, bad Unicode, a limit exceeded)."""


class DocumentTooLong(InvalidInput):
    """A document does not fit the model whole and the request asked for a refusal instead of a
    cut (`ScoreRequest.refuse_truncation`). The facts a dialect words its own message from:
    `index` (in the request's documents), `tokens` (the document's; a lower bound when
    `tokens_exact` is false: text far past any budget is dropped before tokenising), `limit`
    (the document tokens that fit with this query and instruction)."""

    def __init__(self, index: int, tokens: int, limit: int, tokens_exact: bool = True,
                 detail: str | None = None) -> None:
        self.index = index
        self.tokens = tokens
        self.limit = limit
        self.tokens_exact = tokens_exact
        super().__init__(detail or f"documents[{index}] has {self.size}, more than the {limit} "
                                   "that fit the model with this query")

    @property
    def size(self) -> str:
        """"1234 tokens", or "at least 1234 tokens" when only part of the text was counted."""
        return f"{self.tokens} tokens" if self.tokens_exact else f"at least {self.tokens} tokens"


class TooLarge(ScoringError):
    """The request is valid but bigger than the server takes in one request."""


class NoRoom(ScoringError):
    """Admission control: the server is full right now; retry after `retry_after` seconds."""

    def __init__(self, detail: str, retry_after: int = 1, reason: str = "pairs") -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.reason = reason


class EngineUnavailable(ScoringError):
    """The engine cannot take work right now (down, restarting, busy)."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class EngineTimeout(ScoringError):
    """The engine did not answer within upstream_timeout."""


class EngineRejected(ScoringError):
    """The engine refused the input (its 400/422)."""


class EngineBadAnswer(ScoringError):
    """The engine answered something that is not a usable score (NaN, malformed)."""


class Cancelled(ScoringError):
    """The client went away; its work was cancelled."""
