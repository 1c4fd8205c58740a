"""Checkpoints in a SQLite file (`sqlite:///path.db`), one table shared by all pipelines.

Each put is one statement in autocommit mode, so it is atomic; the file may be the
destination database or a file of its own. The table is created on first use. One
connection serves the store, behind a lock, so the runner's threads can share it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from milepost.checkpoints.errors import CheckpointNotFound, CheckpointStoreError
from milepost.checkpoints.stores.base import (
    check_name,
    check_pipeline,
    is_valid_name,
    is_valid_pipeline,
)

TABLE = "_milepost_checkpoints"
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    "pipeline TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL, "
    "updated_at REAL NOT NULL, PRIMARY KEY (pipeline, name))"
)


class SqliteStore:
    """Checkpoint documents as rows of `_milepost_checkpoints` in a SQLite file."""

    def __init__(self, path: str | Path, pipeline: str) -> None:
        self.path = Path(path).expanduser()
        self.pipeline = check_pipeline(pipeline)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(_DDL)
        except (OSError, sqlite3.Error) as exc:
            raise self._error("opened", exc) from None

    @property
    def location(self) -> str:
        return f"sqlite:///{self.path}"

    def put(self, name: str, data: bytes) -> None:
        self._run(
            f"INSERT INTO {TABLE} (pipeline, name, data, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pipeline, name) DO UPDATE SET data = excluded.data, "
            "updated_at = excluded.updated_at",
            (self.pipeline, check_name(name), bytes(data), time.time()),
        )

    def get(self, name: str) -> bytes:
        rows = self._run(
            f"SELECT data FROM {TABLE} WHERE pipeline = ? AND name = ?",
            (self.pipeline, check_name(name)),
        )
        if not rows:
            raise CheckpointNotFound(
                f"There is no checkpoint {name} for pipeline '{self.pipeline}' in {self.location}.",
                hint="`milepost checkpoints list` shows the ones there are.",
            )
        return bytes(rows[0][0])

    def list(self) -> list[str]:
        rows = self._run(f"SELECT name FROM {TABLE} WHERE pipeline = ?", (self.pipeline,))
        return sorted(r[0] for r in rows)

    def pipelines(self) -> list[str]:
        # Names only, never the documents. Both are checked as a directory's entries are,
        # so a row put there by hand under a name no store would use is not a pipeline.
        rows = self._run(f"SELECT pipeline, name FROM {TABLE}", ())
        return sorted({p for p, n in rows if is_valid_pipeline(p) and is_valid_name(n)})

    def delete(self, name: str) -> None:
        self._run(
            f"DELETE FROM {TABLE} WHERE pipeline = ? AND name = ?",
            (self.pipeline, check_name(name)),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, params: tuple) -> list[tuple]:
        try:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("used", exc) from None

    def _error(self, verb: str, exc: Exception) -> CheckpointStoreError:
        return CheckpointStoreError(
            f"The checkpoint store {self.location} could not be {verb}: {exc}.",
            hint="Check the path, free space and that no other program holds a write lock.",
        )
