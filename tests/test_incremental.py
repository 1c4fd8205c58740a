"""Incremental runs on real servers: each run copies exactly what is new since the last.

The hard cases from the issue, each checked row by row against the source: equal cursor
values straddling a batch boundary, rows inserted between two runs with a cursor equal
to the last watermark, rows whose cursor is NULL, rows that commit late behind the
watermark (`lookback`), and a run killed at the decisive moments of an incremental run.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import milepost
from conftest import Database, make_database
from faults import run_to_crash
from milepost.status import pipeline_status

T0 = dt.datetime(2024, 5, 1, 12, 0, 0)
TYPES = {
    "postgresql": ("integer", "timestamp", "text"),
    "mysql": ("INT", "DATETIME(6)", "VARCHAR(40)"),
    "sqlite": ("INTEGER", "TIMESTAMP", "TEXT"),
}
PAIRS = [
    ("postgresql", "postgresql"),
    ("mysql", "postgresql"),
    ("sqlite", "postgresql"),
    ("postgresql", "mysql"),
    ("postgresql", "sqlite"),
    ("sqlite", "sqlite"),
]


@pytest.fixture
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Database]]:
    source_family, dest_family = request.param
    src_gen = make_database(source_family, tmp_path, "src")
    dst_gen = make_database(dest_family, tmp_path, "dst")
    src, dst = next(src_gen), next(dst_gen)
    try:
        yield src, dst
    finally:
        for gen in (src_gen, dst_gen):
            gen.close()


def mark(db: Database) -> str:
    return "?" if db.family == "sqlite" else "%s"


def create_events(db: Database, table: str = "events") -> None:
    integer, timestamp, text = TYPES[db.family]
    db.sql(
        f"CREATE TABLE {table} (id {integer} NOT NULL PRIMARY KEY, "
        f"updated_at {timestamp} NULL, label {text})"
    )


def insert(db: Database, rows: list[tuple[int, dt.datetime | None, str]], table: str = "events"):
    p = mark(db)
    for row_id, when, label in rows:
        value: Any = when
        if db.family == "sqlite" and when is not None:
            value = when.isoformat(" ")
        db.sql(
            f"INSERT INTO {table} (id, updated_at, label) VALUES ({p}, {p}, {p})",
            (row_id, value, label),
        )


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def rows_of(db: Database, table: str = "events") -> list[tuple[int, str | None, str]]:
    """Every row, its timestamp as ISO text to the second, sorted: comparable across engines."""
    out = []
    for row_id, when, label in db.sql(f"SELECT id, updated_at, label FROM {table}"):
        if when is not None and not isinstance(when, str):
            when = when.isoformat(" ")
        out.append((int(row_id), when[:19] if when else None, label))
    return sorted(out)


def pipeline(src: Database, dst: Database, streams: list[dict[str, Any]], **extra: Any):
    return milepost.build_pipeline(
        {
            "name": "hourly",
            "source": {"url": src.url},
            "destination": {"url": dst.url},
            "streams": streams,
            "batch_size": 4,
            "workers": 1,
            **extra,
        }
    )


EVENTS = {"table": "events", "cursor": ["updated_at"], "mode": "incremental"}


def first_rows() -> list[tuple[int, dt.datetime | None, str]]:
    # Ten rows on one timestamp straddle two batch boundaries (batches of 4); three rows
    # have no timestamp at all.
    rows = [(i, at(0), f"same-{i}") for i in range(1, 11)]
    rows += [(10 + i, at(i), f"later-{i}") for i in range(1, 6)]
    rows += [(20 + i, None, f"null-{i}") for i in range(1, 4)]
    return rows


@pytest.mark.parametrize("pair", PAIRS, indirect=True, ids=lambda p: f"{p[0]}->{p[1]}")
def test_each_run_copies_exactly_what_is_new(pair: tuple[Database, Database]) -> None:
    src, dst = pair
    create_events(src)
    insert(src, first_rows())
    p = pipeline(src, dst, [EVENTS])

    first = milepost.run(p)
    assert rows_of(dst) == rows_of(src)
    assert first.rows_written == 18

    status = {s["stream"]: s for s in pipeline_status(p)["streams"]}["events"]
    assert status["mode"] == "incremental"
    assert status["completed"]["completed_runs"] == 1
    assert status["completed"]["watermark"].replace("'", "").startswith("(2024-05-01 12:05:00")

    # Between the runs: rows on the watermark's own timestamp (after its tie-breaker), later
    # rows, and more rows without a timestamp.
    new = [(30, at(5), "on-the-watermark"), (31, at(5), "on-it-too"), (32, at(9), "later")]
    new += [(40, None, "null-late"), (41, None, "null-later")]
    insert(src, new)
    second = milepost.run(p)
    assert second.run_id != first.run_id
    assert second.rows_written == len(new)
    assert rows_of(dst) == rows_of(src)

    third = milepost.run(p)
    assert third.rows_written == 0
    assert rows_of(dst) == rows_of(src)
    status = {s["stream"]: s for s in pipeline_status(p)["streams"]}["events"]
    assert status["completed"]["completed_runs"] == 3
    assert status["completed"]["rows_copied"] == 18 + len(new)
    assert status["completed"]["null_watermark"] == "(None, 41)"


def test_a_migrate_stream_is_copied_once_beside_an_incremental_one(pg: Database, lite: Database):
    create_events(pg)
    create_events(pg, "archive")
    insert(pg, first_rows())
    insert(pg, [(1, at(0), "old")], table="archive")
    p = pipeline(pg, lite, [EVENTS, {"table": "archive"}])
    milepost.run(p)
    insert(pg, [(2, at(1), "added after the migration")], table="archive")
    insert(pg, [(50, at(30), "new")])

    milepost.run(p)

    assert rows_of(lite) == rows_of(pg)
    assert rows_of(lite, "archive") == [(1, "2024-05-01 12:00:00", "old")]


def test_fresh_starts_an_incremental_stream_over(pg: Database, lite: Database) -> None:
    create_events(pg)
    insert(pg, first_rows())
    p = pipeline(pg, lite, [EVENTS])
    milepost.run(p)
    lite.sql("DELETE FROM events WHERE id < 5")  # lost in the destination: --fresh repairs

    again = milepost.run(p, fresh=True)

    assert again.rows_written == 18
    assert rows_of(lite) == rows_of(pg)
    status = pipeline_status(p)["streams"][0]
    assert status["completed"]["completed_runs"] == 1


@pytest.mark.parametrize("family", ["postgresql", "mysql", "sqlite"])
def test_lookback_picks_up_a_row_that_committed_behind_the_watermark(
    family: str, tmp_path: Path, pg: Database
) -> None:
    gen = make_database(family, tmp_path, "late")
    src = next(gen)
    try:
        create_events(src)
        insert(src, first_rows())
        stream = {**EVENTS, "write": "upsert"}
        p = pipeline(src, pg, [{**stream, "lookback": "10m"}])
        blind_dst = Database("sqlite", f"sqlite:///{tmp_path / 'blind.db'}", tmp_path / "blind.db")
        blind = pipeline(src, blind_dst, [stream])
        milepost.run(p)
        milepost.run(blind)
        # A transaction that began before the run and committed after it: its row's
        # timestamp is behind the watermark (12:05) by two minutes. A row already copied
        # changed meanwhile too, without a new timestamp.
        insert(src, [(60, at(3), "late commit")])
        src.sql(f"UPDATE events SET label = 'changed' WHERE id = {mark(src)}", (14,))

        milepost.run(p)
        milepost.run(blind)

        assert rows_of(pg) == rows_of(src)
        # Without lookback the keyset starts after (12:05, 15) and never sees either.
        seen = {row[0]: row[2] for row in rows_of(blind_dst)}
        assert 60 not in seen
        assert seen[14] == "later-4"
    finally:
        gen.close()


# --- killed in the middle of an incremental run ------------------------------------------


@pytest.mark.parametrize(
    "point", ["schema.after_create", "copy.after_commit@2", "finalize.before_done"]
)
def test_an_incremental_run_killed_then_resumed_copies_each_new_row_once(
    point: str, tmp_path: Path, pg: Database, my: Database
) -> None:
    create_events(pg)
    insert(pg, first_rows())
    doc = {
        "name": "hourly",
        "source": {"url": pg.url},
        "destination": {"url": my.url},
        "streams": [EVENTS],
        "batch_size": 4,
        "workers": 1,
    }
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(doc))
    assert run_to_crash(path).returncode == 0
    insert(pg, [(100 + i, at(10 + i / 10), f"new-{i}") for i in range(15)])
    insert(pg, [(200, None, "null-new")])

    killed = run_to_crash(path, point)
    assert killed.returncode == -9, killed.stderr
    resumed = run_to_crash(path)

    assert resumed.returncode == 0, resumed.stderr
    assert rows_of(my) == rows_of(pg)
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "milepost", "status", str(path), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    completed = status["streams"][0]["completed"]
    assert completed["completed_runs"] == 2
    assert completed["rows_copied"] == 18 + 16
    assert completed["watermark"].startswith("(2024-05-01 12:11:24")


def test_a_rewound_run_puts_the_high_water_back_and_counts_once(lite: Database) -> None:
    """Restoring or rolling back to a checkpoint of a completed run (kept with
    keep_after_success) undoes that run's move of the high water; completing it again
    counts it once."""
    from milepost import connectors, ledger, watermarks
    from milepost.config import StreamConfig
    from milepost.urls import parse_database_url

    conn = connectors.connect(parse_database_url(lite.url, key="test"), "destination")
    try:
        ledger.ensure_tables(conn)
        stream = StreamConfig.model_validate(EVENTS)

        def complete(run_id: str, watermark: tuple[Any, ...], rows: int) -> None:
            chunk = ledger.ChunkRow("events", 0, None, None, watermark, rows, 1, "done")
            with conn.transaction():
                watermarks.record_run(conn, "hourly", run_id, [stream], [chunk])

        complete("run-a", (at(1), 1), 10)
        complete("run-b", (at(2), 2), 5)
        with conn.transaction():
            watermarks.rewind(conn, "hourly", "run-b")
        mark = watermarks.read(conn, "hourly")["events"]
        assert (mark.high_water, mark.rows_copied, mark.runs, mark.last_run_id) == (
            (at(1), 1),
            10,
            1,
            "run-a",
        )
        complete("run-b", (at(3), 3), 7)
        complete("run-b", (at(3), 3), 7)  # restored and completed again: counted once
        mark = watermarks.read(conn, "hourly")["events"]
        assert (mark.high_water, mark.rows_copied, mark.runs) == ((at(3), 3), 17, 2)
        with conn.transaction():
            watermarks.rewind(conn, "hourly", "run-b")
            watermarks.rewind(conn, "hourly", "run-a")
        assert watermarks.read(conn, "hourly") == {}
    finally:
        conn.close()
