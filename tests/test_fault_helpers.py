"""The fault-injection helpers themselves: a private PostgreSQL that survives restarts and
crashes with its committed data, and the helpers that kill milepost's connections on the
shared servers, only those, and as the product will see it.

The exceptions asserted here are the ones the product's transient-error classifier relies on:
if a driver or server upgrade changes them, these tests say so first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
from psycopg import errors as pg_errors
from sqlalchemy.engine import make_url

from conftest import MYSQL_URL, POSTGRES_URL, Database, make_database, mysql_connection
from servers import (
    PrivatePostgres,
    kill_mysql_connections,
    kill_mysql_threads,
    postgres_unavailable_reason,
    terminate_postgres_backends,
)

# PyMySQL's "Lost connection to MySQL server during query", "MySQL server has gone away", and
# MariaDB's "Connection was killed": what a killed session may say on its next query.
MYSQL_CONNECTION_LOST = {2013, 2006, 1927}


def _dbname(db: Database) -> str:
    return db.url.rsplit("/", 1)[1]


@pytest.fixture
def pg_other(tmp_path: Path) -> Iterator[Database]:
    """A second throwaway PostgreSQL database: a bystander the kill must not touch."""
    yield from make_database("postgresql", tmp_path, "pg_other")


@pytest.fixture
def my_other(tmp_path: Path) -> Iterator[Database]:
    """A second throwaway MariaDB database: a bystander the kill must not touch."""
    yield from make_database("mysql", tmp_path, "my_other")


# --- the private PostgreSQL -------------------------------------------------------------------


def test_private_postgres_restart_keeps_data_and_breaks_open_connections(
    private_postgres: PrivatePostgres,
) -> None:
    server = private_postgres
    assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    url = server.create_database("faults")
    assert url == f"postgresql://postgres@127.0.0.1:{server.port}/faults"
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)  # restart tests need it
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 1000) g")

    idle = psycopg.connect(url)
    idle.execute("SELECT 1")  # idle in transaction: the product's connections look like this
    server.restart()

    # A fast shutdown terminates each backend with a FATAL 57P01 it reads on its next use.
    with pytest.raises(pg_errors.AdminShutdown) as caught:
        idle.execute("SELECT 1")
    assert caught.value.sqlstate == "57P01"
    assert idle.broken
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        idle.execute("SELECT 1")
    idle.close()

    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM t").fetchone() == (1000, 500500)
        assert conn.execute("SELECT v FROM t WHERE id = 1000").fetchone() == ("row 1000",)


def test_private_postgres_immediate_stop_is_a_crash_that_loses_no_commit(
    private_postgres: PrivatePostgres,
) -> None:
    server = private_postgres
    url = server.create_database("crash")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
    uncommitted = psycopg.connect(url)
    uncommitted.execute("INSERT INTO t SELECT generate_series(101, 200)")

    server.stop("immediate")
    assert not server.running
    # An immediate shutdown sends no error: the socket just closes, so there is no SQLSTATE.
    with pytest.raises(psycopg.OperationalError, match="closed the connection unexpectedly") as e:
        uncommitted.execute("SELECT 1")
    assert e.value.sqlstate is None
    uncommitted.close()
    with pytest.raises(psycopg.OperationalError, match="Connection refused") as e:
        psycopg.connect(url, connect_timeout=3)
    assert e.value.sqlstate is None

    server.start()  # WAL recovery; same port, so the URL still works
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*), max(id) FROM t").fetchone() == (100, 100)


def test_private_postgres_refuses_new_connections_while_shutting_down(
    private_postgres: PrivatePostgres,
) -> None:
    server = private_postgres
    held = psycopg.connect(server.url)  # a smart shutdown waits for this one to end
    server.stop("smart", wait=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(server.url, connect_timeout=3).close()
        except psycopg.OperationalError as exc:
            # libpq reports the server's FATAL at connect time as text only: no SQLSTATE.
            if "the database system is shutting down" in str(exc):
                assert exc.sqlstate is None
                break
            raise
        assert time.monotonic() < deadline, "the server never began shutting down"
        time.sleep(0.01)  # polling for a state change, with a deadline
    assert held.execute("SELECT 1").fetchone() == (1,)  # existing sessions go on meanwhile
    held.close()
    while server.running:
        assert time.monotonic() < deadline, "the server did not stop after the last session"
        time.sleep(0.01)  # polling for a state change, with a deadline


def test_private_postgres_cleans_up_after_a_failing_test() -> None:
    if reason := postgres_unavailable_reason():
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="the test failed"), PrivatePostgres() as server:
        base, url = server.base, server.url
        psycopg.connect(url).close()
        raise RuntimeError("the test failed")
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(url, connect_timeout=3)
    server.close()  # a second close is harmless


def test_missing_binaries_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MILEPOST_TEST_PG_BINDIR", str(tmp_path))
    reason = postgres_unavailable_reason()
    assert reason is not None
    assert "initdb" in reason
    assert str(tmp_path) in reason


# --- killing milepost's PostgreSQL backends ---------------------------------------------------


def test_terminate_postgres_backends_kills_only_matching_backends_on_the_database(
    pg: Database, pg_other: Database
) -> None:
    dbname = _dbname(pg)
    target = psycopg.connect(pg.url, application_name="milepost:test")
    other_app = psycopg.connect(pg.url, application_name="psql")
    other_db = psycopg.connect(pg_other.url, application_name="milepost:test")
    try:
        target_pid = target.info.backend_pid
        assert terminate_postgres_backends(POSTGRES_URL, dbname) == 1
        # The helper waited for it to leave pg_stat_activity.
        with psycopg.connect(pg.url, autocommit=True) as admin:
            assert not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (target_pid,)
            ).fetchall()

        with pytest.raises(pg_errors.AdminShutdown) as caught:
            target.execute("SELECT 1")
        assert caught.value.sqlstate == "57P01"
        assert "terminating connection due to administrator command" in str(caught.value)

        assert other_app.execute("SELECT 1").fetchone() == (1,)
        assert other_db.execute("SELECT 1").fetchone() == (1,)
        assert terminate_postgres_backends(POSTGRES_URL, dbname) == 0
        # The prefix is a parameter: the psql one goes with its own.
        assert terminate_postgres_backends(POSTGRES_URL, dbname, application_name_prefix="ps") == 1
        with pytest.raises(pg_errors.AdminShutdown):
            other_app.execute("SELECT 1")
    finally:
        for conn in (target, other_app, other_db):
            conn.close()


def test_terminate_postgres_backends_kills_a_running_query(pg: Database) -> None:
    conn = psycopg.connect(pg.url, application_name="milepost:source")
    failure: list[BaseException] = []

    def long_query() -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    try:
        with psycopg.connect(pg.url, autocommit=True) as admin:
            _poll(
                lambda: admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active' "
                    "AND wait_event = 'PgSleep'",
                    (conn.info.backend_pid,),
                ).fetchall(),
                "the query to start",
            )
        assert terminate_postgres_backends(POSTGRES_URL, _dbname(pg)) == 1
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert len(failure) == 1
        assert isinstance(failure[0], pg_errors.AdminShutdown), repr(failure[0])
    finally:
        worker.join(timeout=10)
        conn.close()


def test_terminating_a_vanished_backend_is_not_an_error(pg: Database) -> None:
    """The helper's race safety rests on this: pg_terminate_backend of a pid that has ended
    returns false with a warning, no exception."""
    gone = psycopg.connect(pg.url)
    pid = gone.info.backend_pid
    gone.close()
    with psycopg.connect(pg.url, autocommit=True) as admin:
        _poll(
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchall()
            ),
            "the closed backend to exit",
        )
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (False,)


# --- killing MariaDB sessions -----------------------------------------------------------------


def test_kill_mysql_connections_kills_only_sessions_on_the_database(
    my: Database, my_other: Database
) -> None:
    target = mysql_connection(my.url)
    bystander = mysql_connection(my_other.url)
    try:
        assert kill_mysql_connections(MYSQL_URL, _dbname(my)) == 1
        with pytest.raises(pymysql.err.OperationalError) as caught, target.cursor() as cur:
            cur.execute("SELECT 1")
        assert caught.value.args[0] in MYSQL_CONNECTION_LOST, caught.value.args
        # PyMySQL closes the connection on that error; using it again is an InterfaceError.
        with pytest.raises(pymysql.err.InterfaceError), target.cursor() as cur:
            cur.execute("SELECT 1")

        with bystander.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert kill_mysql_connections(MYSQL_URL, _dbname(my)) == 0
        # Connection parameters instead of a URL work the same.
        u = make_url(MYSQL_URL)
        params = {"host": u.host, "port": u.port or 3306, "user": u.username}
        params["password"] = u.password or ""
        assert kill_mysql_connections(params, _dbname(my_other)) == 1
    finally:
        target.close()
        bystander.close()


def test_kill_mysql_connections_kills_a_running_query(my: Database) -> None:
    conn = mysql_connection(my.url)
    thread_id = conn.thread_id()
    failure: list[BaseException] = []

    def long_query() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(60)")
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    admin = mysql_connection(MYSQL_URL)
    try:
        with admin.cursor() as cur:

            def running() -> bool:
                cur.execute(
                    "SELECT 1 FROM information_schema.PROCESSLIST "
                    "WHERE ID = %s AND INFO LIKE 'SELECT SLEEP%%'",
                    (thread_id,),
                )
                return bool(cur.fetchall())

            _poll(running, "the query to start")
        assert kill_mysql_connections(MYSQL_URL, _dbname(my)) == 1
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert len(failure) == 1
        assert isinstance(failure[0], pymysql.err.OperationalError), repr(failure[0])
        assert failure[0].args[0] in MYSQL_CONNECTION_LOST, failure[0].args
    finally:
        worker.join(timeout=10)
        admin.close()
        conn.close()


def test_killing_a_vanished_mysql_session_is_not_an_error(my: Database) -> None:
    gone = mysql_connection(my.url)
    thread_id = gone.thread_id()
    gone.close()
    admin = mysql_connection(MYSQL_URL)
    try:
        with admin.cursor() as cur:

            def present() -> bool:
                sql = "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s"
                cur.execute(sql, (thread_id,))
                return bool(cur.fetchall())

            _poll(lambda: not present(), "the closed session to end")
            assert kill_mysql_threads(cur, [thread_id]) == []
    finally:
        admin.close()


def _poll(condition: Callable[[], object], what: str, timeout_s: float = 10.0) -> None:
    """Wait for `condition()` to be true: polling for a state change, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
