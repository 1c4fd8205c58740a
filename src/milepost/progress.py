"""Drawing progress events: Rich bars for people, JSON lines for programs, or nothing."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from milepost.events import Event

# Events a person reads as a line of text (batches show as the bars move).
SHOWN = ("run", "message", "retry", "alert", "checkpoint", "verified", "finished")


class RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="cyan")


class RichProgress:
    """One bar per stream: rows, rows/s, ETA. Messages print above the bars."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RowsPerSecond(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        with self.lock:
            if event.kind == "stream" and event.stream:
                total = max(event.rows_total or 0, event.rows_done) or None
                self.tasks[event.stream] = self.progress.add_task(
                    event.stream, total=total, completed=event.rows_done
                )
            elif event.kind == "batch" and event.stream in self.tasks:
                task_id = self.tasks[event.stream]
                task = self.progress.tasks[task_id]
                if task.total is not None and event.rows_done > task.total:
                    self.progress.update(task_id, total=event.rows_done)
                self.progress.advance(task_id, event.rows)
            elif event.kind == "stream_done" and event.stream in self.tasks:
                self.progress.update(
                    self.tasks[event.stream], total=event.rows_done, completed=event.rows_done
                )
            elif event.kind in SHOWN and event.text:
                self.progress.console.print(event.text, markup=False)


class JsonLines:
    """One JSON object per event on stdout, flushed: for scripts and tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.as_dict(), default=str)
        with self.lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


class PlainLines:
    """Messages and one line per finished stream, for logs without a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)

    def __call__(self, event: Event) -> None:
        if event.kind in SHOWN and event.text:
            self.console.print(event.text, markup=False)
        elif event.kind == "stream_done":
            self.console.print(f"{event.stream}: {event.rows_done:,} rows")


def quiet(event: Event) -> None:
    """No output at all."""
