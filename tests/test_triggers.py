"""`checkpoints.triggers.Due`, the counter behind `every_records` and `every_seconds`, on a
fake clock; and how the run's checkpoint thread turns what is due into checkpoints.

The rule: count committed rows; a checkpoint is due once N or more were counted, or T seconds
or more have passed, whichever comes first, and then both the count and the time start again.
Rows past N count towards the next checkpoint (less whole multiples of N: one big batch makes
one checkpoint due, not several); after a checkpoint due by time, the count starts at zero.
Both limits are inclusive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from milepost import ledger
from milepost.checkpoints import CheckpointSettings
from milepost.checkpoints.triggers import Due, RunCheckpoints
from milepost.config import build_pipeline


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 5_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def due(
    every_records: int | None = None, every_seconds: float | None = None
) -> tuple[Due, FakeClock]:
    clock = FakeClock()
    settings = CheckpointSettings(every_records=every_records, every_seconds=every_seconds)
    return Due(settings, clock=clock), clock


def test_rows_are_counted_until_every_records_is_reached() -> None:
    counter, _ = due(every_records=100)
    assert [counter.add(40) for _ in range(3)] == [False, False, True]  # 40, 80, 120
    # The 20 rows beyond 100 count towards the next: 60, 100.
    assert [counter.add(40) for _ in range(2)] == [False, True]


def test_every_n_records_over_a_copy_is_total_over_n_checkpoints() -> None:
    """2,000,000 rows in batches of 30,000 (one of 20,000 at the end): every 100,000 rows
    makes 20 checkpoints due, one per 100,000, not fewer because of rounding up."""
    counter, _ = due(every_records=100_000)
    batches = [30_000] * 66 + [20_000]
    assert sum(batches) == 2_000_000
    assert sum(counter.add(b) for b in batches) == 20


def test_every_records_is_inclusive() -> None:
    counter, _ = due(every_records=100)
    assert counter.add(100) is True
    assert counter.add(99) is False
    assert counter.add(1) is True


def test_a_batch_larger_than_every_records_makes_one_checkpoint_due_not_several() -> None:
    counter, _ = due(every_records=100)
    assert counter.add(1_050) is True
    assert counter.add(49) is False  # 50 carried + 49
    assert counter.add(1) is True


def test_empty_batches_never_make_a_checkpoint_due_by_rows() -> None:
    counter, clock = due(every_records=1)
    for _ in range(10):
        clock.advance(10_000)
        assert counter.add(0) is False
    assert counter.add(1) is True


def test_every_seconds_counts_from_when_the_counter_was_made() -> None:
    counter, clock = due(every_seconds=60)
    clock.advance(59.9)
    assert counter.add(10) is False
    clock.advance(0.1)  # exactly 60 s: inclusive
    assert counter.add(0) is True


def test_the_time_starts_again_when_one_is_due() -> None:
    counter, clock = due(every_seconds=60)
    clock.advance(61)
    assert counter.add(1) is True  # a second late: the next is due 60 s from now, not 59
    clock.advance(59)
    assert counter.add(1) is False
    clock.advance(1)
    assert counter.add(1) is True


def test_time_is_only_looked_at_when_rows_are_added() -> None:
    """Nothing happens between batches: a long batch makes the checkpoint due after it."""
    counter, clock = due(every_seconds=60)
    clock.advance(3_600)
    assert counter.add(5) is True
    assert counter.add(5) is False  # one checkpoint for the hour, not sixty


def test_rows_due_first_restart_the_time_too() -> None:
    counter, clock = due(every_records=100, every_seconds=60)
    clock.advance(50)
    assert counter.add(100) is True
    clock.advance(50)  # 100 s since the start, 50 since the last checkpoint
    assert counter.add(0) is False
    clock.advance(10)
    assert counter.add(0) is True


def test_time_due_first_restarts_the_row_count_too() -> None:
    counter, clock = due(every_records=100, every_seconds=60)
    assert counter.add(90) is False
    clock.advance(60)
    assert counter.add(5) is True  # by time, with 95 rows counted
    assert counter.add(90) is False  # 90, not 185
    assert counter.add(10) is True


def test_neither_limit_set_is_never_due() -> None:
    counter, clock = due()
    for _ in range(5):
        clock.advance(1e9)
        assert counter.add(10**9) is False


def test_the_default_is_every_fifteen_minutes_and_no_row_limit() -> None:
    clock = FakeClock()
    counter = Due(CheckpointSettings(), clock=clock)
    assert counter.add(10**12) is False
    clock.advance(899)
    assert counter.add(1) is False
    clock.advance(1)
    assert counter.add(1) is True


# --- the run's checkpoint thread -------------------------------------------------------------


class FakeKeeper:
    """Records what it was asked to take, instead of writing documents."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, str | None]] = []

    def take(self, conn: Any, kind: str, *, reason: str | None = None, **_: Any) -> Any:
        self.taken.append((kind, reason))
        return None


def checkpoints(tmp_path: Path, **settings: Any) -> tuple[RunCheckpoints, FakeKeeper]:
    pipeline = build_pipeline(
        {
            "name": "triggers",
            "source": {"url": f"sqlite:///{tmp_path / 'src.db'}"},
            "destination": {"url": f"sqlite:///{tmp_path / 'dst.db'}"},
            "streams": [{"table": "items"}],
            "checkpoints": {"every_seconds": None, **settings},
        }
    )
    keeper = FakeKeeper()
    return RunCheckpoints(pipeline, keeper, lambda event: None, lambda: (0, 0)), keeper  # type: ignore[arg-type]


def test_automatic_checkpoints_due_while_one_waits_are_taken_once(tmp_path: Path) -> None:
    """A thread that falls behind takes one checkpoint for what became due meanwhile, not a
    backlog of them (each would show the same, latest, ledger)."""
    run, keeper = checkpoints(tmp_path, every_records=10)
    for _ in range(5):
        run.after_batch(10)  # due each time; the thread has not started, so one waits
    run.request_manual('{"token": "t1", "reason": "asked"}')
    run.request_manual('{"token": "t1", "reason": "asked"}')  # the same request, read again
    run.start(ledger.Lease("triggers", "token"))
    run.finish()
    assert keeper.taken == [("automatic", None), ("manual", "asked")]


@pytest.mark.parametrize(
    ("setting", "kind"), [("phase_boundaries", "phase"), ("before_risky", "before_risky")]
)
def test_a_trigger_turned_off_takes_nothing(tmp_path: Path, setting: str, kind: str) -> None:
    on, on_keeper = checkpoints(tmp_path)
    off, off_keeper = checkpoints(tmp_path, **{setting: False})
    assert on.at(None, kind, "why") is None  # the fake keeper returns None for what it takes
    assert off.at(None, kind, "why") is None
    assert on_keeper.taken == [(kind, "why")]
    assert off_keeper.taken == []
