"""Progress you can watch: a rich progress bar (pairs, pairs/s, ETA) on a terminal, a plain line
every few seconds otherwise (a log file, a CI job, `kubectl logs`).

The ETA is computed from input bytes (a multi-GB input is not read twice to count its pairs
first), so it is exact for inputs whose lines are alike and a good guide otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _PairsColumn(ProgressColumn):
    """Pairs scored and pairs/s over the job so far."""

    def render(self, task) -> Text:
        pairs = task.fields.get("pairs", 0)
        elapsed = task.fields.get("elapsed", 0.0)
        rate = pairs / elapsed if elapsed > 0 else 0.0
        return Text(f"{pairs:,} pairs {rate:,.1f} pairs/s", style="progress.data.speed")


class Reporter:
    """`advance(lines, pairs, nbytes, failed)` as answers come in; `close()` at the end.
    `total_bytes` None: the input's size is unknown (stdin), no ETA."""

    def __init__(self, label: str, total_bytes: int | None, stream: TextIO | None = None,
                 interval_s: float = 10.0, force_terminal: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.label = label
        self.total_bytes = total_bytes
        self.interval_s = interval_s
        self.lines = self.pairs = self.done_bytes = self.failed = 0
        self.started = time.monotonic()
        self._last_line = self.started
        terminal = self.stream.isatty() if force_terminal is None else force_terminal
        self._progress: Progress | None = None
        if terminal:
            console = Console(file=self.stream, force_terminal=True)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                _PairsColumn(), TextColumn("{task.fields[failed]} failed"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=console, refresh_per_second=4, transient=False)
            self._task = self._progress.add_task(label, total=total_bytes, pairs=0, failed=0,
                                                 elapsed=0.0)
            self._progress.start()

    def skip(self, nbytes: int) -> None:
        """Input already answered by an earlier run: out of the total, not part of the rate."""
        if self.total_bytes is not None:
            self.total_bytes = max(0, self.total_bytes - nbytes)
            if self._progress is not None:
                self._progress.update(self._task, total=self.total_bytes)

    def advance(self, lines: int, pairs: int, nbytes: int, failed: int = 0) -> None:
        self.lines += lines
        self.pairs += pairs
        self.done_bytes += nbytes
        self.failed += failed
        now = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, advance=nbytes, pairs=self.pairs, failed=self.failed,
                                  elapsed=now - self.started)
        elif now - self._last_line >= self.interval_s:
            self._last_line = now
            self._print_line(now)

    def status(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        rate = self.pairs / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.lines:,} lines", f"{self.failed:,} failed", f"{self.pairs:,} pairs",
                 f"{rate:,.1f} pairs/s", f"elapsed {_duration(elapsed)}"]
        if self.total_bytes:
            fraction = min(1.0, self.done_bytes / self.total_bytes)
            eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
            parts[1:1] = [f"{fraction:.1%} done"]
            parts.append(f"ETA {_duration(eta)}")
        return f"{self.label}: " + ", ".join(parts)

    def _print_line(self, now: float) -> None:
        print(self.status(now), file=self.stream, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
