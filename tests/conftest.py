"""Real servers for tests: a fresh, randomly named database per test, dropped afterwards.

PostgreSQL and MariaDB come from MILEPOST_TEST_POSTGRES_URL and MILEPOST_TEST_MYSQL_URL
(defaults: the local servers). Under CI=true an unreachable server fails the run;
elsewhere the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymysql
import pytest
from sqlalchemy.engine import make_url

# A private PostgreSQL a fault test may restart (tests/servers.py); the kill helpers are
# imported from servers where needed.
from servers import mysql_connect, private_postgres  # noqa: F401

POSTGRES_URL = os.environ.get(
    "MILEPOST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MYSQL_URL = os.environ.get("MILEPOST_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
IN_CI = os.environ.get("CI", "").lower() == "true"


def mysql_connection(url: str, *, autocommit: bool = True) -> pymysql.Connection:
    """A PyMySQL connection to the database a mysql:// URL names."""
    u = make_url(url)
    return mysql_connect(
        host=u.host,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        database=u.database,
        charset="utf8mb4",
        autocommit=autocommit,
    )


@dataclass(frozen=True)
class Database:
    """A throwaway database on one engine: its URL and a way to run SQL in it."""

    family: str
    url: str
    path: Path | None = None

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (committed) and return its rows, if any."""
        if self.family == "postgresql":
            with psycopg.connect(self.url, autocommit=True) as conn:
                cur = conn.execute(statement, params or None)
                return cur.fetchall() if cur.description else []
        if self.family == "mysql":
            conn = mysql_connection(self.url)
            try:
                with conn.cursor() as cur:
                    cur.execute("SET time_zone = '+00:00'")
                    cur.execute(statement, params or None)
                    return list(cur.fetchall()) if cur.description else []
            finally:
                conn.close()
        import sqlite3

        conn = sqlite3.connect(self.path)
        try:
            cur = conn.execute(statement, params)
            rows = cur.fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()

    def sql_many(self, statement: str, rows: list[tuple]) -> None:
        """Run one statement once per row of parameters, in one transaction on one connection
        (a connection per row costs 5 ms on PostgreSQL, more on MariaDB)."""
        if self.family == "postgresql":
            with psycopg.connect(self.url) as conn, conn.cursor() as cur:
                cur.executemany(statement, rows)
            return
        if self.family == "mysql":
            conn = mysql_connection(self.url, autocommit=False)
            try:
                with conn.cursor() as cur:
                    cur.execute("SET time_zone = '+00:00'")
                    cur.executemany(statement, rows)
                conn.commit()
            finally:
                conn.close()
            return
        import sqlite3

        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.executemany(statement, rows)
        finally:
            conn.close()

    def script(self, statements: str) -> None:
        """Several statements separated by ';' on their own lines."""
        for stmt in [s.strip() for s in statements.split(";\n") if s.strip()]:
            self.sql(stmt)


# The servers found reachable: each is checked once per test process, not once per database.
_REACHABLE: set[str] = set()


def _server_or_skip(family: str, url: str) -> None:
    if url in _REACHABLE:
        return
    try:
        if family == "postgresql":
            psycopg.connect(url, connect_timeout=3).close()
        else:
            u = make_url(url)
            mysql_connect(
                host=u.host,
                port=u.port or 3306,
                user=u.username,
                password=u.password or "",
                connect_timeout=3,
            ).close()
    except Exception as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        if IN_CI:
            pytest.fail(f"{family} test server {shown} is unreachable under CI=true: {exc}")
        pytest.skip(f"{family} test server {shown} is unreachable: {exc}")
    _REACHABLE.add(url)


def _postgres_db() -> Iterator[Database]:
    _server_or_skip("postgresql", POSTGRES_URL)
    name = f"mp_test_{secrets.token_hex(5)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield Database("postgresql", url)
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _mysql_db() -> Iterator[Database]:
    _server_or_skip("mysql", MYSQL_URL)
    name = f"mp_test_{secrets.token_hex(5)}"
    u = make_url(MYSQL_URL)
    admin = mysql_connect(
        host=u.host,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        autocommit=True,
    )
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    url = u.set(database=name).render_as_string(hide_password=False)
    try:
        yield Database("mysql", url)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def _sqlite_db(tmp_path: Path, stem: str) -> Database:
    path = tmp_path / f"{stem}_{secrets.token_hex(3)}.db"
    return Database("sqlite", f"sqlite:///{path}", path)


def make_database(family: str, tmp_path: Path, stem: str) -> Iterator[Database]:
    if family == "postgresql":
        yield from _postgres_db()
    elif family == "mysql":
        yield from _mysql_db()
    else:
        yield _sqlite_db(tmp_path, stem)


ENGINES = ["sqlite", "postgresql", "mysql"]

# The longest tests of the default suite (about a minute each), started first: `make test` runs
# in pytest-xdist workers, and one of these started last would leave a worker running it alone
# at the end while the other has nothing left.
RUN_FIRST = ("tests/test_stateful.py::test_prefix_consistent_under_kills_pauses_and_inserts",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.nodeid not in RUN_FIRST)  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs started in-process keep checkpoints under the working directory by default:
    let that be the test's own directory, not the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Database]:
    yield from make_database("postgresql", tmp_path, "pg")


@pytest.fixture
def my(tmp_path: Path) -> Iterator[Database]:
    yield from make_database("mysql", tmp_path, "my")


@pytest.fixture
def lite(tmp_path: Path) -> Database:
    return _sqlite_db(tmp_path, "lite")


@pytest.fixture(params=ENGINES)
def source_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from make_database(request.param, tmp_path, "src")


@pytest.fixture(params=ENGINES)
def dest_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from make_database(request.param, tmp_path, "dst")
