"""`milepost pause` from another process: the real runner stops after its batches in flight,
says `paused`, and a rerun with other tuning finishes exactly.

The runner reads a pause request from the ledger once a second, and `milepost pause` itself
takes most of a second to start, so a small copy would be over before the request lands. The
runs here are held at a chosen row by a trigger on the destination (`gates.RowGate`): the
batches before it commit, the one writing it waits, and the run cannot finish. The test lets
that batch through only once the runner has acted on the request (`gates.wait_until_pause_seen`),
so the run must stop rather than finish: no sleeps, no luck.

Covered elsewhere, not repeated here: a second runner beside a live one is refused with exit 2
naming the holder's pid and host, and the first finishes (test_lease.py,
test_real_runner_holds_the_lease_against_a_second_runner); a run killed with SIGKILL is taken
over at once by the next `run`, which says "took over the lease" (test_kill.py, every kill;
test_lease.py, test_exited_holder_is_taken_over_at_once).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

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
from gates import RowGate, wait_for_pause_request, wait_until_pause_seen, wait_until_quiet
from servers import PrivatePostgres

ROWS = 3_000
BATCH = 50
PIPELINE = "pausing"


def _batch_rows(run: Cli) -> int:
    return sum(e.get("rows", 0) for e in run.events if e.get("kind") == "batch")


def _pause(pipeline: Path, *extra: str) -> Cli:
    """`milepost pause PIPELINE` as a child process; its lines of text are read as events."""
    return Cli("pause", str(pipeline), *extra, cwd=pipeline.parent, timeout_s=120)


def _with_retry(pipeline: Path, retry: dict[str, float]) -> None:
    doc = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    doc["retry"] = retry
    pipeline.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def _said(cli: Cli) -> str:
    return " ".join(e.get("text", "") for e in cli.events)


@contextlib.contextmanager
def _job(
    tmp_path: Path,
) -> Iterator[tuple[Database, Database, Path, list[int], int, contextlib.ExitStack]]:
    """A PostgreSQL source of ROWS rows, a PostgreSQL destination without a primary key, a
    pipeline with two workers (three chunks of about 1,000 rows each), and a stack that
    closes what the test opens (a gate) before the databases are dropped."""
    with (
        database("postgresql", tmp_path, "src") as source,
        database("postgresql", tmp_path, "dst") as dest,
        contextlib.ExitStack() as stack,
    ):
        _, seed = seeded("pause")
        rows = make_rows(ROWS, seed)
        create_source(source, rows)
        create_destination(dest)
        pipeline = write_pipeline(tmp_path, PIPELINE, source, dest, batch_size=BATCH, workers=2)
        yield source, dest, pipeline, [r[0] for r in rows], seed, stack


def test_pause_stops_after_a_committed_batch_and_a_rerun_with_other_tuning_finishes(
    tmp_path: Path,
) -> None:
    with _job(tmp_path) as (source, dest, pipeline, ids, seed, stack):
        gate = stack.enter_context(RowGate(dest))
        # The middle row and the last one: whichever chunks the two workers take, both end
        # up waiting at one of them, with the chunks before committed and ~450 rows still to go.
        gate.hold([ids[len(ids) // 2], ids[-1]], "block")
        run = Cli.run(pipeline)
        assert run.wait_for("batch") is not None, run.describe(run.finish())
        pause = _pause(pipeline)
        wait_for_pause_request(dest, PIPELINE, pause.proc)
        wait_until_pause_seen(dest, lambda: run.proc.poll() is None)
        assert pause.proc.poll() is None, "pause returned while the run still ran"
        gate.release()

        rc = run.finish()
        assert rc == 3, run.describe(rc)
        assert "paused" in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert not [e for e in run.events if e.get("kind") == "finished"], run.events[-3:]
        prc = pause.finish()
        assert prc == 0, pause.describe(prc)
        assert f"Pipeline '{PIPELINE}' stopped (status: paused)" in _said(pause), pause.events

        status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
        written = status["rows_written"]
        assert (status["status"], status["lease"]) == ("paused", None), status
        assert 0 < written < ROWS, status
        # What was reported, recorded and written are the same rows, each once.
        assert written == _batch_rows(run) == count_rows(dest) == ledger_rows(dest, PIPELINE)

        rerun = Cli.run(pipeline, "--workers", "3", "--batch-size", "37")
        rc = rerun.finish()
        assert rc == 0, rerun.describe(rc)
        started = next(e for e in rerun.events if e.get("kind") == "run")
        assert started["data"]["resumed"] is True, started
        assert not [m for m in rerun.messages() if "took over" in m], "the lease was not released"
        assert _batch_rows(rerun) == ROWS - written
        assert_same_rows(source, dest, f"after a pause and a rerun (seed {seed})")
        assert cli_json("status", str(pipeline), "--json", cwd=tmp_path)["status"] == "done"


def test_pause_no_wait_returns_at_once_and_the_run_still_stops(tmp_path: Path) -> None:
    with _job(tmp_path) as (source, dest, pipeline, ids, seed, stack):
        gate = stack.enter_context(RowGate(dest))
        gate.hold([ids[-1]], "block")
        run = Cli.run(pipeline)
        assert run.wait_for("batch") is not None, run.describe(run.finish())
        pause = _pause(pipeline, "--no-wait")
        prc = pause.finish()
        # It returned while the run could not have stopped: its last batch is held.
        assert run.proc.poll() is None
        assert prc == 0, pause.describe(prc)
        assert f"Asked pipeline '{PIPELINE}' to pause" in _said(pause), pause.events
        wait_until_pause_seen(dest, lambda: run.proc.poll() is None)
        gate.release()
        rc = run.finish()
        assert rc == 3, run.describe(rc)
        assert count_rows(dest) == ledger_rows(dest, PIPELINE) == _batch_rows(run)

        rerun = Cli.run(pipeline)
        rc = rerun.finish()
        assert rc == 0, rerun.describe(rc)
        assert_same_rows(source, dest, f"after pause --no-wait and a rerun (seed {seed})")


def _ledger_tables(dest: Database) -> list[str]:
    return [
        r[0]
        for r in dest.sql(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_name LIKE '%milepost%' ORDER BY 1"
        )
    ]


@pytest.mark.parametrize("dest_family", ["postgresql", "sqlite"])
def test_pause_when_it_never_ran_says_so_and_writes_nothing(
    tmp_path: Path, dest_family: str
) -> None:
    with (
        database("sqlite", tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        pipeline = write_pipeline(tmp_path, PIPELINE, source, dest)
        pause = _pause(pipeline)
        rc = pause.finish()
        assert rc == 0, pause.describe(rc)
        assert f"Pipeline '{PIPELINE}' has never run; nothing to pause." in _said(pause)
        if dest_family == "sqlite":
            assert dest.path is not None and not dest.path.exists(), "pause created the file"
        else:
            assert _ledger_tables(dest) == [], "pause created the ledger"


def test_pause_when_nothing_runs_says_so_and_writes_nothing(tmp_path: Path) -> None:
    """After a finished run, and after a run killed with SIGKILL (its lease names a dead
    process): nothing to pause, exit 0, and no pause request is left behind for the next run."""
    with _job(tmp_path) as (source, dest, pipeline, _ids, seed, _stack):
        run = Cli.run(pipeline)
        assert run.wait_for("batch", 2) is not None, run.describe(run.finish())
        assert run.kill() == -signal.SIGKILL
        wait_until_quiet(dest)
        pause = _pause(pipeline)
        rc = pause.finish()
        assert rc == 0, pause.describe(rc)
        assert f"Pipeline '{PIPELINE}' is not running" in _said(pause), pause.events
        assert dest.sql("SELECT pause_requested FROM _milepost_runs") == [(None,)]

        rerun = Cli.run(pipeline)
        rc = rerun.finish()
        assert rc == 0, rerun.describe(rc)
        assert any("took over" in m for m in rerun.messages()), rerun.events[:5]
        assert_same_rows(source, dest, f"after a kill and a rerun (seed {seed})")

        pause = _pause(pipeline)
        rc = pause.finish()
        assert rc == 0, pause.describe(rc)
        assert "is not running (status: done); nothing to pause." in _said(pause)
        assert dest.sql("SELECT pause_requested, status FROM _milepost_runs") == [(None, "done")]


# --- a pause during a retry backoff ------------------------------------------------------------

# A wait long enough that a run stopping "quickly" cannot be one that waited it out.
LONG_BACKOFF = {"max_attempts": 50, "initial_delay_s": 600.0, "max_delay_s": 600.0}


def test_pause_during_a_retry_backoff_stops_at_once(
    tmp_path: Path, private_postgres: PrivatePostgres
) -> None:
    """The source is a private PostgreSQL that the test stops mid-copy: the runner's next read
    fails, it reconnects in vain and waits out a backoff of up to ten minutes. `milepost
    pause` (through the destination, which stays up) ends that wait at once: exit 3 long before
    the retry was due, status `paused`. The source started again, a rerun finishes exactly.

    (The pause goes through the ledger in the destination: with the destination down instead,
    neither `milepost pause` nor the runner's heartbeat could reach it, and SIGTERM is the way
    to stop a run waiting for it.)"""
    _, seed = seeded("pause in backoff")
    rows = make_rows(ROWS, seed)
    source = Database("postgresql", private_postgres.create_database("src"))
    create_source(source, rows)
    with database("postgresql", tmp_path, "dst") as dest, contextlib.ExitStack() as stack:
        create_destination(dest)
        pipeline = write_pipeline(tmp_path, PIPELINE, source, dest, batch_size=BATCH, workers=1)
        _with_retry(pipeline, LONG_BACKOFF)
        gate = stack.enter_context(RowGate(dest))
        ids = [r[0] for r in rows]
        gate.hold([ids[len(ids) // 2]], "block")  # the run waits there while the source stops
        run = Cli.run(pipeline)
        assert run.wait_for("batch") is not None, run.describe(run.finish())
        private_postgres.stop("fast")
        gate.release()
        assert run.wait_for("retry") is not None, run.describe(run.finish())

        asked = time.monotonic()
        pause = _pause(pipeline)
        rc = run.finish()
        exited = time.monotonic()
        assert rc == 3, run.describe(rc)
        prc = pause.finish()
        assert prc == 0, pause.describe(prc)
        assert "stopped (status: paused)" in _said(pause), pause.events
        # It stopped inside the backoff it announced last, rather than after waiting it out
        # (a short wait that ran out would have been followed by another failed attempt and
        # another announcement).
        retries = [
            (e, t) for e, t in zip(run.events, run.arrivals, strict=True) if e["kind"] == "retry"
        ]
        last, announced = retries[-1]
        assert exited - announced < last["data"]["wait_s"], [e["text"] for e, _ in retries]
        assert exited - asked < 30, f"the run took {exited - asked:.1f}s to stop after the pause"
        assert "Traceback" not in run.stderr, run.stderr
        status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
        assert (status["status"], status["lease"]) == ("paused", None), status
        written = status["rows_written"]
        assert 0 < written < ROWS, status
        assert written == count_rows(dest) == ledger_rows(dest, PIPELINE) == _batch_rows(run)

        private_postgres.start()
        rerun = Cli.run(pipeline, "--workers", "2")
        rc = rerun.finish()
        assert rc == 0, rerun.describe(rc)
        assert_same_rows(source, dest, f"after a pause in a backoff and a rerun (seed {seed})")
