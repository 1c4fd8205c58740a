"""Every branch of `recovery.decide`: fresh, resume, done or refuse."""

from __future__ import annotations

from dataclasses import replace

import pytest

from milepost.ledger import RunRow
from milepost.recovery import decide

FP = "fingerprint-a"


def run_row(**changes: object) -> RunRow:
    row = RunRow(
        pipeline="p",
        run_id="run1",
        fingerprint=FP,
        phase="copy",
        status="failed",
        lease_token=None,
        owner_host=None,
        owner_pid=None,
        owner_started=None,
        heartbeat_at=None,
        started_at=1.0,
        updated_at=2.0,
        message=None,
    )
    return replace(row, **changes)


def test_no_ledger_row_starts_fresh() -> None:
    assert decide(None, FP).action == "fresh"


@pytest.mark.parametrize("phase", ["new", "schema"])
def test_run_that_copied_nothing_yet_starts_fresh(phase: str) -> None:
    d = decide(run_row(phase=phase, fingerprint="other"), FP)
    assert (d.action, d.phase) == ("fresh", "schema")


def test_row_without_run_id_starts_fresh() -> None:
    """The lease row is inserted with an empty run id before the schema phase assigns one."""
    assert decide(run_row(run_id=""), FP).action == "fresh"


@pytest.mark.parametrize(
    "run", [None, run_row(), run_row(fingerprint="other"), run_row(status="done", phase="done")]
)
def test_fresh_flag_wins_over_anything_recorded(run: RunRow | None) -> None:
    d = decide(run, FP, fresh=True)
    assert d.action == "fresh"
    assert "--fresh" in d.reason


@pytest.mark.parametrize("phase", ["copy", "finalize", "done"])
def test_changed_pipeline_is_refused_in_any_later_phase(phase: str) -> None:
    d = decide(run_row(phase=phase, fingerprint="other"), FP)
    assert d.action == "refuse"
    assert d.phase == phase
    assert "run1" in d.reason and "changed" in d.reason


@pytest.mark.parametrize(("phase", "status"), [("done", "done"), ("finalize", "done")])
def test_completed_run_is_done(phase: str, status: str) -> None:
    d = decide(run_row(phase=phase, status=status), FP)
    assert (d.action, d.phase) == ("done", "done")
    assert "already completed" in d.reason


def test_done_phase_is_done_whatever_the_status_says() -> None:
    """A crash between setting phase=done and releasing the lease leaves status 'running'."""
    assert decide(run_row(phase="done", status="running"), FP).action == "done"


@pytest.mark.parametrize("phase", ["copy", "finalize"])
@pytest.mark.parametrize("status", ["running", "paused", "failed"])
def test_interrupted_run_resumes_in_its_phase(phase: str, status: str) -> None:
    d = decide(run_row(phase=phase, status=status), FP)
    assert (d.action, d.phase) == ("resume", phase)
    assert "run1" in d.reason
