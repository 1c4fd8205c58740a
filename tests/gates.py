"""Holding a real run at a chosen row, and knowing when it has seen a `milepost pause`.

A pause test races three processes: the runner copying batches, `milepost pause` starting
(about 0.7 s of interpreter start), and the runner's heartbeat, which reads the request from
the ledger once a second. Left alone, a small copy is over before the request lands. These
helpers take the clock out of it, on a PostgreSQL destination:

- `RowGate` puts a row trigger on the destination table. A batch that would write a held row
  either waits inside its transaction for an advisory lock the test holds (`block`), or fails
  with a serialization failure (`fail`), which milepost retries after a backoff. Either way the
  run cannot finish while the gate is held, whatever the timing; the rows before the held one
  commit as usual.
- `wait_until_pause_seen` returns once the runner has certainly acted on a committed pause
  request, by watching its heartbeat connection queue behind a lock the test holds on the
  ledger's run table (see there). Only then may a test let the held batch through: the run must
  then stop after it, rather than finish because the request had not been read yet.
- `wait_until_quiet` returns once no milepost session is left on a database, so that a commit
  the killed runner had sent just before its SIGKILL is decided before the test reads the
  ledger.

Every wait polls for a state change with a deadline; none sleeps a guessed time.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Literal

import psycopg

from conftest import Database
from faults import TABLE

GATE_TABLE = "_test_gate"
ADVISORY_KEY = 7_345_001  # any constant: the test's exclusive lock, the trigger's shared wait
POLL_S = 0.01

GateMode = Literal["block", "fail"]

# What a runner sends on its destination connections to `_milepost_runs` (ledger.py): the
# heartbeat thread's heartbeat and its poll for a pause request, and the release of the lease
# as the run stops. Nothing else starts with these.
HEARTBEAT = "UPDATE _milepost_runs SET heartbeat_at"
POLL = "SELECT pause_requested"  # (and, lately, more columns)
RELEASE = "UPDATE _milepost_runs SET lease_token = NULL"


class RowGate:
    """A row trigger on a PostgreSQL destination table that holds back the batches writing
    chosen rows (by `id`): `block` makes the batch wait inside its transaction until `release`,
    `fail` makes it fail with SQLSTATE 40001 (a serialization failure: transient, so milepost
    rolls the batch back and retries after its backoff) until `release`.

    The held rows are listed in a table of the destination database, so the gate holds for
    every runner process that writes there, and `release` opens it for the next ones."""

    def __init__(self, dest: Database, table: str = TABLE) -> None:
        assert dest.family == "postgresql", "the gate is a PostgreSQL trigger"
        self.dest = dest
        self.table = table
        self._locker: psycopg.Connection | None = None
        dest.sql(f"CREATE TABLE IF NOT EXISTS {GATE_TABLE} (id BIGINT PRIMARY KEY, mode TEXT)")
        dest.sql(
            f"CREATE OR REPLACE FUNCTION {GATE_TABLE}_check() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ DECLARE how TEXT; BEGIN "
            f"SELECT mode INTO how FROM {GATE_TABLE} WHERE id = NEW.id; "
            "IF how = 'fail' THEN RAISE EXCEPTION 'test gate: row % is held back', NEW.id "
            "USING ERRCODE = 'serialization_failure'; "
            f"ELSIF how = 'block' THEN PERFORM pg_advisory_xact_lock_shared({ADVISORY_KEY}); "
            "END IF; RETURN NEW; END $$"
        )
        dest.sql(f"DROP TRIGGER IF EXISTS {GATE_TABLE} ON {table}")
        dest.sql(
            f"CREATE TRIGGER {GATE_TABLE} BEFORE INSERT ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {GATE_TABLE}_check()"
        )

    def hold(self, ids: Iterable[int], mode: GateMode) -> None:
        if mode == "block" and self._locker is None:
            # Not "milepost…": nothing that kills milepost's sessions may take this one.
            self._locker = psycopg.connect(
                self.dest.url, autocommit=True, application_name="fault-gate"
            )
            self._locker.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
        for i in ids:
            self.dest.sql(
                f"INSERT INTO {GATE_TABLE} (id, mode) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET mode = EXCLUDED.mode",
                (i, mode),
            )

    def release(self) -> None:
        """Open the gate: held rows pass, a waiting batch goes on and commits."""
        self.dest.sql(f"DELETE FROM {GATE_TABLE}")
        if self._locker is not None:
            with contextlib.suppress(psycopg.Error):
                self._locker.close()  # ends the session, and with it the advisory lock
            self._locker = None

    def close(self) -> None:
        """Let go of the advisory lock (a batch waiting at the gate goes on); the trigger and
        its table stay, empty or not, for the database's owner to drop."""
        if self._locker is not None:
            with contextlib.suppress(psycopg.Error):
                self._locker.close()
            self._locker = None

    def __enter__(self) -> RowGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deadline_passed(deadline: float, what: str, extra: str = "") -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"gave up waiting for {what}{': ' + extra if extra else ''}")


