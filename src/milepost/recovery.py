"""Fresh, resume, done or refuse: the decision a run starts with, as a pure function.

Given what the ledger recorded (or nothing), the pipeline's fingerprint and the
operator's flags, say what to do and why. No database is touched here, so every
case is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from milepost.keyset import Key
from milepost.ledger import RunRow

Action = Literal["fresh", "resume", "done", "next", "refuse"]

# Phases in the order a run passes them; "new" and "schema" hold no copied rows yet.
PHASES = ("new", "schema", "copy", "verify", "finalize", "done")


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    phase: str = "schema"


def decide(
    run: RunRow | None, fingerprint: str, *, fresh: bool = False, incremental: bool = False
) -> Decision:
    """`incremental`: the pipeline has a `mode: incremental` stream, so a completed run is
    followed by the next one, which copies what is new since."""
    if fresh:
        return Decision("fresh", "--fresh was given: the destination tables are emptied first")
    if run is None or not run.run_id or run.phase in ("new", "schema"):
        return Decision("fresh", "no copied rows are recorded for this pipeline")
    if run.fingerprint != fingerprint:
        return Decision(
            "refuse",
            f"the pipeline changed since run {run.run_id} started (its source, destination, "
            "streams, cursors or filters differ), so the recorded progress does not describe "
            "this pipeline",
            run.phase,
        )
    if (run.status == "done" or run.phase == "done") and incremental:
        return Decision(
            "next", f"run {run.run_id} completed; this run copies what is new since", "schema"
        )
    if run.status == "done" or run.phase == "done":
        return Decision("done", f"run {run.run_id} already completed", "done")
    return Decision("resume", f"resuming run {run.run_id} in phase {run.phase}", run.phase)


# --- has the source drifted since the rows were copied? ---------------------------------

# A stream is only judged once it has copied this many rows: an estimate is too rough to
# say anything about a handful.
DRIFT_MIN_ROWS = 1000


@dataclass(frozen=True)
class StreamFacts:
    """What the ledger recorded of one unfinished stream, and what its source shows now.

    `now_*` are None when unknown; the runner gathers them, and a failure to gather
    them is an error (retried when transient), never taken for drift.
    """

    stream: str
    rows_written: int
    recorded_min: Key | None
    now_min: Key | None
    now_empty: bool
    now_rows: int | None  # counted, when the planner's estimate looked too low


@dataclass(frozen=True)
class Drift:
    stream: str
    reason: str


def find_drift(facts: list[StreamFacts]) -> list[Drift]:
    """The unfinished streams whose copied rows no longer describe their source.

    Three signs, each cheap to see: the source is empty now; its smallest cursor is
    beyond the smallest it had, so the first rows copied are gone (trimmed, or
    truncated and refilled); or it holds fewer than half the rows already copied (the
    runner counts only when the planner's estimate says so, since estimates go stale).
    Single rows deleted from a live table are none of these, and are not drift: the
    copy simply has them.
    """
    found = []
    for f in facts:
        if f.rows_written == 0:
            continue
        if f.now_empty:
            found.append(
                Drift(f.stream, f"its source is empty now, but {f.rows_written:,} rows were copied")
            )
        elif (
            f.recorded_min is not None
            and f.now_min is not None
            and _ordered_alike(f.now_min)
            and f.now_min > f.recorded_min
        ):
            found.append(
                Drift(
                    f.stream,
                    f"its smallest cursor is now {_shown(f.now_min)}, was "
                    f"{_shown(f.recorded_min)}: rows below the watermark are gone from the source",
                )
            )
        elif (
            f.now_rows is not None
            and f.rows_written >= DRIFT_MIN_ROWS
            and f.now_rows < f.rows_written // 2
        ):
            found.append(
                Drift(
                    f.stream,
                    f"its source holds {f.now_rows:,} rows, but {f.rows_written:,} were "
                    "already copied",
                )
            )
    return found


def age_warning(last_saved: float | None, now: float, max_age_hours: float | None) -> str | None:
    """A warning when the progress being resumed is older than checkpoints are kept."""
    if last_saved is None or max_age_hours is None:
        return None
    age_h = (now - last_saved) / 3600
    if age_h <= max_age_hours:
        return None
    age = f"{age_h:.0f} hours" if age_h >= 2 else f"{age_h * 3600:.0f} seconds"
    return (
        f"the progress being resumed was saved {age} ago, more than max_age_hours "
        f"({max_age_hours:g}); the source may have changed in ways milepost cannot see"
    )


def _ordered_alike(key: Key) -> bool:
    """Python orders numbers, dates and times as every database does; text it may not
    (collations), so a text cursor is not judged by its minimum."""
    return not any(isinstance(v, str | bytes) for v in key)


def _shown(key: Key) -> str:
    return "(" + ", ".join(repr(v) for v in key) + ")"
