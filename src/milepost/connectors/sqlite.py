"""SQLite through the standard library: read-only sources, WAL-mode destinations."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from milepost.connectors.base import ConnectionBase
from milepost.errors import ConnectorError
from milepost.urls import DatabaseUrl

# How values from other engines are stored: text that sorts and reads back exactly.
sqlite3.register_adapter(Decimal, str)
sqlite3.register_adapter(uuid.UUID, str)
sqlite3.register_adapter(dt.datetime, lambda v: v.isoformat(" "))
sqlite3.register_adapter(dt.date, lambda v: v.isoformat())
sqlite3.register_adapter(dt.time, lambda v: v.isoformat())
sqlite3.register_adapter(dt.timedelta, lambda v: _time_of_day(v))


def _time_of_day(value: dt.timedelta) -> str:
    """MySQL hands TIME columns over as durations; SQLite keeps them as clock text."""
    return (dt.datetime.min + value).time().isoformat()


class SqliteConnection(ConnectionBase):
    family = "sqlite"
    placeholder = "?"
    row_values = True

    @property
    def path(self) -> Path:
        return Path(self.url.url.database or "")

    def sqlalchemy_engine(self) -> Engine:
        if self._engine is None:
            uri = f"file:{self.path}?mode=ro" if self.role == "source" else str(self.path)
            self._engine = create_engine(
                "sqlite://",
                poolclass=NullPool,
                creator=lambda: sqlite3.connect(uri, uri=self.role == "source"),
            )
        return self._engine

    def _begin(self) -> None:
        self.raw.execute("BEGIN IMMEDIATE")

    def estimate_rows(self, table: str, schema: str | None) -> int | None:
        return int(self.query(f"SELECT count(*) FROM {self.qualified(table, schema)}")[0][0])

    def insert_rows(self, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> int:
        cols = ", ".join(self.quote(c) for c in columns)
        marks = ", ".join(["?"] * len(columns))
        self.raw.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
        return len(rows)

    def add_md5_sum(self) -> None:
        """`milepost_md5_sum(blob)`: SQL has no MD5 here, nor a 64-bit sum that cannot
        overflow; verification (milepost/checksum_sql.py) needs both."""
        if not getattr(self, "_md5_sum", False):
            self.raw.create_aggregate("milepost_md5_sum", 1, _Md5Sum)
            self._md5_sum = True

    def attach_source(self, source_path: Path, alias: str = "milepost_src") -> str:
        """Let this destination read the source file directly (SQLite to SQLite copies)."""
        attached = {row[1] for row in self.query("PRAGMA database_list")}
        if alias not in attached:
            self.raw.execute(
                f"ATTACH DATABASE ? AS {alias}", (f"file:{source_path.resolve()}?mode=ro",)
            )
        return alias


class _Md5Sum:
    """SUM of the first 8 bytes of each MD5 (big-endian, as PostgreSQL's bit(64)), mod 2**64;
    returned as text, since SQLite's integers are 64-bit signed."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, text: bytes | None) -> None:
        if text is not None:
            self.total += int.from_bytes(hashlib.md5(text).digest()[:8], "big")

    def finalize(self) -> str:
        return str(self.total & ((1 << 64) - 1))


def connect(url: DatabaseUrl, role: str) -> SqliteConnection:
    path = Path(url.url.database or "")
    if role == "source" and not path.is_file():
        raise ConnectorError(f"The source SQLite file {path} does not exist.")
    if role == "destination" and not path.parent.exists():
        raise ConnectorError(f"The destination SQLite file's folder {path.parent} does not exist.")
    try:
        if role == "source":
            raw = sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
            )
        else:
            raw = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=60, uri=False
            )
            raw.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL never splits a transaction; a power cut may drop the last
            # batches, and their ledger rows with them, so the next run redoes them.
            raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        error = ConnectorError(f"Cannot open the {role} SQLite file {path}: {exc}.")
        error.transient = transient_reason(exc)
        raise error from None
    # With isolation_level=None, commit and rollback are plain statements.
    return SqliteConnection(url, role, _ManualTransactions(raw))


class _ManualTransactions:
    """sqlite3 in autocommit mode, where BEGIN/COMMIT are issued explicitly."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def commit(self) -> None:
        if self._raw.in_transaction:
            self._raw.execute("COMMIT")

    def rollback(self) -> None:
        if self._raw.in_transaction:
            self._raw.execute("ROLLBACK")


# --- what an error means: worth retrying, or a row the destination refuses -----------


def transient_reason(exc: BaseException) -> str | None:
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return "database locked"  # another writer held it longer than the busy timeout
    return None


def rejection(exc: BaseException) -> str | None:
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return str(exc)
    return None
