"""`reranker batch`: score a JSONL file of requests against the service, one answer line each.

Input, one JSON object per line, either
  * the OpenAI / vLLM batch-file format: {"custom_id", "method": "POST", "url", "body"}, with
    `url` one of the service's scoring routes (/v1/rerank, /v2/rerank, /rerank, /v1/rank, /score,
    /v1/score, /invocations) and `body` what that route takes; or
  * a plain line: {"id", "query", "documents", "instruction"?}, sent to `plain_route`
    (/v1/rerank by default: the answer lists every document's index and relevance_score).
Output, one line per input line, in the OpenAI batch output format:
  {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
   "error": {"code", "message"} | null}
`response` is the service's answer, whatever its status (a 422 for a request the service refuses
is an answer, as in OpenAI's files); `error` is set when no answer could be had: a line that is
not a request (bad JSON, no id, a route the service does not score) or a service that stayed
unreachable. Lines are written as answers arrive, so their order is not the input's: match them
on custom_id.

Streaming: lines are read one at a time and at most `concurrency` requests are in flight, so the
memory needed does not grow with the input (the ids of lines already answered are kept, for
resuming and to refuse a duplicate id). Resuming: run the same command again; lines whose id is
already answered in the output are skipped, and lines whose answer was "try again later" (429,
502-504, unreachable) or whose line was cut off by a kill are removed from the output and sent
again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import orjson

from offline.client import RETRYABLE_STATUSES, Answer, ServiceClient
from offline.progress import Reporter

PLAIN_ROUTE = "/v1/rerank"
# the error code of a line that could not be scored now; such lines are sent again on resume
UNREACHABLE = "service_unreachable"
# keys that hold the documents of a request, per dialect, for counting pairs (progress only)
_DOCUMENT_KEYS = ("documents", "texts", "docs", "text_2", "data_2")


def scoring_routes() -> frozenset[str]:
    """The routes the service scores with its core, read from the dialect registry (the same
    set the OpenAPI document marks with X-Priority), so a new dialect is accepted here too."""
    from server.dialects import DIALECTS
    from server.openapi import SCORED, route_kinds

    return frozenset(p for d in DIALECTS for p in d.paths if SCORED in route_kinds(d, p))


@dataclass
class Request:
    """One input line that is a request: what to send and what it weighs."""

    custom_id: str
    path: str
    body: bytes
    pairs: int


@dataclass
class Refusal:
    """One input line that is not a request; answered with an error line."""

    custom_id: str
    code: str
    message: str


def count_pairs(body: dict) -> int:
    for key in _DOCUMENT_KEYS:
        if key in body:
            value = body[key]
            return len(value) if isinstance(value, list) else 1
    return 1


def parse_line(raw: bytes, lineno: int, routes: frozenset[str], plain_route: str) -> Request | Refusal:
    """A line of either input format -> the request to send, or why it is not one. A line with no
    usable id is named `line-N` (N its 1-based number), which is stable across resumes."""
    fallback = f"line-{lineno}"
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Refusal(fallback, "invalid_json", f"line {lineno} is not JSON: {exc}")
    if not isinstance(record, dict):
        return Refusal(fallback, "invalid_request", f"line {lineno} is not a JSON object")
    if "body" in record or "url" in record or "custom_id" in record:
        return _parse_batch_line(record, lineno, routes)
    line_id = record.get("id")
    if not isinstance(line_id, str | int) or isinstance(line_id, bool) or line_id == "":
        return Refusal(fallback, "invalid_request",
                       f"line {lineno}: a plain line needs an \"id\" (string or integer)")
    custom_id = str(line_id)
    body = {k: record[k] for k in ("query", "documents", "instruction") if k in record}
    if not isinstance(body.get("documents"), list):
        return Refusal(custom_id, "invalid_request", f"line {lineno}: \"documents\" must be a list")
    return Request(custom_id, plain_route, orjson.dumps(body), len(body["documents"]))


def _parse_batch_line(record: dict, lineno: int, routes: frozenset[str]) -> Request | Refusal:
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Refusal(f"line-{lineno}", "invalid_request", f"line {lineno}: \"custom_id\" must be a non-empty string")
    method = record.get("method", "POST")
    if method != "POST":
        return Refusal(custom_id, "invalid_request", f"line {lineno}: method must be POST, not {method!r}")
    url = record.get("url")
    if url not in routes:
        return Refusal(custom_id, "invalid_url",
                       f"line {lineno}: url must be one of {', '.join(sorted(routes))}, not {url!r}")
    body = record.get("body")
    if not isinstance(body, dict):
        return Refusal(custom_id, "invalid_request", f"line {lineno}: \"body\" must be a JSON object")
    return Request(custom_id, url, orjson.dumps(body), count_pairs(body))


def output_line(custom_id: str, answer: Answer | None = None, error: tuple[str, str] | None = None) -> bytes:
    record: dict = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
                    "response": None, "error": None}
    if answer is not None and answer.status is not None:
        try:
            body = orjson.loads(answer.body)
        except orjson.JSONDecodeError:  # a proxy's HTML page, say: kept as text
            body = {"detail": answer.body.decode("utf-8", errors="replace")}
        record["response"] = {"status_code": answer.status, "request_id": answer.request_id, "body": body}
    elif answer is not None:
        error = (UNREACHABLE, f"no answer after {answer.attempts} attempts: {answer.error}")
    if error is not None:
        record["error"] = {"code": error[0], "message": error[1]}
    return orjson.dumps(record) + b"\n"


def retry_later(record: dict) -> bool:
    """An output line that is not a final answer: sent again when the job is resumed."""
    response = record.get("response")
    if isinstance(response, dict):
        return response.get("status_code") in RETRYABLE_STATUSES
    error = record.get("error")
    return isinstance(error, dict) and error.get("code") == UNREACHABLE


def answered_ids(output: Path) -> set[str]:
    """The custom_ids already answered in `output`, after removing the lines to send again (and a
    last line cut off by a kill). The file is only rewritten when something is removed."""
    if not output.exists():
        return set()
    kept: set[str] = set()
    drop = False
    for _, record in _records(output):
        if record is None or retry_later(record):
            drop = True
        else:
            kept.add(record["custom_id"])
    if drop:
        partial = output.with_name(output.name + ".resume")
        with open(partial, "wb") as out:
            for raw, record in _records(output):
                if record is not None and not retry_later(record):
                    out.write(raw)
        os.replace(partial, output)
    return kept


def _records(path: Path) -> Iterator[tuple[bytes, dict | None]]:
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            record = None
            if raw.endswith(b"\n"):
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    pass
            if not (isinstance(record, dict) and isinstance(record.get("custom_id"), str)):
                record = None
            yield raw, record


@dataclass
class Summary:
    answered: int = 0       # lines with a 2xx answer
    refused: int = 0        # lines answered with an error status or an error (final)
    unreachable: int = 0    # lines to send again (retryable status, no answer)
    skipped: int = 0        # lines answered by an earlier run
    pairs: int = 0
    interrupted: str = ""   # the signal's name, if one stopped the job
    retries: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # a few examples, for the summary

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.unreachable


@dataclass
class BatchOptions:
    input: str                    # a path, or "-" for stdin
    output: Path
    service: str
    concurrency: int = 16
    api_key: str | None = None
    timeout_s: float = 600.0
    max_attempts: int = 8
    plain_route: str = PLAIN_ROUTE
    progress_interval_s: float = 10.0
    force_terminal: bool | None = None


async def run_batch(opts: BatchOptions) -> Summary:
    routes = scoring_routes()
    if opts.plain_route not in routes:
        raise ValueError(f"--plain-route must be one of {', '.join(sorted(routes))}")
    summary = Summary()
    done = answered_ids(opts.output)
    seen: set[str] = set()
    total = None if opts.input == "-" else os.path.getsize(opts.input)
    reporter = Reporter("batch", total, interval_s=opts.progress_interval_s,
                        force_terminal=opts.force_terminal)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop = asyncio.Event()
    window = asyncio.Semaphore(opts.concurrency)
    pending: set[asyncio.Task] = set()

    def on_signal(sig: signal.Signals) -> None:
        # stop reading and drop what is in flight: those lines have no output line yet, so a
        # resume sends them again; every line already written is whole
        summary.interrupted = sig.name
        stop.set()
        for task in list(pending):
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        async with ServiceClient(opts.service, concurrency=opts.concurrency, api_key=opts.api_key,
                                 timeout_s=opts.timeout_s, max_attempts=opts.max_attempts) as client:
            with _open_input(opts.input) as source, open(opts.output, "ab") as sink:

                def write(line: bytes) -> None:
                    sink.write(line)
                    sink.flush()

                async def send(request: Request, nbytes: int) -> None:
                    try:
                        answer = await client.post(request.path, request.body)
                        write(output_line(request.custom_id, answer))
                        ok = answer.status is not None and 200 <= answer.status < 300
                        if ok:
                            summary.answered += 1
                            summary.pairs += request.pairs
                        elif answer.status in RETRYABLE_STATUSES or answer.status is None:
                            summary.unreachable += 1
                            _example(summary, f"{request.custom_id}: {answer.status or answer.error}")
                        else:
                            summary.refused += 1
                            _example(summary, f"{request.custom_id}: HTTP {answer.status}")
                        reporter.advance(1, request.pairs if ok else 0, nbytes, 0 if ok else 1)
                    finally:
                        window.release()

                for lineno, raw in enumerate(source, 1):
                    if stop.is_set():
                        break
                    if not raw.strip():
                        reporter.skip(len(raw))
                        continue
                    item = parse_line(raw, lineno, routes, opts.plain_route)
                    if item.custom_id in done:
                        summary.skipped += 1
                        reporter.skip(len(raw))
                        continue
                    if item.custom_id in seen:
                        item = Refusal(item.custom_id, "duplicate_custom_id",
                                       f"line {lineno}: custom_id {item.custom_id!r} was used by an earlier line")
                    seen.add(item.custom_id)
                    if isinstance(item, Refusal):
                        write(output_line(item.custom_id, error=(item.code, item.message)))
                        summary.refused += 1
                        _example(summary, item.message)
                        reporter.advance(1, 0, len(raw), 1)
                        continue
                    await window.acquire()
                    if stop.is_set():
                        window.release()
                        break
                    task = asyncio.create_task(send(item, len(raw)))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
            summary.retries = client.retries
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        reporter.close()
    summary.seconds = loop.time() - started
    return summary


def _example(summary: Summary, text: str) -> None:
    if len(summary.errors) < 5:
        summary.errors.append(text)


class _open_input:
    """A path, or "-": the standard input, both read as bytes line by line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        self.file = sys.stdin.buffer if self.name == "-" else open(self.name, "rb")
        return self.file

    def __exit__(self, *exc) -> None:
        if self.file is not None and self.name != "-":
            self.file.close()
