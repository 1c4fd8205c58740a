"""One runner per pipeline: the lease in `_milepost_runs`, its takeover, and its fence.

A live holder on this host (judged by its pid and process start time) or a holder on
another host with a fresh heartbeat refuses a second runner with exit code 2 and a message
naming it, before anything is written. A holder whose process is gone (exited, killed and
not yet reaped, or whose pid now belongs to another process) is taken over at once; one on
another host once its heartbeat is older than `ledger.LEASE_TTL_S`. A runner whose lease is
taken over commits nothing more: not the next batch, and not the one it was writing.

Holders are real processes this test starts (`python -c "import sys; sys.stdin.read()"`),
written into the lease with their real pid and psutil start time.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from conftest import Database
from faults import (
    Cli,
    assert_same_rows,
    count_rows,
    create_destination,
    create_source,
    ledger_rows,
    make_rows,
    seeded,
    write_pipeline,
)
from milepost import connectors, ledger
from milepost.errors import LeaseLost
from milepost.urls import parse_database_url

PIPELINE = "lease"
ROWS = 3_000
HOST = socket.gethostname()


@dataclass
class Job:
    """A SQLite source of ROWS rows, a destination without a primary key, a pipeline file."""

    source: Database
    dest: Database
    pipeline: Path
    seed: int

    def run(self, *extra: str) -> Cli:
        return Cli.run(self.pipeline, *extra)


def _job(
    tmp_path: Path, source: Database, dest: Database, *, batch_size: int = 100, workers: int = 1
) -> Job:
    _, seed = seeded(f"lease into {dest.family}")
    create_source(source, make_rows(ROWS, seed))
    create_destination(dest)
    pipeline = write_pipeline(
        tmp_path, PIPELINE, source, dest, batch_size=batch_size, workers=workers
    )
    return Job(source, dest, pipeline, seed)


@pytest.fixture
def job(tmp_path: Path, lite: Database, pg: Database) -> Job:
    return _job(tmp_path, lite, pg)


# --- holders: real processes, and lease rows that name them ----------------------------------


@contextlib.contextmanager
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that lives until the block ends (it waits for its stdin to close)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()


def exited_process() -> tuple[int, float]:
    """The pid and start time of a process that has exited and been reaped."""
    with live_process() as proc:
        started = psutil.Process(proc.pid).create_time()
    return proc.pid, started


def _destination(dest: Database) -> Any:
    return connectors.connect(parse_database_url(dest.url, key="destination.url"), "destination")


def write_lease(dest: Database, **lease: Any) -> None:
    """Make the pipeline's lease say what the test wants (creating the ledger if need be)."""
    conn = _destination(dest)
    try:
        ledger.ensure_tables(conn)
        values = {"lease_token": "held-by-the-test", "updated_at": time.time(), **lease}
        runs = ledger.RUNS
        with conn.sqlalchemy_engine().begin() as c:
            exists = c.execute(sa.select(runs.c.pipeline).where(runs.c.pipeline == PIPELINE))
            if exists.first():
                c.execute(runs.update().where(runs.c.pipeline == PIPELINE).values(**values))
            else:
                new = {"run_id": "", "fingerprint": "", "phase": "new", "status": "new"}
                c.execute(
                    runs.insert().values(pipeline=PIPELINE, started_at=time.time(), **new, **values)
                )
    finally:
        conn.close()


def read_lease(dest: Database) -> ledger.RunRow:
    conn = _destination(dest)
    try:
        run = ledger.read_run(conn, PIPELINE)
    finally:
        conn.close()
    assert run is not None
    return run


def chunk_rows(dest: Database) -> int:
    conn = _destination(dest)
    try:
        return len(ledger.read_chunks(conn, PIPELINE)) if ledger.tables_exist(conn) else 0
    finally:
        conn.close()


# --- what every test checks ------------------------------------------------------------------


def assert_refused(job: Job, holder_pid: int, holder_host: str) -> None:
    """A second runner exits 2, names the holder, and writes nothing."""
    before = read_lease(job.dest)
    run = job.run()
    rc = run.finish()
    assert rc == 2, run.describe(rc)
    assert f"pid {holder_pid}" in run.stderr and f"host {holder_host}" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not [e for e in run.events if e.get("kind") == "batch"]
    assert count_rows(job.dest) == 0
    assert chunk_rows(job.dest) == 0
    after = read_lease(job.dest)
    assert (after.lease_token, after.owner_pid, after.owner_host) == (
        before.lease_token,
        before.owner_pid,
        before.owner_host,
    )


