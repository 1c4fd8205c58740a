"""kill -9 at the decisive moments of every phase, aimed rather than random.

Random kills (test_kill.py) land where a run spends its time; the moments that decide
correctness are rare and brief. These SIGKILL the real `milepost run` process at named
crash points (milepost/crash.py): after the schema phase created the tables; with a
batch's rows and its ledger row written but not committed; just after that commit; and
in finalize before the run is marked done. Each is followed by a plain `run`, and the
destination (a table without a primary key, so a doubled row would stay doubled) is
compared with the source row by row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faults import (
    assert_same_rows,
    create_destination,
    create_source,
    database,
    ledger_rows,
    make_rows,
    run_to_crash,
    write_pipeline,
)

ROWS = 3_000
BATCH = 250
POINTS = [
    "schema.after_create",
    "copy.before_commit@3",
    "copy.after_commit@3",
    "finalize.before_done",
]
PAIRS = [("postgresql", "mysql"), ("mysql", "postgresql"), ("sqlite", "sqlite")]
TORTURE_PAIRS = [
    (s, d) for s in ("postgresql", "mysql", "sqlite") for d in ("postgresql", "mysql", "sqlite")
]


def _crash_and_resume(tmp_path: Path, source_family: str, dest_family: str, point: str) -> None:
    context = f"{source_family}->{dest_family} killed at {point}"
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        create_source(source, make_rows(ROWS, seed=7))
        create_destination(dest)
        pipeline = write_pipeline(tmp_path, "crash", source, dest, batch_size=BATCH, workers=1)

        killed = run_to_crash(pipeline, crash_at=point)
        assert killed.returncode == -9, f"{context}: not killed: {killed.stderr}"
        committed = ledger_rows(dest, "crash")
        held = int(dest.sql("SELECT count(*) FROM items")[0][0])
        # The destination holds exactly what the ledger says was committed, whatever the
        # moment: in particular nothing of the batch killed before its commit.
        assert held == committed, f"{context}: {held} rows but the ledger says {committed}"
        name, _, nth = point.partition("@")
        if name == "copy.before_commit":
            assert committed == (int(nth) - 1) * BATCH, context
        if name == "copy.after_commit":
            assert committed == int(nth) * BATCH, context

        resumed = run_to_crash(pipeline)
        assert resumed.returncode == 0, f"{context}: resume failed: {resumed.stderr}"
        assert "took over the lease" in resumed.stderr, resumed.stderr
        assert assert_same_rows(source, dest, context) == ROWS
        assert ledger_rows(dest, "crash") == ROWS, f"{context}: the ledger disagrees"


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize(
    ("source_family", "dest_family"), PAIRS, ids=[f"{s}->{d}" for s, d in PAIRS]
)
def test_kill_at_a_crash_point_then_resume(
    tmp_path: Path, source_family: str, dest_family: str, point: str
) -> None:
    _crash_and_resume(tmp_path, source_family, dest_family, point)


@pytest.mark.torture
@pytest.mark.parametrize("point", [*POINTS, "copy.before_commit@1", "copy.before_commit@12"])
@pytest.mark.parametrize(
    ("source_family", "dest_family"), TORTURE_PAIRS, ids=[f"{s}->{d}" for s, d in TORTURE_PAIRS]
)
def test_torture_kill_at_every_crash_point_on_every_pair(
    tmp_path: Path, source_family: str, dest_family: str, point: str
) -> None:
    _crash_and_resume(tmp_path, source_family, dest_family, point)
