"""SIGTERM and SIGINT to the real `milepost run`: pause cleanly, abort at once, resume exactly.

SIGTERM (or one SIGINT) finishes the batches in flight, records them, releases the lease
and exits 3; `status` then says `paused`. A second SIGINT exits 3 at once, mid-batch; the
batch it cut off rolls back with its transaction. Either way the rerun, even with other
`--workers` and `--batch-size`, completes, and the destination (no primary key) equals the
source row by row.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg

from conftest import Database
from faults import (
    Cli,
    assert_same_rows,
    cli_json,
    count_rows,
    create_destination,
    create_source,
    database,
    ledger_rows,
    make_rows,
    seeded,
    write_pipeline,
)

ROWS = 30_000
PIPELINE = "signals"


def _prepare(tmp_path: Path, source: Database, dest: Database) -> tuple[Path, int]:
    _, seed = seeded(f"signals {source.family}->{dest.family}")
    create_source(source, make_rows(ROWS, seed))
    create_destination(dest)
    pipeline = write_pipeline(tmp_path, PIPELINE, source, dest, batch_size=500, workers=2)
    return pipeline, seed


def _batch_rows(run: Cli) -> int:
    return sum(e.get("rows", 0) for e in run.events if e.get("kind") == "batch")


def test_sigterm_pauses_and_a_rerun_with_other_tuning_completes(tmp_path: Path) -> None:
    with (
        database("postgresql", tmp_path, "src") as source,
        database("postgresql", tmp_path, "dst") as dest,
    ):
        _sigterm_then_rerun(tmp_path, source, dest)


def _sigterm_then_rerun(tmp_path: Path, source: Database, dest: Database) -> None:
    pipeline, seed = _prepare(tmp_path, source, dest)

    run = Cli.run(pipeline)
    assert run.wait_for("batch") is not None
    run.signal(signal.SIGTERM)
    rc = run.finish()
    assert rc == 3, run.describe(rc)
    assert "stopping after the batches in flight" in run.stderr
    assert "paused" in run.stderr

    status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
    written = status["rows_written"]
    assert status["status"] == "paused", status
    assert status["lease"] is None, status
    assert 0 < written < ROWS, status
    # What was reported, recorded and written are the same rows, each once.
    assert written == _batch_rows(run) == count_rows(dest) == ledger_rows(dest, PIPELINE)

    rerun = Cli.run(pipeline, "--workers", "1", "--batch-size", "777")
    rc = rerun.finish()
    assert rc == 0, rerun.describe(rc)
    started = next(e for e in rerun.events if e.get("kind") == "run")
    assert started["data"]["resumed"] is True, started
    assert not [m for m in rerun.messages() if "took over" in m], "the lease was not released"
    assert _batch_rows(rerun) == ROWS - written
    assert_same_rows(source, dest, f"after SIGTERM and a rerun (seed {seed})")


def test_second_sigint_aborts_mid_batch_and_a_rerun_completes(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    """The test holds the pipeline's ledger row locked, so from then on every batch of the
    runner stops inside its transaction (rows written, ledger row waiting), and a clean stop
    cannot finish either (releasing the lease needs that row): the second SIGINT is the only
    way out, and it must take the process down at once."""
    pipeline, seed = _prepare(tmp_path, lite, pg)
    rng, _ = seeded("second SIGINT")

    run = Cli.run(pipeline)
    assert run.wait_for("batch", rng.randint(1, 5)) is not None
    with _ledger_row_locked(pg):
        run.signal(signal.SIGINT)
        assert run.wait_for_stderr("stopping after the batches in flight"), run.stderr
        run.signal(signal.SIGINT)
        rc = run.finish()
        assert rc == 3, run.describe(rc)
        assert "aborted" in run.stderr, run.stderr
    committed = ledger_rows(pg, PIPELINE)
    assert 0 < committed < ROWS
    assert committed == count_rows(pg) == _batch_rows(run), "the cut-off batch left rows behind"
    status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
    assert (status["status"], status["lease"]) == ("interrupted", None), status

    rerun = Cli.run(pipeline, "--workers", "1")
    rc = rerun.finish()
    assert rc == 0, rerun.describe(rc)
    assert any("took over" in m for m in rerun.messages()), rerun.events[:5]
    assert_same_rows(lite, pg, f"after two SIGINTs and a rerun (seed {seed})")


@contextlib.contextmanager
def _ledger_row_locked(dest: Database) -> Iterator[None]:
    """Hold the pipeline's `_milepost_runs` row FOR UPDATE until the block ends."""
    with psycopg.connect(dest.url) as conn:
        conn.execute("SELECT 1 FROM _milepost_runs WHERE pipeline = %s FOR UPDATE", (PIPELINE,))
        try:
            yield
        finally:
            conn.rollback()
