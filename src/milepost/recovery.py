"""Fresh, resume, done or refuse: the decision a run starts with, as a pure function.

Given what the ledger recorded (or nothing), the pipeline's fingerprint and the
operator's flags, say what to do and why. No database is touched here, so every
case is tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from milepost.ledger import RunRow

Action = Literal["fresh", "resume", "done", "refuse"]

# Phases in the order a run passes them; "new" and "schema" hold no copied rows yet.
PHASES = ("new", "schema", "copy", "finalize", "done")


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    phase: str = "schema"


def decide(run: RunRow | None, fingerprint: str, *, fresh: bool = False) -> Decision:
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
    if run.status == "done" or run.phase == "done":
        return Decision("done", f"run {run.run_id} already completed", "done")
    return Decision("resume", f"resuming run {run.run_id} in phase {run.phase}", run.phase)