def wait_for_pause_request(
    dest: Database,
    pipeline: str,
    pause: subprocess.Popen[str] | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Until `milepost pause` has committed its request into the ledger (it is running as
    `pause`, whose early exit is a failure here: it found nothing to pause)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = dest.sql(
            "SELECT pause_requested IS NOT NULL FROM _milepost_runs WHERE pipeline = %s",
            (pipeline,),
        )
        if rows and rows[0][0]:
            return
        if pause is not None and pause.poll() is not None:
            raise AssertionError(f"`milepost pause` exited {pause.returncode} before asking")
        _deadline_passed(deadline, "`milepost pause` to write its request")
        time.sleep(POLL_S)  # polling for the request to be committed, with a deadline


def wait_until_pause_seen(
    dest: Database, runner_alive: Callable[[], bool], timeout_s: float = 30.0
) -> None:
    """Return once the runner has read the (committed) pause request and asked itself to stop.

    The runner says nothing when its heartbeat thread reads the request, so this watches that
    thread from the server. The test takes `_milepost_runs` in ACCESS EXCLUSIVE mode; the
    heartbeat's next statement on it (its poll, or the heartbeat just before a poll) then
    queues, visibly in pg_stat_activity. Once its *poll* has been seen queued, the lock is
    let go: that poll takes its snapshot after the lock is granted, so it reads the request,
    and the thread asks the runner to stop before its next statement. The lock is taken once
    more, and when that next statement is seen queued, the stop has certainly been asked for.
    A runner seen releasing its lease (it read the request before the first look and is
    stopping) or gone has acted too. Two or three heartbeat periods (a second each) at most.
    A worker that wants to commit meanwhile queues behind the lock as well, which is harmless:
    nothing here waits for a worker.
    """
    deadline = time.monotonic() + timeout_s
    seen_poll = False
    while True:
        with psycopg.connect(dest.url, application_name="fault-gate") as locker:
            locker.execute("LOCK TABLE _milepost_runs IN ACCESS EXCLUSIVE MODE")
            queued = _queued_runner_statement(dest, runner_alive, deadline)
            locker.rollback()
        if seen_poll or queued in (RELEASE, "gone"):
            return
        seen_poll = queued == POLL


def _queued_runner_statement(
    dest: Database, runner_alive: Callable[[], bool], deadline: float
) -> str:
    """Which of HEARTBEAT, POLL or RELEASE a runner connection waits to run, once one does
    ("gone" if the runner exited)."""
    while True:
        rows = dest.sql(
            "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'milepost-destination' AND wait_event_type = 'Lock'"
        )
        for (query,) in rows:
            for statement in (RELEASE, POLL, HEARTBEAT):
                if str(query).startswith(statement):
                    return statement
        if not runner_alive():
            return "gone"
        if time.monotonic() > deadline:
            sessions = dest.sql(
                "SELECT application_name, state, wait_event_type, wait_event, left(query, 90) "
                "FROM pg_stat_activity WHERE datname = current_database()"
            )
            raise AssertionError(
                "gave up waiting for the runner's heartbeat to queue behind the test's lock on "
                "_milepost_runs (does it still poll the ledger with the statements gates.py "
                f"expects?); sessions: {sessions}"
            )
        _deadline_passed(
            deadline,
            "the runner's heartbeat to queue behind the test's lock on _milepost_runs",
            "does its heartbeat still poll the ledger with the statements gates.py expects?",
        )
        time.sleep(POLL_S)  # polling for the heartbeat to queue, with a deadline


def wait_until_quiet(dest: Database, timeout_s: float = 60.0) -> None:
    """Until no milepost session is connected to the (PostgreSQL) database: after a SIGKILL
    the server may still be finishing what the dead client sent (a COMMIT on its way), and
    the ledger is to be read only once that is decided."""
    deadline = time.monotonic() + timeout_s
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'milepost-%'"
    )
    while dest.sql(query)[0][0]:
        _deadline_passed(deadline, "the killed runner's sessions to end")
        time.sleep(POLL_S)  # polling for the sessions to be gone, with a deadline
