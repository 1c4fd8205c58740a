"""Copy features on real servers: composite cursors, filters, parallel chunks, foreign keys,
existing destination tables, and a completed pipeline run again."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import milepost
from conftest import Database
from milepost import connectors
from milepost.checksum import RangeSum as TableSum
from milepost.checksum import table_sum
from milepost.errors import ResumeRefused, VerificationFailed
from milepost.events import Event
from milepost.urls import parse_database_url


def pipeline(source: Database, dest: Database, streams: list[dict], **extra: Any):
    return milepost.build_pipeline(
        {
            "name": "features",
            "source": {"url": source.url},
            "destination": {"url": dest.url},
            "streams": streams,
            **extra,
        }
    )


def mark(db: Database) -> str:
    return "?" if db.family == "sqlite" else "%s"


def chunks(dest: Database) -> list[tuple]:
    """(stream, chunk, rows_written, batches, status) of every chunk in the ledger."""
    return dest.sql(
        "SELECT stream, chunk, rows_written, batches, status FROM _milepost_chunks "
        "ORDER BY stream, chunk"
    )


def checksum(db: Database, table: str, columns: list[str]) -> TableSum:
    conn = connectors.connect(parse_database_url(db.url, key="test"), "source")
    try:
        return table_sum(conn, conn.quote(table), columns)
    finally:
        conn.close()


# --- composite cursor -------------------------------------------------------------------

SALES = [
    (region, i, i * 10)
    for region, n in (("east", 7), ("north", 5), ("west", 3))
    for i in range(1, n + 1)
]


# Every engine once as source and once as destination.
CYCLE = [("sqlite", "postgresql"), ("postgresql", "mysql"), ("mysql", "sqlite")]


@pytest.mark.parametrize(
    ("source_db", "dest_db"), [*CYCLE, ("postgresql", "postgresql")], indirect=True
)
def test_composite_cursor_splits_equal_leading_values_exactly_once(
    source_db: Database, dest_db: Database
) -> None:
    """Batches of 4 over regions of 7, 5 and 3 rows end inside 'east' and 'north'."""
    source_db.sql(
        "CREATE TABLE sales (region VARCHAR(10) NOT NULL, id INTEGER NOT NULL, "
        "amount INTEGER NOT NULL, PRIMARY KEY (region, id))"
    )
    for row in reversed(SALES):
        source_db.sql(f"INSERT INTO sales VALUES ({', '.join([mark(source_db)] * 3)})", row)

    p = pipeline(source_db, dest_db, [{"table": "sales", "cursor": ["region", "id"]}], batch_size=4)
    assert milepost.run(p).rows_written == len(SALES)

    got = dest_db.sql("SELECT region, id, amount FROM sales ORDER BY region, id")
    assert [tuple(r) for r in got] == SALES
    assert chunks(dest_db) == [("sales", 0, 15, 4, "done")]


def test_non_unique_cursor_is_made_unique_with_the_primary_key(
    lite: Database, pg: Database
) -> None:
    lite.sql(
        "CREATE TABLE sales (region TEXT NOT NULL, id INTEGER NOT NULL, amount INTEGER, "
        "PRIMARY KEY (region, id))"
    )
    for row in SALES:
        lite.sql("INSERT INTO sales VALUES (?, ?, ?)", row)

    milepost.run(pipeline(lite, pg, [{"table": "sales", "cursor": "region"}], batch_size=4))

    assert pg.sql("SELECT region, id, amount FROM sales ORDER BY region, id") == SALES
    cursor = pg.sql("SELECT cursor_columns FROM _milepost_streams")
    assert cursor == [('["region", "id"]',)]


# --- where ------------------------------------------------------------------------------


def test_where_filter_copies_only_matching_rows(source_db: Database, pg: Database) -> None:
    source_db.sql("CREATE TABLE items (id INTEGER PRIMARY KEY, status VARCHAR(10), qty INTEGER)")
    for i in range(1, 21):
        status = "test" if i % 3 == 0 else "live"
        source_db.sql(
            f"INSERT INTO items VALUES ({', '.join([mark(source_db)] * 3)})", (i, status, i)
        )

    p = pipeline(
        source_db, pg, [{"table": "items", "where": "status <> 'test' AND qty > 4"}], batch_size=3
    )
    result = milepost.run(p)

    expected = [(i, "live", i) for i in range(5, 21) if i % 3 != 0]
    assert pg.sql("SELECT id, status, qty FROM items ORDER BY id") == expected
    assert result.rows_written == len(expected)


# --- parallel chunks --------------------------------------------------------------------

ROWS = 60_000
FILL = {
    "postgresql": "INSERT INTO big SELECT g, g % 97, 'row ' || g, g / 100.0 "
    "FROM generate_series(1, 60000) g",
    "mysql": "INSERT INTO big SELECT seq, seq % 97, CONCAT('row ', seq), seq / 100 "
    "FROM seq_1_to_60000",
    "sqlite": "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 60000) "
    "INSERT INTO big SELECT n, n % 97, 'row ' || n, n / 100.0 FROM g",
}
BIG_COLUMNS = ["id", "grp", "label", "amount"]


PARALLEL = [
    ("postgresql", "postgresql"),
    ("mysql", "postgresql"),
    ("sqlite", "postgresql"),
    ("postgresql", "mysql"),
]


@pytest.mark.parametrize(("source_db", "dest_db"), PARALLEL, indirect=True)
def test_three_workers_over_several_chunks_copy_exactly_the_rows(
    source_db: Database, dest_db: Database
) -> None:
    source_db.sql(
        "CREATE TABLE big (id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, label VARCHAR(20), "
        "amount NUMERIC(12,2))"
    )
    source_db.sql(FILL[source_db.family])

    result = milepost.run(
        pipeline(source_db, dest_db, [{"table": "big"}], workers=3, batch_size=1000)
    )

    assert result.rows_written == ROWS
    planned = chunks(dest_db)
    assert len(planned) > 1
    assert all(c[4] == "done" for c in planned)
    assert sum(c[2] for c in planned) == ROWS
    want = checksum(source_db, "big", BIG_COLUMNS)
    assert want.rows == ROWS
    assert checksum(dest_db, "big", BIG_COLUMNS) == want


# --- foreign keys -----------------------------------------------------------------------


def foreign_keys(db: Database, table: str) -> list[tuple]:
    """(column, referenced table, referenced column) of every foreign key on `table`."""
    if db.family == "postgresql":
        rows = db.sql(
            "SELECT a.attname, c.confrelid::regclass::text, af.attname FROM pg_constraint c "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = c.confkey[1] "
            "WHERE c.contype = 'f' AND c.conrelid = to_regclass(%s)",
            (table,),
        )
    elif db.family == "mysql":
        rows = db.sql(
            "SELECT COLUMN_NAME, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME "
            "FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = %s AND REFERENCED_TABLE_NAME IS NOT NULL",
            (table,),
        )
    else:
        rows = [(r[3], r[2], r[4]) for r in db.sql(f"PRAGMA foreign_key_list({table})")]
    return [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("source_db", "dest_db"),
    [("postgresql", "postgresql"), ("mysql", "postgresql"), *CYCLE],
    indirect=True,
)
def test_foreign_keys_end_up_in_the_destination(source_db: Database, dest_db: Database) -> None:
    source_db.script("""
        CREATE TABLE parent (id INTEGER PRIMARY KEY, name VARCHAR(20));
        CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL,
            FOREIGN KEY (parent_id) REFERENCES parent (id));
        INSERT INTO parent VALUES (1, 'p1'), (2, 'p2'), (3, 'p3');
        INSERT INTO child VALUES (10, 1), (11, 1), (12, 3), (13, 2), (14, 3)
    """)

    # The child is listed first: milepost orders parents before children itself.
    streams = [{"table": "child"}, {"table": "parent"}]
    milepost.run(pipeline(source_db, dest_db, streams, batch_size=2))

    assert foreign_keys(dest_db, "child") == [("parent_id", "parent", "id")]
    assert dest_db.sql("SELECT count(*) FROM child") == [(5,)]
    assert dest_db.sql("SELECT stream FROM _milepost_streams ORDER BY position") == [
        ("parent",),
        ("child",),
    ]


# --- existing destination tables --------------------------------------------------------

WIDER = {
    "postgresql": [
        "CREATE TABLE items (id bigint PRIMARY KEY, label text, qty numeric(30,0), "
        "note text DEFAULT 'kept')",
        "COMMENT ON TABLE items IS 'made by hand'",
    ],
    "mysql": [
        "CREATE TABLE items (id BIGINT PRIMARY KEY, label VARCHAR(200), qty DECIMAL(30,0), "
        "note VARCHAR(10) DEFAULT 'kept') COMMENT 'made by hand'",
    ],
    "sqlite": [
        "CREATE TABLE items (id BIGINT PRIMARY KEY, label VARCHAR(200), qty NUMERIC(30,0), "
        "note TEXT DEFAULT 'kept' /* made by hand */)",
    ],
}


def table_comment(db: Database) -> str | None:
    if db.family == "postgresql":
        return db.sql("SELECT obj_description('items'::regclass, 'pg_class')")[0][0]
    if db.family == "mysql":
        return db.sql(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'items'"
        )[0][0]
    sql = db.sql("SELECT sql FROM sqlite_master WHERE name = 'items'")[0][0]
    return "made by hand" if "made by hand" in sql else None


def test_existing_wider_destination_table_is_used_as_it_is(
    lite: Database, dest_db: Database
) -> None:
    lite.script("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, label VARCHAR(20), qty BIGINT);
        INSERT INTO items VALUES (1, 'a', 9000000000000000000), (2, 'b', NULL), (3, 'c', -1)
    """)
    for stmt in WIDER[dest_db.family]:
        dest_db.sql(stmt)

    milepost.run(pipeline(lite, dest_db, [{"table": "items"}], batch_size=2))

    got = dest_db.sql("SELECT id, label, qty, note FROM items ORDER BY id")
    assert [(i, lbl, None if q is None else int(q), n) for i, lbl, q, n in got] == [
        (1, "a", 9000000000000000000, "kept"),
        (2, "b", None, "kept"),
        (3, "c", -1, "kept"),
    ]
    assert table_comment(dest_db) == "made by hand"


