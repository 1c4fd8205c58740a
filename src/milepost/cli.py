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
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from milepost.errors import EXIT_FAILED, EXIT_MISMATCH, EXIT_PAUSED, MilepostError
from milepost.events import Event
from milepost.keyset import show_key

# Each command imports what it uses, in its body: the runner, the verifier and the checkpoint
# machinery bring SQLAlchemy, sqlglot, pydantic models and more (~0.4 s), which `--help`,
# `status` or `pause` need not pay for.
if TYPE_CHECKING:
    from milepost.checkpoints.keeper import Listed
    from milepost.runner import Runner
    from milepost.verify_report import Report

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Resumable, verifiable data migrations. Exit codes: 0 done, 1 failed, 2 bad usage "
    "or configuration, 3 paused (resumable), 4 verification found differences.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
# Not wrapped at the terminal's (or a pipe's default 80) columns either: ids, run ids and
# paths printed here are copied into the next command or read by scripts, line by line.
out = Console(highlight=False, soft_wrap=True)

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
    from milepost.config import load_pipeline
    from milepost.progress import JsonLines, PlainLines, RichProgress, quiet
    from milepost.runner import Runner

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
        if style != "plain":
            listener = _alerts_to_stderr(listener)
        _run_with_signals(Runner(p, fresh=fresh, on_event=listener, origin=str(pipeline)))


def _alerts_to_stderr(listener: Callable[[Event], None]) -> Callable[[Event], None]:
    """An alert is for a person, whatever the progress style: cron mails stderr."""

    def tee(event: Event) -> None:
        listener(event)
        if event.kind == "alert" and event.text:
            err.print(event.text, markup=False)

    return tee


def _run_with_signals(runner: Runner) -> None:
    """SIGINT/SIGTERM stop after the batches in flight; a second SIGINT aborts at once."""

    def on_signal(signum: int, frame: Any) -> None:
        if runner.stop.is_set() and signum == signal.SIGINT:
            err.print("milepost: aborted; the last committed batch is kept.")
            os._exit(EXIT_PAUSED)
        runner.request_stop(f"stopped by {signal.Signals(signum).name}", announce=False)
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
    from milepost.config import load_pipeline
    from milepost.pause import request_pause

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
    from milepost.config import load_pipeline
    from milepost.status import pipeline_status

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
            "watermark (last completed run)",
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
                _watermark_cell(s),
            )
        out.print(table)


def _watermark_cell(stream: dict[str, Any]) -> str:
    """An incremental stream's high water, and how many runs have completed."""
    pages = stream.get("resources")  # an HTTP or Python stream: its resource queue
    if pages is not None:
        high = pages.get("high_water")
        return f"{pages['resources_done']}/{pages['resources']} resources, " + (
            f"{pages['pages']:,} pages" + (f"; high water {high}" if high is not None else "")
        )
    done = stream.get("completed")
    if stream.get("mode") != "incremental" or not done:
        return ""
    nulls = f", NULL part {done['null_watermark']}" if done.get("null_watermark") else ""
    return f"{done['watermark']}{nulls} after {done['completed_runs']} run(s)"


checkpoints_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="List, show, create, restore and clear a pipeline's checkpoints.",
)
app.add_typer(checkpoints_app, name="checkpoints")
CHECKPOINT_ID = typer.Argument(..., help="A checkpoint id, as listed.", show_default=False)


