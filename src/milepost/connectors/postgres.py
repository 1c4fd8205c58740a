"""PostgreSQL through psycopg 3: COPY in both directions, sessions pinned to UTC."""

from __future__ import annotations

import json
import logging
import select
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg.types.string import TextLoader
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from milepost.connectors.base import ConnectionBase
from milepost.errors import ConnectorError
from milepost.urls import DatabaseUrl

# psycopg logs "error ignored terminating <Copy [BAD]>" when a COPY dies with its
# connection; milepost reports that loss itself (a `retry` event), once and in context.
logging.getLogger("psycopg").addHandler(logging.NullHandler())
logging.getLogger("psycopg").propagate = False


class PostgresConnection(ConnectionBase):
    family = "postgresql"
    placeholder = "%s"
    row_values = True

    def sqlalchemy_engine(self) -> Engine:
        if self._engine is None:
            url = self.url.url.set(drivername="postgresql+psycopg")
            self._engine = create_engine(url, poolclass=NullPool)
        return self._engine

    def estimate_rows(self, table: str, schema: str | None) -> int | None:
        name = f"{self.quote(schema)}.{self.quote(table)}" if schema else self.quote(table)
        rows = self.query(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
            [self.name_value(name)],
        )
        if rows and rows[0][0] is not None and rows[0][0] >= 0:
            return int(rows[0][0])
        return int(self.query(f"SELECT count(*) FROM {name}")[0][0])

    def estimate_query_rows(self, relation: str) -> int | None:
        plan = self.query(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {relation}")[0][0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        rows = plan[0]["Plan"].get("Plan Rows")
        return int(rows) if rows is not None else None

    def copy_out_blocks(
        self, query: str, params: Sequence[Any], fmt: str, coalesce: int
    ) -> Iterator[bytearray]:
        """A query's result in the engine's own COPY format, untouched, in ~`coalesce`-byte
        pieces.

        The server sends one message per row. psycopg's `Copy.read()` costs about four
        times the CPU per row of asking libpq directly, and on a small machine that CPU
        is taken from the two servers (bench/results/copy.md), so this reads through
        psycopg's `pq` layer, as psycopg itself does: non-blocking, waiting on the
        socket only when libpq's buffer is empty.
        """
        statement = f"COPY ({self._client_side(query, params)}) TO STDOUT (FORMAT {fmt})"
        pgconn = self.raw.pgconn
        encoding = self.raw.info.encoding
        abandoned = True  # until the stream is read to its end
        try:
            with self.raw.lock:
                pgconn.send_query(statement.encode(encoding))
                started = pgconn.get_result()
                if started is None or started.status != pq.ExecStatus.COPY_OUT:
                    _drain(pgconn)
                    abandoned = False
                    raise _copy_error(started, encoding)
                pending = bytearray()
                while True:
                    nbytes, data = pgconn.get_copy_data(1)
                    if nbytes > 0:
                        pending += data
                        if len(pending) >= coalesce:
                            yield pending
                            pending = bytearray()
                    elif nbytes == 0:
                        select.select([pgconn.socket], [], [])
                        pgconn.consume_input()
                    else:
                        break
                if pending:
                    yield pending
                ended = pgconn.get_result()
                _drain(pgconn)
                abandoned = False
                if ended is None or ended.status != pq.ExecStatus.COMMAND_OK:
                    raise _copy_error(ended, encoding)
        finally:
            if abandoned:
                # Left in the middle of a COPY (the destination refused the batch, or we
                # are stopping): read out the rest of this one batch so the connection can
                # serve again, e.g. to find the refused row; if it broke, close it.
                try:
                    with self.raw.lock:
                        _discard_copy(pgconn)
                except Exception:
                    self.raw.close()

    @contextmanager
    def copy_in(self, table: str, columns: Sequence[str], fmt: str) -> Iterator[Any]:
        cols = ", ".join(self.quote(c) for c in columns)
        with self.raw.cursor() as cur:
            statement = self._client_side(f"COPY {table} ({cols}) FROM STDIN (FORMAT {fmt})")
            with cur.copy(statement) as copy:
                yield copy
            self.last_copy_rows = cur.rowcount

    def stream_rows(
        self, sql: str, params: Sequence[Any] = (), size: int = 10_000
    ) -> Iterator[Any]:
        # A server-side cursor: the result stays on the server until fetched.
        with self.raw.transaction(), self.raw.cursor(name="milepost_stream") as cur:
            cur.itersize = size
            cur.execute(sql, tuple(params))
            yield from cur

    def _client_side(self, query: str, params: Sequence[Any] = ()) -> str:
        """The statement with its parameters inlined and quoted by psycopg, as the
        server will read it (COPY takes no server-side parameters)."""
        return psycopg.ClientCursor(self.raw).mogrify(query, self.bind(params))

    def read_json_as_text(self) -> None:
        for name in ("json", "jsonb"):
            self.raw.adapters.register_loader(name, TextLoader)

    def column_types(self, table: str) -> list[str]:
        """Exact type names, to decide whether binary COPY can pass through unchanged."""
        rows = self.query(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [self.name_value(table)],
        )
        return [f"{name}:{typ}" for name, typ in rows]


def connect(url: DatabaseUrl, role: str) -> PostgresConnection:
    u = url.url
    kwargs: dict[str, Any] = {
        "host": u.host or "localhost",
        "port": u.port or 5432,
        "dbname": u.database,
        "user": u.username,
        "password": u.password,
        "connect_timeout": 10,
        "application_name": f"milepost-{role}",
    }
    kwargs.update({k: v for k, v in u.query.items() if isinstance(v, str)})
    try:
        raw = psycopg.connect(
            **{k: v for k, v in kwargs.items() if v is not None}, autocommit=(role == "source")
        )
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        error = ConnectorError(
            f"Cannot connect to the {role} {url.masked}: {reason}",
            hint="Check host, port, database, user and password (the password may come from "
            "the URL or from `password:` with an ${ENV} variable).",
        )
        error.transient = transient_reason(exc)
        raise error from None
    raw.execute("SET TIME ZONE 'UTC'")
    raw.execute("SET datestyle = 'ISO, YMD'")  # dates read as text parse the same everywhere
    conn = PostgresConnection(url, role, raw)
    if role == "source":
        # JSON stays text: re-encoding parsed dicts would cost time and change formatting.
        conn.read_json_as_text()
    else:
        # A batch's rows and its ledger row share one transaction, so a server crash
        # can only lose both together and the next run redoes that batch: waiting for
        # each commit's WAL flush buys nothing here and costs a disk sync per batch.
        raw.execute("SET synchronous_commit = off")
        raw.commit()
    return conn


def _copy_error(result: pq.abc.PGresult | None, encoding: str) -> psycopg.Error:
    """The error a COPY result reports. One without a SQLSTATE is libpq's own ("server closed
    the connection unexpectedly" when the server crashed or shut down mid-COPY), which
    psycopg's error_from_result makes a bare DatabaseError; psycopg itself raises
    OperationalError for a broken connection everywhere else, and so does this, so that
    `transient_reason` sees a lost connection and the copy is retried rather than failed."""
    if result is None:
        return psycopg.OperationalError("the server sent no result for the COPY")
    error = psycopg.errors.error_from_result(result, encoding)
    if error.sqlstate is None:
        return psycopg.OperationalError(str(error))
    return error


def _discard_copy(pgconn: pq.abc.PGconn) -> None:
    while True:
        nbytes, _ = pgconn.get_copy_data(1)
        if nbytes == 0:
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        elif nbytes < 0:
            break
    _drain(pgconn)


def _drain(pgconn: pq.abc.PGconn) -> None:
    """Read the results libpq still holds, so the connection is ready for the next query."""
    while pgconn.get_result() is not None:
        pass


# --- what an error means: worth retrying, or a row the destination refuses -----------

# SQLSTATEs that say "this server or connection, right now", not "this statement".
_TRANSIENT_SQLSTATES = {
    "57P01": "server shutting down or connection terminated by an administrator",
    "57P02": "server crashed",
    "57P03": "server starting up",
    "53300": "too many connections",
    "40P01": "deadlock",
    "40001": "serialization failure",
    "55P03": "lock wait timeout",
}


# What libpq says, as text only, when the login itself is refused: retrying cannot help.
_LOGIN_REFUSED = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "no password supplied",
)


def transient_reason(exc: BaseException) -> str | None:
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state is None:
        # libpq's own errors carry no SQLSTATE: the server went away, the socket broke,
        # or a reconnect was refused while the server restarts ("the database system is
        # starting up" arrives as text too). A refused login does not pass as one.
        if not isinstance(exc, psycopg.OperationalError):
            return None
        text = str(exc)
        if any(sign in text for sign in _LOGIN_REFUSED):
            return None
        return "connection lost"
    if state.startswith("08"):
        return "connection lost"
    return _TRANSIENT_SQLSTATES.get(state)


def rejection(exc: BaseException) -> str | None:
    """Why the destination refused a row (data exception, constraint), or None."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate is None:
        return None
    if exc.sqlstate[:2] not in ("22", "23"):
        return None
    diag = exc.diag
    where = f"column {diag.column_name}: " if diag.column_name else ""
    detail = f" ({diag.message_detail})" if diag.message_detail else ""
    return f"{where}{diag.message_primary or exc}{detail}"
