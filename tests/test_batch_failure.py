"""A batch the destination rejects: named precisely, earlier batches kept, nothing left running."""

from __future__ import annotations

import threading

import pytest

import milepost
from conftest import Database
from milepost.errors import CopyFailed


def test_rejected_batch_names_its_range_keeps_earlier_batches_and_stops_reading_ahead(
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
    with pytest.raises(CopyFailed) as failure:
        milepost.run(pipeline)
    message = str(failure.value)
    assert "Stream 'readings'" in message and "after cursor (50) up to (60)" in message
    assert pg.sql("SELECT min(id), max(id), count(*) FROM readings") == [(1, 50, 50)]
    assert not [t for t in threading.enumerate() if t.name.startswith("milepost-")]

    lite.sql("UPDATE readings SET value = 570 WHERE id = 57")
    milepost.run(pipeline)
    assert pg.sql("SELECT count(*), sum(value) FROM readings") == [(95, sum(range(10, 951, 10)))]


def test_destination_refusing_mid_copy_stream_fails_cleanly_and_resumes(pg: Database) -> None:
    """PostgreSQL to PostgreSQL streams COPY bytes; a refusal halfway through a batch must
    leave the source connection unusable rather than half-read, and lose nothing."""
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
    with pytest.raises(CopyFailed, match=r"after cursor \(50\) up to \(60\).*dst_value_check"):
        milepost.run(pipeline)
    assert pg.sql("SELECT count(*), max(id) FROM dst") == [(50, 50)]

    pg.sql("ALTER TABLE dst DROP CONSTRAINT dst_value_check")
    milepost.run(pipeline)
    assert pg.sql("SELECT count(*), sum(value) FROM dst") == [(95, sum(range(10, 951, 10)))]