# --- a completed pipeline, run again ----------------------------------------------------


def test_second_run_of_a_completed_pipeline_is_done_and_writes_nothing(
    pg: Database, dest_db: Database
) -> None:
    """Zoned timestamps and unbounded decimals included: their destination types are
    conventions (MySQL DATETIME(6), DECIMAL(65,30)) that the second run must accept."""
    pg.script("""
        CREATE TABLE events (id int PRIMARY KEY, at timestamptz NOT NULL, amount numeric);
        INSERT INTO events SELECT g, '2024-01-01 00:00+02'::timestamptz + g * interval '1 hour',
            g / 4.0 FROM generate_series(1, 10) g
    """)
    p = pipeline(pg, dest_db, [{"table": "events"}], batch_size=4)
    first = milepost.run(p)
    ledger_after_first = chunks(dest_db)
    pg.sql("INSERT INTO events VALUES (11, now(), 1)")

    events: list[Event] = []
    second = milepost.run(p, on_event=events.append)

    assert (second.status, second.rows_written, second.resumed) == ("done", 0, False)
    assert second.run_id == first.run_id
    assert any("already completed" in (e.text or "") for e in events if e.kind == "finished")
    assert dest_db.sql("SELECT count(*) FROM events") == [(10,)]
    assert chunks(dest_db) == ledger_after_first


