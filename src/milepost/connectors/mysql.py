"""MySQL and MariaDB through PyMySQL: strict SQL mode, UTC sessions, spelled-out keyset ranges.

PyMySQL is pure Python, so parsing every field of every row is where its time goes.
For a PostgreSQL destination the server formats each row as one COPY text line
(`copy_text_expression`), and PyMySQL parses one field per row instead of one per
column. See bench/results/copy.md.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql
import pymysql.converters
import pymysql.cursors
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from milepost.connectors.base import ConnectionBase
from milepost.errors import ConnectorError
from milepost.urls import DatabaseUrl


class MysqlConnection(ConnectionBase):
    family = "mysql"
    placeholder = "%s"
    row_values = False  # MariaDB does not range-scan an index for (a, b) > (x, y)

    def sqlalchemy_engine(self) -> Engine:
        if self._engine is None:
            url = self.url.url.set(drivername="mysql+pymysql")
            self._engine = create_engine(
                url, poolclass=NullPool, creator=lambda: _open(self.url.url)
            )
        return self._engine

    def _begin(self) -> None:
        self.raw.begin()

    def estimate_rows(self, table: str, schema: str | None) -> int | None:
        rows = self.query(
            "SELECT TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            [schema, table],
        )
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def stream_rows(
        self, sql: str, params: Sequence[Any] = (), size: int = 10_000
    ) -> Iterator[Any]:
        # An unbuffered cursor: rows arrive as they are read, not all at once.
        with self.raw.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(sql, tuple(params))
            while rows := cur.fetchmany(size):
                yield from rows

    def insert_rows(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> int:
        cols = ", ".join(self.quote(c) for c in columns)
        marks = ", ".join(["%s"] * len(columns))
        with self.raw.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
        return len(rows)


def _escape_datetime(value: dt.datetime, mapping: Any = None) -> str:
    """DATETIME has no zone: an aware value is stored as its UTC wall time."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return pymysql.converters.escape_datetime(value, mapping)


def _escape_time(value: dt.time, mapping: Any = None) -> str:
    return pymysql.converters.escape_time(value.replace(tzinfo=None), mapping)


class _Connection(pymysql.connections.Connection):  # type: ignore[misc]
    """PyMySQL builds a new default TLS context for every connection that names no TLS
    options (to try TLS, and fall back without it), loading the system's CA certificates
    each time: about 50 ms, more than the rest of connecting. One, built once, serves."""

    def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
        if sslp == {}:
            return _default_tls(lambda: super(_Connection, self)._create_ssl_ctx({}))
        return super()._create_ssl_ctx(sslp)


_tls: list[ssl.SSLContext] = []
_tls_lock = threading.Lock()


def _default_tls(build: Any) -> ssl.SSLContext:
    with _tls_lock:
        if not _tls:
            _tls.append(build())
        return _tls[0]


def _open(u: Any, **extra: Any) -> pymysql.connections.Connection:
    return _Connection(
        host=u.host or "localhost",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=u.database,
        charset="utf8mb4",
        connect_timeout=10,
        **extra,
    )


def connect(url: DatabaseUrl, role: str) -> MysqlConnection:
    u = url.url
    conv = dict(pymysql.converters.conversions)
    conv[dt.datetime] = _escape_datetime
    conv[dt.time] = _escape_time
    conv[uuid.UUID] = lambda value, mapping=None: pymysql.converters.escape_str(str(value))
    try:
        raw = _open(u, autocommit=(role == "source"), conv=conv, local_infile=False)
    except pymysql.MySQLError as exc:
        reason = exc.args[1] if len(exc.args) > 1 else str(exc)
        error = ConnectorError(
            f"Cannot connect to the {role} {url.masked}: {reason}",
            hint="Check host, port, database, user and password.",
        )
        error.transient = transient_reason(exc)
        raise error from None
    with raw.cursor() as cur:
        cur.execute("SET SESSION time_zone = '+00:00'")
        cur.execute("SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')")
        cur.execute("SET SESSION group_concat_max_len = 1073741824")
        if role == "destination":
            # Chunks of related tables load in parallel; constraints are checked when
            # they are added, not row by row during the copy.
            cur.execute("SET SESSION foreign_key_checks = 0")
    if role == "destination":
        raw.commit()
    return MysqlConnection(url, role, raw)


# --- what an error means: worth retrying, or a row the destination refuses -----------

_TRANSIENT_CODES = {
    2003: "server unreachable",
    2006: "connection lost",
    2013: "connection lost",
    2055: "connection lost",
    1927: "connection killed",
    1053: "server shutting down",
    1040: "too many connections",
    1205: "lock wait timeout",
    1213: "deadlock",
    1317: "query interrupted",
    4031: "connection closed by the server after inactivity",
}
# Values strict mode refuses, and constraints: the row, not the connection, is at fault.
_REJECTED_CODES = {
    1048,
    1062,
    1264,
    1265,
    1292,
    1366,
    1367,
    1406,
    1411,
    1451,
    1452,
    1690,
    3819,
    4025,
}


def _code(exc: BaseException) -> int | None:
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def transient_reason(exc: BaseException) -> str | None:
    if isinstance(exc, pymysql.err.InterfaceError):
        return "connection closed"  # PyMySQL's word for using a connection that broke
    code = _code(exc)
    return _TRANSIENT_CODES.get(code) if code is not None else None


def rejection(exc: BaseException) -> str | None:
    code = _code(exc)
    if code in _REJECTED_CODES:
        return str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return None
