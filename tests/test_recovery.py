"""Every branch of `recovery.decide` (fresh, resume, done or refuse), of `find_drift` (has the
source changed under the rows already copied?) and of `age_warning`: pure, no database."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from milepost.ledger import RunRow
from milepost.recovery import DRIFT_MIN_ROWS, Drift, StreamFacts, age_warning, decide, find_drift

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


# --- find_drift: has the source changed under the copied rows? ------------------------------


def facts(
    stream: str = "items",
    *,
    written: int = 5_000,
    recorded_min: tuple[object, ...] | None = (1,),
    now_min: tuple[object, ...] | None = (1,),
    empty: bool = False,
    counted: int | None = None,
) -> StreamFacts:
    return StreamFacts(stream, written, recorded_min, now_min, empty, counted)


def test_an_unchanged_source_is_no_drift() -> None:
    assert find_drift([facts(), facts("orders", counted=5_000)]) == []


def test_an_empty_source_under_copied_rows_is_drift_naming_the_stream_and_rows() -> None:
    (drift,) = find_drift([facts(empty=True, now_min=None)])
    assert drift == Drift("items", "its source is empty now, but 5,000 rows were copied")


def test_a_stream_that_copied_nothing_is_never_drift() -> None:
    """Nothing of it is in the destination yet, so nothing can be wrong with it."""
    assert find_drift([facts(written=0, empty=True, now_min=None)]) == []
    assert find_drift([facts(written=0, now_min=(99,), counted=0)]) == []


def test_rows_gone_below_the_recorded_smallest_cursor_is_drift_showing_both() -> None:
    (drift,) = find_drift([facts(recorded_min=(3,), now_min=(311,))])
    assert drift.stream == "items"
    assert drift.reason.startswith("its smallest cursor is now (311), was (3)")
    assert "rows below the watermark are gone" in drift.reason


def test_composite_cursors_compare_as_tuples() -> None:
    day = dt.date(2024, 1, 1)
    later = facts(recorded_min=(day, 7), now_min=(day, 8))
    same_day_earlier_id = facts("b", recorded_min=(day, 7), now_min=(day, 2))
    (drift,) = find_drift([later, same_day_earlier_id])
    assert drift.stream == "items"
    assert "8)" in drift.reason and "7)" in drift.reason


def test_a_text_cursor_is_not_judged_by_its_smallest_value() -> None:
    """Python's order of strings is not the database's collation: 'b' < 'a' can hold in
    the source, so a text minimum that looks higher proves nothing."""
    assert find_drift([facts(recorded_min=("apple",), now_min=("banana",))]) == []


@pytest.mark.parametrize("now_min", [(1,), (0,), (-5,)])
def test_a_smallest_cursor_the_same_or_lower_is_no_drift(now_min: tuple[int]) -> None:
    """Rows inserted below the old minimum are new rows, not lost ones."""
    assert find_drift([facts(recorded_min=(1,), now_min=now_min)]) == []


def test_an_unknown_smallest_cursor_is_not_taken_for_drift() -> None:
    assert find_drift([facts(recorded_min=None, now_min=(9,))]) == []
    assert find_drift([facts(recorded_min=(1,), now_min=None)]) == []


def test_a_source_holding_under_half_the_copied_rows_is_drift() -> None:
    (drift,) = find_drift([facts(written=5_000, counted=2_499)])
    assert drift.reason == "its source holds 2,499 rows, but 5,000 were already copied"


@pytest.mark.parametrize("counted", [2_500, 4_000, 9_000, None])
def test_half_the_copied_rows_or_more_or_no_count_is_no_drift(counted: int | None) -> None:
    """Single rows deleted from a live table are not drift: the copy simply has them."""
    assert find_drift([facts(written=5_000, counted=counted)]) == []


def test_the_count_is_only_judged_once_enough_rows_were_copied() -> None:
    below = DRIFT_MIN_ROWS - 1
    assert find_drift([facts(written=below, counted=0)]) == []
    (drift,) = find_drift([facts(written=DRIFT_MIN_ROWS, counted=DRIFT_MIN_ROWS // 2 - 1)])
    assert "already copied" in drift.reason


def test_an_empty_source_is_reported_as_empty_whatever_else_is_known() -> None:
    (drift,) = find_drift([facts(empty=True, recorded_min=(1,), now_min=(50,), counted=0)])
    assert drift.reason.startswith("its source is empty now")


def test_each_drifted_stream_is_reported_once_in_order() -> None:
    found = find_drift(
        [
            facts("a", empty=True, now_min=None),
            facts("b"),
            facts("c", recorded_min=(1,), now_min=(2,)),
            facts("d", counted=1),
        ]
    )
    assert [d.stream for d in found] == ["a", "c", "d"]


# --- age_warning: how old is the progress being resumed? ------------------------------------

HOUR = 3_600.0


def test_progress_younger_than_max_age_gives_no_warning() -> None:
    now = 1_000_000.0
    assert age_warning(now - 167 * HOUR, now, 168) is None
    assert age_warning(now, now, 168) is None


def test_progress_exactly_max_age_old_gives_no_warning() -> None:
    now = 1_000_000.0
    assert age_warning(now - 168 * HOUR, now, 168) is None


def test_progress_older_than_max_age_warns_with_both_ages() -> None:
    now = 10_000_000.0
    warning = age_warning(now - 200 * HOUR, now, 168)
    assert warning is not None
    assert warning.startswith("the progress being resumed was saved 200 hours ago")
    assert "more than max_age_hours (168)" in warning
    assert "the source may have changed" in warning


def test_a_fractional_max_age_is_shown_as_written() -> None:
    now = 10_000_000.0
    warning = age_warning(now - 2 * HOUR, now, 1.5)
    assert warning is not None and "max_age_hours (1.5)" in warning and "saved 2 hours" in warning


@pytest.mark.parametrize(("saved", "max_age"), [(None, 168.0), (0.0, None), (None, None)])
def test_no_time_or_no_limit_gives_no_warning(saved: float | None, max_age: float | None) -> None:
    assert age_warning(saved, 10**9, max_age) is None