def test_unbounded_decimal_rounded_by_mysql_is_caught_by_the_verify_phase(
    pg: Database, my: Database
) -> None:
    """PostgreSQL's unbounded numeric maps to MySQL DECIMAL(65,30), which rounds digits past
    the 30th decimal place without an error: the verify phase refuses to call that done."""
    value = Decimal("0.1234567890123456789012345678901234567")
    pg.sql("CREATE TABLE n (id int PRIMARY KEY, v numeric)")
    pg.sql("INSERT INTO n VALUES (1, %s)", (value,))
    with pytest.raises(VerificationFailed) as caught:
        milepost.run(pipeline(pg, my, [{"table": "n"}]))
    assert caught.value.exit_code == 4
    assert "differs from the source, in n (" in str(caught.value)
    assert my.sql("SELECT v FROM n") == [(Decimal("0.123456789012345678901234567890"),)]


def test_digits_sqlite_cannot_hold_are_caught_by_the_verify_phase(
    pg: Database, lite: Database
) -> None:
    """SQLite keeps 15 significant digits of a NUMERIC: 20 decimal places of 1/3 do not
    survive, and the run says so before finalize instead of reporting success."""
    pg.script("""
        CREATE TABLE thirds (id int PRIMARY KEY, amount numeric);
        INSERT INTO thirds SELECT g, g / 3.0 FROM generate_series(1, 6) g
    """)
    with pytest.raises(VerificationFailed) as caught:
        milepost.run(pipeline(pg, lite, [{"table": "thirds"}], batch_size=100))
    assert "thirds" in str(caught.value)
    assert lite.sql("SELECT amount FROM thirds WHERE id = 1") == [(0.3333333333333333,)]
    report = milepost.verify(pipeline(pg, lite, [{"table": "thirds"}], batch_size=100))
    assert not report.equal and report.streams[0].source_rows == 6


def test_a_run_stopped_in_its_verify_phase_refuses_to_resume_into_a_dropped_table(
    pg: Database, my: Database
) -> None:
    """Stopped in the verify phase (MySQL rounded a digit), then the destination table is
    dropped: the next run says so, exit 2, instead of failing while it compares."""
    pg.sql("CREATE TABLE n (id int PRIMARY KEY, v numeric)")
    pg.sql("INSERT INTO n VALUES (1, %s)", (Decimal("0.1234567890123456789012345678901234567"),))
    p = pipeline(pg, my, [{"table": "n"}])
    with pytest.raises(VerificationFailed):
        milepost.run(p)
    my.sql("DROP TABLE n")
    with pytest.raises(ResumeRefused) as caught:
        milepost.run(p)
    assert caught.value.exit_code == 2 and "'n'" in str(caught.value)
    assert "no longer exists" in str(caught.value)