@checkpoints_app.command("list")
@reported
def checkpoints_list(
    pipeline: Path = PIPELINE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every checkpoint of PIPELINE in its store, oldest first; unreadable ones say why."""
    from milepost.checkpoints.keeper import CheckpointKeeper
    from milepost.config import load_pipeline

    keeper = CheckpointKeeper(load_pipeline(pipeline))
    entries = keeper.list()
    if as_json:
        out.print_json(json.dumps([_listed(e) for e in entries]))
        return
    if not entries:
        out.print(f"No checkpoints in {keeper.location}.", markup=False)
        return
    # One line each, id first: it is what an operator copies into `restore` or `rollback`,
    # and a table squeezed into 80 columns would cut it.
    for e in entries:
        cp = e.checkpoint
        if cp is None:
            out.print(f"{e.id}  unreadable: {e.problem}", markup=False)
            continue
        out.print(
            f"{cp.id}  {cp.kind:<12} {cp.status:<10} {cp.position.phase:<8} "
            f"{cp.position.rows_done:>12,} rows" + (f"  {cp.reason}" if cp.reason else ""),
            markup=False,
        )


@checkpoints_app.command("show")
@reported
def checkpoints_show(
    pipeline: Path = PIPELINE,
    checkpoint_id: str = CHECKPOINT_ID,
    as_json: bool = typer.Option(False, "--json", help="Print the whole document as JSON."),
) -> None:
    """One checkpoint: where the run stood, every stream, and its audit trail."""
    from milepost.checkpoints.keeper import CheckpointKeeper
    from milepost.config import load_pipeline

    cp = CheckpointKeeper(load_pipeline(pipeline)).load(checkpoint_id)
    if as_json:
        out.print_json(json.dumps(cp.to_document()))
        return
    pos = cp.position
    out.print(
        f"{cp.id}: {cp.kind}, {cp.status}, taken {cp.created_at:%Y-%m-%d %H:%M:%S} UTC "
        f"of run {cp.run_id}",
        markup=False,
    )
    if cp.reason:
        out.print(f"reason: {cp.reason}", markup=False)
    where = f"phase {pos.phase}, {pos.rows_done:,} rows"
    if pos.stream is not None:
        where += f"; at stream {pos.stream}, chunk {pos.chunk}, batch {pos.batch}"
    out.print(where, markup=False)
    errors = cp.errors
    out.print(
        f"errors {errors.error_count}, rows set aside {errors.rows_set_aside}, "
        f"retries {errors.retries}",
        markup=False,
    )
    if cp.streams:
        table = Table("stream", "state", "rows", "rows (estimate)", "chunks done")
        for s in cp.streams:
            table.add_row(
                s.name,
                s.state,
                f"{s.rows_done:,}",
                f"{s.rows_total:,}" if s.rows_total is not None else "?",
                f"{sum(c.status == 'done' for c in s.chunks)}/{len(s.chunks)}",
            )
        out.print(table)
    out.print("audit trail:", markup=False)
    for entry in cp.audit:
        detail = f": {entry.detail}" if entry.detail else ""
        out.print(f"  {entry.at:%Y-%m-%d %H:%M:%S} {entry.action}{detail}", markup=False)


@checkpoints_app.command("create")
@reported
def checkpoints_create(
    pipeline: Path = PIPELINE,
    reason: str | None = typer.Option(None, help="Why, kept with the checkpoint."),
    timeout: float = typer.Option(120.0, min=1, help="How long to wait for a running run."),
) -> None:
    """A checkpoint now: of the idle run, or taken by the running one after its batch."""
    from milepost.checkpoints.on_demand import create_checkpoint
    from milepost.config import load_pipeline

    out.print(create_checkpoint(load_pipeline(pipeline), reason, timeout_s=timeout))


@checkpoints_app.command("restore")
@reported
def checkpoints_restore(pipeline: Path = PIPELINE, checkpoint_id: str = CHECKPOINT_ID) -> None:
    """Rewind the run to a checkpoint: rows written after it are removed; `run` continues."""
    from milepost.config import load_pipeline
    from milepost.rewind import restore

    done = restore(load_pipeline(pipeline), checkpoint_id)
    out.print(
        f"Restored to {done.checkpoint.id}: {done.rows_removed:,} destination rows written "
        f"after it removed. `milepost run {pipeline}` continues from there.",
        markup=False,
    )


@checkpoints_app.command("clear")
@reported
def checkpoints_clear(
    pipeline: Path = PIPELINE,
    every_pipeline: bool = typer.Option(
        False, "--all", help="Every pipeline's checkpoints in this store, the current runs' too."
    ),
) -> None:
    """Remove the checkpoints of finished runs (and their backups); --all: every one."""
    from milepost.checkpoints.clearing import clear_checkpoints
    from milepost.config import load_pipeline

    cleared = clear_checkpoints(load_pipeline(pipeline), every_pipeline=every_pipeline)
    out.print(cleared, markup=False)


@checkpoints_app.command("keygen")
@reported
def checkpoints_keygen() -> None:
    """Print a fresh AES-256 key (64 hex digits) for `checkpoints.encrypt`."""
    from milepost.checkpoints.codec import generate_key

    out.print(generate_key())


@app.command()
@reported
def rollback(
    pipeline: Path = PIPELINE,
    to: str = typer.Option(..., "--to", help="The before_risky checkpoint to go back to."),
) -> None:
    """Undo a risky step (write: replace, --fresh): put the emptied tables back."""
    from milepost.config import load_pipeline
    from milepost.rewind import rollback as rollback_to

    done = rollback_to(load_pipeline(pipeline), to)
    out.print(
        f"Rolled back to {done.checkpoint.id}: {', '.join(done.tables_restored)} restored from "
        "their backups, and the ledger as it was then.",
        markup=False,
    )


@app.command()
@reported
def verify(
    pipeline: Path = PIPELINE,
    repair: bool = typer.Option(
        False, "--repair", help="Re-copy the ranges that differ, then verify them again."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    sample: float = typer.Option(
        1.0, min=0.0001, max=1.0, help="Compare this share of each stream's chunks (1 = all)."
    ),
    workers: int | None = typer.Option(
        None, min=1, max=64, help="Ranges compared at once (overrides the file)."
    ),
) -> None:
    """Compare what PIPELINE's destination holds with its source, chunk by chunk.

    Exits 0 when they are equal and 4 when they differ (after --repair: when the
    repaired ranges still differ).
    """
    from milepost.config import load_pipeline
    from milepost.progress import PlainLines, quiet
    from milepost.repair import repair as repair_ranges
    from milepost.verify import verify as verify_pipeline
    from milepost.verify_report import key_doc

    p = load_pipeline(pipeline).with_overrides(workers=workers)
    # The table below says per stream what the per-stream events would: only messages.
    plain = PlainLines(err)
    listener = quiet if as_json else (lambda e: plain(e) if e.kind == "message" else None)
    report = verify_pipeline(p, on_event=listener, fraction=sample)
    doc = report.as_dict()
    final = report
    if repair and not report.equal:
        done = repair_ranges(p, report.differences, on_event=listener)
        final = verify_pipeline(p, on_event=listener, ranges=report.differences)
        doc["repaired"] = [
            {
                "stream": r.stream,
                "lo": key_doc(r.lo),
                "hi": key_doc(r.hi),
                "rows_deleted": r.rows_deleted,
                "rows_copied": r.rows_copied,
            }
            for r in done
        ]
        doc["after_repair"] = final.as_dict()
    if as_json:
        out.print_json(json.dumps(doc, default=str))
    else:
        _print_verification(report)
        if repair and not report.equal:
            state = "equal" if final.equal else "STILL DIFFERENT"
            out.print(f"after repair: {len(doc['repaired'])} range(s) re-copied; {state}")
    if not final.equal:
        raise typer.Exit(EXIT_MISMATCH)


def _print_verification(report: Report) -> None:
    table = Table(
        "stream", "result", "source rows", "destination rows", "chunks compared", "method"
    )
    for s in report.streams:
        compared = f"{s.chunks_compared}/{s.chunks}"
        if s.chunks_pending:
            compared += f" ({s.chunks_pending} not copied yet)"
        table.add_row(
            s.stream,
            "equal" if s.equal else f"{s.chunks_differing} chunk(s) differ",
            f"{s.source_rows:,}",
            f"{s.destination_rows:,}",
            compared,
            s.method,
        )
    out.print(table)
    for d in report.differences:
        out.print(
            f"{d.stream}: rows after {show_key(d.lo, 'the start')} up to "
            f"{show_key(d.hi, 'the end')} differ "
            f"({d.source_rows:,} in the source, {d.destination_rows:,} in the destination)",
            markup=False,
        )
    verdict = "equal" if report.equal else f"{len(report.differences)} differing range(s)"
    out.print(f"{report.pipeline}: {verdict} ({report.seconds:.1f} s)", markup=False)


def _listed(entry: Listed) -> dict[str, Any]:
    cp = entry.checkpoint
    if cp is None:
        return {"id": entry.id, "status": "unreadable", "problem": entry.problem}
    return {
        "id": cp.id,
        "run_id": cp.run_id,
        "kind": cp.kind,
        "status": cp.status,
        "created_at": cp.created_at.isoformat(),
        "phase": cp.position.phase,
        "rows_done": cp.position.rows_done,
        "reason": cp.reason,
    }


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
