"""Resume never trusts blindly: a changed pipeline or a vanished table is refused, by name."""

from __future__ import annotations

import pytest

import milepost
from conftest import Database
from milepost.errors import Paused, ResumeRefused
from milepost.events import Event
from milepost.runner import Runner


def _pipeline(src: Database, dst: Database, **stream: object) -> milepost.Pipeline:
    return milepost.build_pipeline(
        {
            "name": "resume-checks",
            "source": {"url": src.url},
            "destination": {"url": dst.url},
            "streams": [{"table": "items", **stream}],
            "batch_size": 10,
        }
    )


def _pause_after_first_batch(pipeline: milepost.Pipeline) -> None:
    runner: Runner

    def on_event(event: Event) -> None:
        if event.kind == "batch":
            runner.request_stop()

    runner = Runner(pipeline, on_event=on_event)
    with pytest.raises(Paused):
        runner.run()


@pytest.fixture
def half_copied(pg: Database, lite: Database) -> tuple[Database, Database]:
    pg.script("""
        CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL);
        INSERT INTO items SELECT g, g % 7 FROM generate_series(1, 100) g
    """)
    _pause_after_first_batch(_pipeline(pg, lite))
    assert 0 < lite.sql("SELECT count(*) FROM items")[0][0] < 100
    return pg, lite


def test_a_changed_filter_is_refused_and_the_copy_is_left_alone(half_copied) -> None:
    src, dst = half_copied
    before = dst.sql("SELECT count(*) FROM items")
    with pytest.raises(ResumeRefused, match="pipeline changed"):
        milepost.run(_pipeline(src, dst, where="qty > 0"))
    assert dst.sql("SELECT count(*) FROM items") == before


def test_a_dropped_destination_table_is_refused_by_name(half_copied) -> None:
    src, dst = half_copied
    dst.sql("DROP TABLE items")
    with pytest.raises(ResumeRefused, match="'items' that this run was copying into"):
        milepost.run(_pipeline(src, dst))


def test_the_unchanged_pipeline_resumes_to_an_exact_copy(half_copied) -> None:
    src, dst = half_copied
    result = milepost.run(_pipeline(src, dst))
    assert result.resumed
    assert dst.sql("SELECT id, qty FROM items ORDER BY id") == [(i, i % 7) for i in range(1, 101)]


def test_a_ledger_left_by_the_previous_version_is_upgraded_and_resumed(
    pg: Database, dest_db: Database
) -> None:
    """Upgrading milepost in the middle of a migration: the ledger written by the version
    before pause requests and refused rows gains their columns, and the copy resumes."""
    pg.script("""
        CREATE TABLE items (id integer PRIMARY KEY, qty integer NOT NULL);
        INSERT INTO items SELECT g, g % 7 FROM generate_series(1, 100) g
    """)
    pipeline = _pipeline(pg, dest_db)
    _pause_after_first_batch(pipeline)
    dest_db.sql("DROP TABLE _milepost_rejected_rows")
    dest_db.sql("ALTER TABLE _milepost_runs DROP COLUMN pause_requested")
    dest_db.sql("ALTER TABLE _milepost_chunks DROP COLUMN rows_rejected")

    result = milepost.run(pipeline)
    assert result.resumed
    assert dest_db.sql("SELECT count(*), sum(qty) FROM items") == [
        (100, sum(g % 7 for g in range(1, 101)))
    ]
    assert dest_db.sql("SELECT sum(rows_rejected) FROM _milepost_chunks") == [(0,)]
    assert dest_db.sql("SELECT count(*) FROM _milepost_runs WHERE pause_requested IS NULL") == [
        (1,)
    ]
