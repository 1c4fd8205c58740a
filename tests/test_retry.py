"""What is worth retrying, and how: the per-engine classification and the backoff policy.

The classification is checked on the drivers' own exception classes with the codes the
servers really send (observed in tests/test_fault_helpers.py and test_db_faults.py); the
policy on plain functions that fail on cue, with delays of milliseconds.
"""

from __future__ import annotations

import sqlite3
import threading

import psycopg
import psycopg.errors
import pymysql
import pytest

from milepost import connectors
from milepost.config import RetrySettings
from milepost.errors import ConnectorError, CopyFailed, Paused, RetriesExhausted, RowRejected
from milepost.events import Event
from milepost.retry import RetryPolicy


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), "terminated by an administrator"),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), "starting up"),
        (psycopg.errors.DeadlockDetected("deadlock detected"), "deadlock"),
        (psycopg.errors.SerializationFailure("could not serialize"), "serialization failure"),
        (psycopg.errors.LockNotAvailable("lock timeout"), "lock wait timeout"),
        (psycopg.errors.TooManyConnections("too many clients"), "too many connections"),
        (psycopg.OperationalError("server closed the connection unexpectedly"), "connection lost"),
        (psycopg.OperationalError("consuming input failed"), "connection lost"),
        (pymysql.err.OperationalError(2013, "Lost connection to server during query"), "lost"),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), "lost"),
        (pymysql.err.OperationalError(2003, "Can't connect to MySQL server"), "unreachable"),
        (pymysql.err.OperationalError(1213, "Deadlock found"), "deadlock"),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), "lock wait timeout"),
        (pymysql.err.InterfaceError(0, ""), "connection closed"),
        (sqlite3.OperationalError("database is locked"), "database locked"),
        (ConnectionResetError(104, "Connection reset by peer"), "network error"),
    ],
)
def test_transient_errors_are_recognised_even_when_wrapped(
    error: BaseException, reason: str
) -> None:
    assert reason in (connectors.transient_reason(error) or "")
    try:
        try:
            raise error
        except BaseException as exc:
            raise CopyFailed("Stream 'x', chunk 0: the batch could not be written") from exc
    except CopyFailed as wrapped:
        assert reason in (connectors.transient_reason(wrapped) or "")


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.UndefinedTable('relation "items" does not exist'),
        psycopg.errors.InsufficientPrivilege("permission denied for table items"),
        psycopg.errors.CheckViolation("violates check constraint"),
        psycopg.OperationalError('FATAL:  password authentication failed for user "etl"'),
        psycopg.OperationalError('FATAL:  database "nope" does not exist'),
        pymysql.err.ProgrammingError(1146, "Table 'db.items' doesn't exist"),
        pymysql.err.OperationalError(1045, "Access denied for user"),
        pymysql.err.IntegrityError(1062, "Duplicate entry '1' for key 'PRIMARY'"),
        sqlite3.OperationalError("no such table: items"),
        ValueError("a bug"),
    ],
)
def test_lasting_errors_are_not_retried(error: BaseException) -> None:
    assert connectors.transient_reason(error) is None


def test_a_settled_outcome_is_never_retried_whatever_it_wraps() -> None:
    try:
        try:
            raise psycopg.errors.AdminShutdown("terminating connection")
        except BaseException as exc:
            raise RetriesExhausted("gave up") from exc
    except RetriesExhausted as settled:
        assert connectors.transient_reason(settled) is None


def test_a_connection_refused_at_connect_carries_its_reason() -> None:
    error = ConnectorError("Cannot connect to the destination postgresql://…")
    error.transient = "connection lost"
    assert connectors.transient_reason(error) == "connection lost"
    assert connectors.transient_reason(ConnectorError("wrong password")) is None


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (psycopg.errors.CheckViolation("new row violates check constraint"), "check constraint"),
        (psycopg.errors.NotNullViolation("null value in column"), "null value"),
        (psycopg.errors.InvalidTextRepresentation("invalid input syntax"), "invalid input"),
        (pymysql.err.DataError(1406, "Data too long for column 'name' at row 1"), "too long"),
        (pymysql.err.OperationalError(4025, "CONSTRAINT `c` failed for `t`"), "CONSTRAINT"),
        (sqlite3.IntegrityError("CHECK constraint failed: qty"), "CHECK"),
    ],
)
def test_refused_rows_are_told_apart_from_failures(error: BaseException, needle: str) -> None:
    assert needle in (connectors.rejection(error) or "")
    assert connectors.transient_reason(error) is None


class Flaky:
    """Fails with a transient error on the calls listed, commits progress on others."""

    def __init__(self, failing: set[int], progress_on: set[int] = frozenset()) -> None:
        self.failing, self.progress_on = failing, progress_on
        self.calls = 0
        self.progress = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls in self.progress_on:
            self.progress += 1
        if self.calls in self.failing:
            raise psycopg.errors.AdminShutdown("terminating connection")
        return "done"


def policy(attempts: int, events: list[Event], stop: threading.Event | None = None) -> RetryPolicy:
    settings = RetrySettings(max_attempts=attempts, initial_delay_s=0.001, max_delay_s=0.004)
    return RetryPolicy(settings, stop or threading.Event(), events.append)


def test_retries_until_it_works_and_logs_each_attempt_with_its_wait() -> None:
    events: list[Event] = []
    flaky = Flaky(failing={1, 2})
    assert policy(3, events).call(flaky, what="Stream 'a'", progress=lambda: 0) == "done"
    assert flaky.calls == 3
    assert [e.data["attempt"] for e in events] == [2, 3]
    assert all(e.kind == "retry" and 0 <= e.data["wait_s"] <= 0.004 for e in events)
    assert "Stream 'a': server shutting down" in (events[0].text or "")


def test_gives_up_after_max_attempts_in_a_row_naming_the_cause() -> None:
    events: list[Event] = []
    flaky = Flaky(failing=set(range(1, 100)))
    with pytest.raises(RetriesExhausted) as gave_up:
        policy(4, events).call(flaky, what="Stream 'a', chunk 2", progress=lambda: 0, stream="a")
    assert flaky.calls == 4
    assert "Stream 'a', chunk 2: gave up after 4 attempts" in str(gave_up.value)
    assert "terminating connection" in str(gave_up.value)
    assert gave_up.value.stream == "a" and gave_up.value.exit_code == 3


def test_progress_between_failures_starts_the_count_again() -> None:
    """Six failures, but never three in a row without a committed batch between them."""
    events: list[Event] = []
    flaky = Flaky(failing={1, 2, 3, 4, 5, 6}, progress_on={3, 5})
    assert policy(3, events).call(flaky, what="x", progress=lambda: flaky.progress) == "done"
    assert flaky.calls == 7
    assert [e.data["attempt"] for e in events] == [2, 3, 2, 3, 2, 3]


def test_lasting_errors_are_raised_at_once() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RowRejected("the destination refused the row with cursor (5)")

    with pytest.raises(RowRejected):
        policy(5, []).call(broken, what="x", progress=lambda: 0)
    assert calls == [1]


def test_a_stop_request_ends_the_backoff_at_once() -> None:
    stop = threading.Event()
    stop.set()
    settings = RetrySettings(max_attempts=5, initial_delay_s=3600, max_delay_s=3600)
    flaky = Flaky(failing={1})
    with pytest.raises(Paused):
        RetryPolicy(settings, stop, lambda e: None).call(flaky, what="x", progress=lambda: 0)
    assert flaky.calls == 1