def assert_taken_over_and_done(job: Job, holder_pid: int) -> str:
    """The next runner takes the lease at once, says whose, and copies everything once."""
    run = job.run()
    rc = run.finish()
    assert rc == 0, run.describe(rc)
    took = [m for m in run.messages() if "took over" in m]
    assert took and f"pid {holder_pid}" in took[0], run.events[:5]
    assert read_lease(job.dest).lease_token is None  # released when done
    assert_same_rows(job.source, job.dest, f"after the takeover (seed {job.seed})")
    return took[0]


# --- (a) a live holder refuses a second runner -----------------------------------------------


def test_live_holder_on_this_host_refuses_then_its_exit_frees_the_lease(job: Job) -> None:
    with live_process() as holder:
        # An hour-old heartbeat does not matter on this host: the process is alive.
        write_lease(
            job.dest,
            owner_host=HOST,
            owner_pid=holder.pid,
            owner_started=psutil.Process(holder.pid).create_time(),
            heartbeat_at=time.time() - 3600,
        )
        assert_refused(job, holder.pid, HOST)
    assert_taken_over_and_done(job, holder.pid)


def test_real_runner_holds_the_lease_against_a_second_runner(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    """The first runner is kept busy deterministically: the test stops reading its stdout, so
    once the (shrunk) pipe is full it blocks in a progress event, after a commit and outside
    any transaction, until the test reads on. Its 300 events cannot fit in the pipe."""
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("needs Linux pipes whose size can be set")
    job = _job(tmp_path, lite, pg, batch_size=10)
    first = job.run()
    assert first.proc.stdout is not None
    fcntl.fcntl(first.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    assert first.wait_for("batch") is not None
    second = job.run()
    rc = second.finish()
    assert rc == 2, second.describe(rc)
    assert f"pid {first.pid} on host {HOST}" in second.stderr, second.stderr
    rc = first.finish()
    assert rc == 0, first.describe(rc)
    assert not [m for m in first.messages() if "took over" in m]
    assert_same_rows(job.source, job.dest, f"first runner (seed {job.seed})")


# --- (b) a holder whose process is gone is taken over at once --------------------------------


def test_exited_holder_is_taken_over_at_once(job: Job) -> None:
    pid, started = exited_process()
    # A fresh heartbeat does not matter on this host: the process is gone.
    write_lease(
        job.dest, owner_host=HOST, owner_pid=pid, owner_started=started, heartbeat_at=time.time()
    )
    assert_taken_over_and_done(job, pid)


@pytest.mark.parametrize("how", ["killed, not yet reaped", "pid recycled"])
def test_holder_gone_in_other_ways_is_taken_over_at_once(pg: Database, how: str) -> None:
    """A SIGKILLed holder whose parent has not waited for it yet is a zombie: gone. A live pid
    whose process started after the holder did is another process: the holder is gone."""
    conn = _destination(pg)
    try:
        ledger.ensure_tables(conn)
        with live_process() as holder:
            started = psutil.Process(holder.pid).create_time()
            if how == "pid recycled":
                started -= 600
            else:
                holder.kill()
                os.waitid(os.P_PID, holder.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped
                assert psutil.Process(holder.pid).status() == psutil.STATUS_ZOMBIE
            write_lease(
                pg,
                owner_host=HOST,
                owner_pid=holder.pid,
                owner_started=started,
                heartbeat_at=time.time(),
            )
            lease, _, note = ledger.acquire(conn, PIPELINE, "fp")
            assert note and "took over" in note and f"pid {holder.pid}" in note
            assert read_lease(pg).lease_token == lease.token
    finally:
        conn.close()


# --- (c) a holder on another host: by its heartbeat -------------------------------------------


def test_other_host_with_fresh_heartbeat_refuses_and_stale_one_is_taken_over(job: Job) -> None:
    elsewhere = "runner-7.elsewhere.invalid"
    write_lease(
        job.dest, owner_host=elsewhere, owner_pid=4242, owner_started=1.0, heartbeat_at=time.time()
    )
    assert_refused(job, 4242, elsewhere)
    write_lease(job.dest, heartbeat_at=time.time() - ledger.LEASE_TTL_S - 5)
    took = assert_taken_over_and_done(job, 4242)
    assert f"silent for longer than {ledger.LEASE_TTL_S:.0f}s" in took, took


# --- (d) fencing ------------------------------------------------------------------------------


def test_runner_whose_lease_is_taken_commits_nothing_more(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    """The lease token changes under a running runner (a takeover, as the ledger sees it),
    right after a random committed batch. The UPDATE waits for the batches in flight; after
    it commits, the runner commits nothing: it stops with exit 1, its last batch rolled back.
    """
    job = _job(tmp_path, lite, pg, batch_size=10, workers=2)  # 300 batches, 2 at once
    rng, seed = seeded("fencing")
    run = job.run()
    assert run.wait_for("batch", rng.randint(1, 20)) is not None
    pg.sql("UPDATE _milepost_runs SET lease_token = 'taken-over' WHERE pipeline = %s", (PIPELINE,))
    at_takeover = ledger_rows(pg, PIPELINE)
    rc = run.finish()
    context = f"seed {seed}, {at_takeover} rows at the takeover"
    assert rc == 1, f"{context}: {run.describe(rc)}"
    assert "took over the lease" in run.stderr, run.stderr
    assert 0 < at_takeover < ROWS, context
    assert ledger_rows(pg, PIPELINE) == at_takeover, f"{context}: a batch committed after it"
    assert count_rows(pg) == at_takeover, f"{context}: rows and ledger disagree"
    reported = sum(e.get("rows", 0) for e in run.events if e.get("kind") == "batch")
    assert reported == at_takeover, context
    # A clean rerun: the runner named in the lease is gone, so it is taken over at once.
    assert_taken_over_and_done(job, run.pid)


LOCK_WAIT_ERRORS = (
    psycopg.errors.LockNotAvailable,
    pymysql.err.OperationalError,
    sqlite3.OperationalError,
)


def test_takeover_waits_for_the_batch_in_flight_and_fences_the_next(dest_db: Database) -> None:
    """The race a kill cannot hit on purpose, played step by step with the ledger's own calls:
    runner A has written a batch and its ledger row but not committed (it froze), its lease
    looks expired to runner B on another host. B must not get the lease until A's batch is
    decided, and once B has it, A's next batch must fail and roll back."""
    dest_db.sql("CREATE TABLE t (id INTEGER NOT NULL)")
    a, b = _destination(dest_db), _destination(dest_db)
    try:
        ledger.ensure_tables(a)
        lease_a, _, _ = ledger.acquire(a, PIPELINE, "fp")
        with a.transaction():
            ledger.record_stream(a, PIPELINE, "t", 0, ["id"], 10, "test", [(0, None, None)])
            ledger.set_state(a, lease_a, run_id="r1", phase="copy", status="running")
        write_lease(
            dest_db,
            lease_token=lease_a.token,
            owner_host="frozen.elsewhere.invalid",
            heartbeat_at=time.time() - ledger.LEASE_TTL_S - 5,
        )
        _short_lock_waits(b)

        with a.transaction():
            a.execute("INSERT INTO t VALUES (1)")
            ledger.advance(a, lease_a, "t", 0, (1,), 1, False)
            with pytest.raises(LOCK_WAIT_ERRORS):
                ledger.acquire(b, PIPELINE, "fp")  # blocked by A's batch in flight
        lease_b, _, note = ledger.acquire(b, PIPELINE, "fp")
        assert note and "took over" in note
        assert ledger.read_chunks(b, PIPELINE)[0].rows_written == 1  # B sees A's batch

        with pytest.raises(LeaseLost), a.transaction():
            a.execute("INSERT INTO t VALUES (2)")
            ledger.advance(a, lease_a, "t", 0, (2,), 1, False)
        assert dest_db.sql("SELECT id FROM t") == [(1,)]
        assert ledger.read_chunks(b, PIPELINE)[0].rows_written == 1
        assert lease_b.token != lease_a.token
    finally:
        a.close()
        b.close()


def _short_lock_waits(conn: Any) -> None:
    """Make a blocked lock wait fail fast instead of waiting: not a clock to sync on, only a
    bound on how long the test waits for a lock it knows is held."""
    if conn.family == "postgresql":
        conn.execute("SET lock_timeout = '300ms'")
        conn.raw.commit()
    elif conn.family == "mysql":
        conn.execute("SET SESSION innodb_lock_wait_timeout = 1")
        conn.raw.commit()
    else:
        conn.raw.execute("PRAGMA busy_timeout = 300")
