"""Checkpoints in a PostgreSQL database (`postgresql://…`), in a `bytea` column.

One table, `_milepost_checkpoints`, keyed by (pipeline, name), created on first use.
Each operation is one autocommitted statement, so a put is atomic. Checkpoints are
minutes apart, long enough for a server restart to break the connection in between,
so an operation that finds its connection broken reconnects once and tries again:
every operation here is idempotent.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy.engine import make_url

from milepost.checkpoints.errors import CheckpointNotFound, CheckpointStoreError
from milepost.checkpoints.redact import redact_text
from milepost.checkpoints.stores.base import (
    check_name,
    check_pipeline,
    is_valid_name,
    is_valid_pipeline,
)

TABLE = "_milepost_checkpoints"
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    "pipeline text NOT NULL, name text NOT NULL, data bytea NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (pipeline, name))"
)


class PostgresStore:
    """Checkpoint documents as rows of `_milepost_checkpoints` in a PostgreSQL database."""

    def __init__(self, url: str, pipeline: str, *, connect_timeout: int = 10) -> None:
        parsed = make_url(url)
        # psycopg reads libpq URLs: drop a SQLAlchemy "+driver" suffix.
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._masked = parsed.render_as_string(hide_password=True)
        self._timeout = connect_timeout
        self.pipeline = check_pipeline(pipeline)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._connect()
            try:
                assert self._conn is not None
                self._conn.execute(_DDL)
            except (pg_errors.UniqueViolation, pg_errors.DuplicateTable):
                pass  # another process created it at the same moment
            except psycopg.Error as exc:
                raise self._error("prepared", exc) from None

    @property
    def location(self) -> str:
        return self._masked

    def put(self, name: str, data: bytes) -> None:
        self._run(
            f"INSERT INTO {TABLE} (pipeline, name, data) VALUES (%s, %s, %s) "
            "ON CONFLICT (pipeline, name) DO UPDATE SET data = EXCLUDED.data, "
            "updated_at = now()",
            (self.pipeline, check_name(name), bytes(data)),
        )

    def get(self, name: str) -> bytes:
        rows = self._run(
            f"SELECT data FROM {TABLE} WHERE pipeline = %s AND name = %s",
            (self.pipeline, check_name(name)),
        )
        if not rows:
            raise CheckpointNotFound(
                f"There is no checkpoint {name} for pipeline '{self.pipeline}' in {self.location}.",
                hint="`milepost checkpoints list` shows the ones there are.",
            )
        return bytes(rows[0][0])

    def list(self) -> list[str]:
        rows = self._run(f"SELECT name FROM {TABLE} WHERE pipeline = %s", (self.pipeline,))
        return sorted(r[0] for r in rows)  # in Python: a database collation may sort '-' oddly

    def pipelines(self) -> list[str]:
        # Names only, never the documents. Both are checked as a directory's entries are,
        # so a row put there by hand under a name no store would use is not a pipeline.
        rows = self._run(f"SELECT pipeline, name FROM {TABLE}", ())
        return sorted({p for p, n in rows if is_valid_pipeline(p) and is_valid_name(n)})

    def delete(self, name: str) -> None:
        self._run(
            f"DELETE FROM {TABLE} WHERE pipeline = %s AND name = %s",
            (self.pipeline, check_name(name)),
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> None:
        try:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)
        except psycopg.Error as exc:
            raise self._error("reached", exc) from None

    def _run(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._connect()
                assert self._conn is not None
                try:
                    cur = self._conn.execute(sql, params)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError as exc:
                    if attempt == 2 or not self._conn.closed:
                        raise self._error("used", exc) from None
                except psycopg.Error as exc:
                    raise self._error("used", exc) from None
        raise AssertionError("unreachable")

    def _error(self, verb: str, exc: Exception) -> CheckpointStoreError:
        text = str(exc).strip()
        detail = redact_text(text.splitlines()[0]) if text else type(exc).__name__
        return CheckpointStoreError(
            f"The checkpoint store {self.location} could not be {verb}: {detail}.",
            hint="Check that the server is up and the user may create and write the "
            f"table {TABLE}; the ledger keeps the run's progress meanwhile.",
        )
