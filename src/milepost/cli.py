"""The command line: translates arguments into library calls, and errors into exit codes.

Only this module prints. Every MilepostError becomes one paragraph on stderr and its
exit code; anything unexpected becomes one line (the traceback only with
MILEPOST_DEBUG=1).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from milepost.config import load_pipeline
from milepost.errors import EXIT_FAILED, EXIT_PAUSED, MilepostError
from milepost.pause import request_pause
from milepost.progress import JsonLines, PlainLines, RichProgress, quiet
from milepost.runner import Runner
from milepost.status import pipeline_status

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Resumable, verifiable data migrations. Exit codes: 0 done, 1 failed, 2 bad usage "
    "or configuration, 3 paused (resumable), 4 verification found differences.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def reported(func: F) -> F:
    """Turn library errors into a message and an exit code, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MilepostError as exc:
            err.print(f"milepost: {exc}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("MILEPOST_DEBUG"):
                traceback.print_exc()
            text = " ".join(str(exc).split())[:500]
            err.print(
                f"milepost: unexpected error: {type(exc).__name__}: {text} "
                "(set MILEPOST_DEBUG=1 to see where it happened)",
                markup=False,
            )
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper  # type: ignore[return-value]


class ProgressStyle(StrEnum):
    auto = "auto"
    bar = "bar"
    plain = "plain"
    jsonl = "jsonl"
    none = "none"


PIPELINE = typer.Argument(..., help="The pipeline YAML file.", show_default=False)


@app.command()
@reported
def run(
    pipeline: Path = PIPELINE,
    workers: int | None = typer.Option(
        None, min=1, max=64, help="Chunks copied at once (overrides the file)."
    ),
    batch_size: int | None = typer.Option(
        None, min=1, max=1_000_000, help="Rows per destination transaction."
    ),
    strict: bool = typer.Option(False, help="Stop rather than start a stream over."),
    fresh: bool = typer.Option(False, help="Empty the destination tables and start over."),
    progress: ProgressStyle = typer.Option(ProgressStyle.auto, help="How to show progress."),
) -> None:
    """Copy (or resume copying) every stream of PIPELINE into its destination."""
    p = load_pipeline(pipeline).with_overrides(
        workers=workers, batch_size=batch_size, strict=strict or None
    )
    style = progress.value
    if style == "auto":
        style = "bar" if sys.stderr.isatty() else "plain"
    if style == "bar":
        with RichProgress(err) as bars:
            _run_with_signals(Runner(p, fresh=fresh, on_event=bars, origin=str(pipeline)))
    else:
        listener = {"plain": PlainLines(err), "jsonl": JsonLines(), "none": quiet}[style]
        _run_with_signals(Runner(p, fresh=fresh, on_event=listener, origin=str(pipeline)))


def _run_with_signals(runner: Runner) -> None:
    """SIGINT/SIGTERM stop after the batches in flight; a second SIGINT aborts at once."""

    def on_signal(signum: int, frame: Any) -> None:
        if runner.stop.is_set() and signum == signal.SIGINT:
            err.print("milepost: aborted; the last committed batch is kept.")
            os._exit(EXIT_PAUSED)
        runner.request_stop()
        err.print(
            "milepost: stopping after the batches in flight (press Ctrl-C again to abort at once)"
        )

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command()
@reported
def pause(
    pipeline: Path = PIPELINE,
    wait: bool = typer.Option(True, help="Wait until the run has stopped."),
    timeout: float = typer.Option(
        600.0, min=0, help="Give up waiting after this many seconds (the request stands)."
    ),
) -> None:
    """Ask the run of PIPELINE, on whatever machine, to stop after its batches in flight.

    Exits 0 once it has stopped (or when nothing is running), 3 if it is still running
    when the timeout passes.
    """
    outcome = request_pause(load_pipeline(pipeline), wait=wait, timeout_s=timeout)
    out.print(outcome.text, markup=False)
    raise typer.Exit(outcome.exit_code)


@app.command()
@reported
def status(
    pipeline: Path = PIPELINE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show what the ledger records for PIPELINE: phase, status, rows per stream."""
    report = pipeline_status(load_pipeline(pipeline))
    if as_json:
        out.print_json(json.dumps(report))
        return
    head = f"{report['pipeline']}: {report['status']}"
    if report.get("run_id"):
        head += f" (run {report['run_id']}, phase {report['phase']})"
    out.print(head, markup=False)
    if report.get("lease"):
        lease = report["lease"]
        out.print(
            f"running as pid {lease['pid']} on {lease['host']}, "
            f"heartbeat {lease['heartbeat_age_s']}s ago",
            markup=False,
        )
    if report.get("pause_requested_s_ago") is not None:
        out.print(
            f"pause requested {report['pause_requested_s_ago']}s ago; stopping after the "
            "batches in flight",
            markup=False,
        )
    if report.get("message"):
        out.print(f"last message: {report['message']}", markup=False)
    if report.get("rows_rejected"):
        out.print(
            f"{report['rows_rejected']:,} refused row(s) set aside in _milepost_rejected_rows",
            markup=False,
        )
    if report["streams"]:
        table = Table(
            "stream",
            "state",
            "rows written",
            "rows (estimate)",
            "set aside",
            "chunks done",
            "transfer",
        )
        for s in report["streams"]:
            table.add_row(
                s["stream"],
                s["state"],
                f"{s['rows_written']:,}",
                f"{s['rows_estimate']:,}" if s["rows_estimate"] is not None else "?",
                f"{s['rows_rejected']:,}",
                f"{s['chunks_done']}/{s['chunks']}",
                s["transfer"] or "",
            )
        out.print(table)


@app.command()
@reported
def demo(
    rows: int = typer.Option(1_000_000, min=1_000, help="Rows in all three tables together."),
    directory: Path = typer.Option(
        Path(".milepost-demo"), "--dir", help="Where the demo's files go."
    ),
) -> None:
    """Build a sample SQLite database, copy it, kill the copy with SIGKILL, resume, verify."""
    from milepost.demo import run_demo

    raise typer.Exit(run_demo(rows, directory, out))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
