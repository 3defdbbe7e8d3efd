"""Progress of long admin commands: a rich bar on a terminal, plain lines anywhere else.

Backups, restores, imports, exports and snapshots can take minutes on large indices. On a
terminal they draw a rich progress bar (steps or bytes, elapsed time, what is being done); off
one (a pipe, a log file, CI) the same events become one plain line each, so a log shows what
happened and when without control characters. Progress goes to stderr: stdout keeps the
command's result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Steps:
    """One task's progress: ``advance`` after each step (or chunk of bytes)."""

    def __init__(
        self, what: str, total: int | None, unit: str, stream: TextIO, bar: Progress | None
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream
        self._bar = bar
        self._task = bar.add_task(what, total=total) if bar is not None else None
        self._start = time.monotonic()
        if bar is None:
            size = f" ({_amount(total, unit)})" if total is not None else ""
            self._line(f"{what}: started{size}")

    def advance(self, amount: int = 1, note: str = "") -> None:
        self.done += amount
        if self._bar is not None:
            label = f"{self.what}: {note}" if note else self.what
            assert self._task is not None
            self._bar.update(self._task, advance=amount, description=label)
            return
        note = f" {note}" if note else ""
        if self.unit == "bytes":
            of = f"/{_amount(self.total, self.unit)}" if self.total is not None else ""
            self._line(f"{self.what}: {_amount(self.done, self.unit)}{of}{note}")
        else:
            of = f"/{self.total}" if self.total is not None else ""
            unit = f" {self.unit}" if self.unit else ""
            self._line(f"{self.what}: {self.done}{of}{unit}{note}")

    def finish(self) -> None:
        if self._bar is not None:
            if self.total is None and self._task is not None:
                self._bar.update(self._task, total=max(self.done, 1), completed=max(self.done, 1))
            return
        self._line(f"{self.what}: done in {time.monotonic() - self._start:.1f}s")

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


@contextmanager
def progress(
    what: str, total: int | None = None, unit: str = "", stream: TextIO | None = None
) -> Iterator[Steps]:
    """Report ``what``'s progress over ``total`` steps (``unit="bytes"``: a byte count;
    ``total=None``: unknown, a spinner)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        steps = Steps(what, total, unit, stream, None)
        yield steps
        steps.finish()
        return
    count = DownloadColumn(binary_units=True) if unit == "bytes" else MofNCompleteColumn()
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count]
    with Progress(*columns, TimeElapsedColumn(), console=Console(file=stream)) as bar:
        steps = Steps(what, total, unit, stream, bar)
        yield steps
        steps.finish()


def _amount(n: int | None, unit: str) -> str:
    if n is None:
        return "?"
    if unit != "bytes":
        return f"{n}{' ' + unit if unit else ''}"
    size = float(n)
    for name in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or name == "GiB":
            return f"{n} B" if name == "B" else f"{size:.1f} {name}"
        size /= 1024
    return f"{size:.1f} GiB"
