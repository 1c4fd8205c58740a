"""A row the destination refuses: named by its cursor, earlier batches kept, nothing left running.

(`on_row_error: skip`, the other mode, is tested in test_bad_rows.py.)"""

from __future__ import annotations

import threading

import pytest

import milepost
from conftest import Database
from milepost.errors import RowRejected


def test_refused_row_is_named_earlier_batches_kept_and_reading_ahead_stops(
    lite: Database, pg: Database
) -> None:
    # SQLite stores 'abc' in an INTEGER column; PostgreSQL's bigint refuses it.
    lite.script("""
        CREATE TABLE readings (id INTEGER PRIMARY KEY, value INTEGER);
        WITH RECURSIVE s(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM s WHERE v < 95)
        INSERT INTO readings SELECT v, v * 10 FROM s;
        UPDATE readings SET value = 'abc' WHERE id = 57
    """)
    pipeline = milepost.build_pipeline(
        {
            "name": "reject",
            "source": {"url": lite.url},
            "destination": {"url": pg.url},
            "streams": [{"table": "readings"}],
            "batch_size": 10,
        }
    )
    with pytest.raises(RowRejected) as failure:
        milepost.run(pipeline)
    message = str(failure.value)
    assert "Stream 'readings'" in message and "row with cursor (57)" in message
    assert 'invalid input syntax for type bigint: "abc"' in message
    assert pg.sql("SELECT min(id), max(id), count(*) FROM readings") == [(1, 50, 50)]
    assert not [t for t in threading.enumerate() if t.name.startswith("milepost-")]

    lite.sql("UPDATE readings SET value = 570 WHERE id = 57")
    milepost.run(pipeline)
    assert pg.sql("SELECT count(*), sum(value) FROM readings") == [(95, sum(range(10, 951, 10)))]


def test_destination_refusing_mid_copy_stream_fails_cleanly_and_resumes(pg: Database) -> None:
    """PostgreSQL to PostgreSQL streams COPY bytes; a refusal halfway through a batch leaves
    the source's COPY half-read, which must be read out so the same connection can find the
    refused row, and nothing is lost."""
    pg.script("""
        CREATE TABLE src (id integer PRIMARY KEY, value integer NOT NULL);
        INSERT INTO src SELECT g, g * 10 FROM generate_series(1, 95) g;
        CREATE TABLE dst (id integer PRIMARY KEY, value integer NOT NULL CHECK (value <> 570))
    """)
    pipeline = milepost.build_pipeline(
        {
            "name": "refuse-stream",
            "source": {"url": pg.url},
            "destination": {"url": pg.url},
            "streams": [{"table": "src", "name": "dst"}],
            "batch_size": 10,
            "workers": 1,
        }
    )
    with pytest.raises(RowRejected, match=r"row with cursor \(57\).*dst_value_check"):
        milepost.run(pipeline)
    assert pg.sql("SELECT count(*), max(id) FROM dst") == [(50, 50)]

    pg.sql("ALTER TABLE dst DROP CONSTRAINT dst_value_check")
    milepost.run(pipeline)
    assert pg.sql("SELECT count(*), sum(value) FROM dst") == [(95, sum(range(10, 951, 10)))]
