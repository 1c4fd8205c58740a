"""Every cursor type an incremental stream can page by, on every source engine.

Each case: a non-unique cursor column (three rows per value, so equal values straddle
the batches of 4) with the primary key appended as its tie-breaker; a first run; rows
inserted with a cursor equal to the last watermark and beyond it; a second run that must
copy exactly those. The verify phase (on by default) compares every value of both
sides, so a run that passes has copied the rows exactly; the ids show none was doubled
or skipped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import milepost
from conftest import Database, make_database

UTC = dt.UTC


def _uuid(i: int) -> uuid.UUID:
    return uuid.UUID(int=(i + 1) * 0x1000_0000_0000_0000_0000_0000_0001)


# type -> (PostgreSQL, MariaDB, SQLite declarations, value of group i)
TYPES: dict[str, tuple[str, str, str, Callable[[int], Any]]] = {
    "integer": ("integer", "INT", "INTEGER", lambda i: i * 10),
    "numeric": ("numeric(12,3)", "DECIMAL(12,3)", "NUMERIC", lambda i: Decimal(i) / 8),
    "float": ("double precision", "DOUBLE", "REAL", lambda i: i / 3),
    "text": ("text", "VARCHAR(40)", "TEXT", lambda i: f"k{i:03d}"),
    "date": ("date", "DATE", "DATE", lambda i: dt.date(2024, 1, 1) + dt.timedelta(days=i)),
    "timestamp": (
        "timestamp",
        "DATETIME(6)",
        "TIMESTAMP",
        lambda i: dt.datetime(2024, 1, 1, 8) + dt.timedelta(minutes=i, microseconds=i),
    ),
    "timestamptz": (
        "timestamptz",
        "TIMESTAMP(6) NULL",
        "TIMESTAMP",
        lambda i: dt.datetime(2024, 1, 1, 8, tzinfo=UTC) + dt.timedelta(minutes=i),
    ),
    "uuid": ("uuid", "UUID", "TEXT", _uuid),
}
COLUMN = {"postgresql": 0, "mysql": 1, "sqlite": 2}


@pytest.fixture
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from make_database(request.param, tmp_path, "src")


def _bindable(db: Database, value: Any) -> Any:
    if db.family != "sqlite":
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat(" ") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, Decimal | uuid.UUID):
        return str(value) if isinstance(value, uuid.UUID) else float(value)
    return value


def _insert(db: Database, kind: str, ids: range) -> None:
    p = "?" if db.family == "sqlite" else "%s"
    value = TYPES[kind][3]
    for i in ids:
        db.sql(
            f"INSERT INTO keyed (id, k, note) VALUES ({p}, {p}, {p})",
            (i, _bindable(db, value(i // 3)), f"row {i}"),
        )


@pytest.mark.parametrize("source", ["postgresql", "mysql", "sqlite"], indirect=True)
@pytest.mark.parametrize("kind", list(TYPES))
def test_incremental_by_each_cursor_type(source: Database, kind: str, pg: Database) -> None:
    declared = TYPES[kind][COLUMN[source.family]]
    source.sql(f"CREATE TABLE keyed (id INTEGER NOT NULL PRIMARY KEY, k {declared}, note TEXT)")
    _insert(source, kind, range(0, 14))  # groups 0..4; the last group (12, 13) is short
    p = milepost.build_pipeline(
        {
            "name": f"by_{kind}",
            "source": {"url": source.url},
            "destination": {"url": pg.url},
            "streams": [{"table": "keyed", "cursor": "k", "mode": "incremental"}],
            "batch_size": 4,
            "workers": 1,
        }
    )
    assert milepost.run(p).rows_written == 14
    # Row 14 has the cursor value of the last watermark (group 4), with a larger id; the
    # rest come after it.
    _insert(source, kind, range(14, 20))

    second = milepost.run(p)

    assert second.rows_written == 6
    ids = sorted(r[0] for r in pg.sql("SELECT id FROM keyed"))
    assert ids == list(range(20))
