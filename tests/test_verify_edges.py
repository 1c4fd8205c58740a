"""Values a canonical form could confuse, each of which once did: verification must see
every one of these differences, and a repair must not destroy what it should keep."""

from __future__ import annotations

from typing import Any

import milepost
from conftest import Database
from milepost.keyset import encode_key


def pipeline(src: Database, dst: Database, table: str, **extra: Any) -> milepost.Pipeline:
    return milepost.build_pipeline(
        {
            "name": "edges",
            "source": {"url": src.url},
            "destination": {"url": dst.url},
            "streams": [{"table": table}],
            "batch_size": 10,
            **extra,
        }
    )


def copied(src: Database, dst: Database, table: str, **extra: Any) -> milepost.Pipeline:
    p = pipeline(src, dst, table, **extra)
    assert milepost.run(p).status == "done"
    return p


def test_a_null_boolean_is_not_false(pg: Database, my: Database) -> None:
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, b boolean)")
    pg.sql("INSERT INTO t VALUES (1, NULL), (2, true), (3, false)")
    p = copied(pg, my, "t")
    my.sql("UPDATE t SET b = 0 WHERE id = 1")
    report = milepost.verify(p)
    assert [(d.lo, d.hi) for d in report.differences] == [(None, None)]


def test_a_float32_differing_in_its_seventh_digit_differs(pg: Database, my: Database) -> None:
    """MySQL prints a FLOAT with 6 digits; the comparison reads its exact value."""
    pg.sql("CREATE TABLE f (id int PRIMARY KEY, v real)")
    pg.sql("INSERT INTO f VALUES (1, 1), (2, 2.5)")
    p = copied(pg, my, "f")
    assert milepost.verify(p).equal
    my.sql("UPDATE f SET v = 1.0000001 WHERE id = 1")
    assert my.sql("SELECT v = 1 FROM f WHERE id = 1") == [(0,)]
    assert not milepost.verify(p).equal


def test_times_a_day_apart_differ(my: Database) -> None:
    """MySQL's TIME is a duration: 25:00:00 is not 01:00:00, nor -01:00:00 23:00:00."""
    my.sql("CREATE TABLE d (id int PRIMARY KEY, t time(6))")
    my.sql("INSERT INTO d VALUES (1, '25:00:00'), (2, '-01:00:00'), (3, '01:00:00')")
    my.sql("CREATE TABLE e LIKE d")
    my.sql("INSERT INTO e VALUES (1, '01:00:00'), (2, '23:00:00'), (3, '01:00:00')")
    p = milepost.build_pipeline(
        {
            "name": "edges",
            "source": {"url": my.url},
            "destination": {"url": my.url},
            "streams": [{"table": "d", "name": "e"}],
        }
    )
    assert not milepost.verify(p).equal
    my.sql("DELETE FROM e")
    my.sql("INSERT INTO e SELECT * FROM d")
    assert milepost.verify(p).equal


def test_a_decimal_sqlite_keeps_past_its_scale_is_not_rounded_into_equality(
    lite: Database, pg: Database
) -> None:
    lite.sql("CREATE TABLE m (id INTEGER PRIMARY KEY, v DECIMAL(10,2))")
    lite.sql("INSERT INTO m VALUES (1, 1.25), (2, 3)")
    p = copied(lite, pg, "m")
    assert milepost.verify(p).equal
    lite.sql("UPDATE m SET v = 0.125 WHERE id = 1")  # SQLite does not enforce the scale
    pg.sql("UPDATE m SET v = 0.13 WHERE id = 1")
    assert not milepost.verify(p).equal


def test_infinite_and_bc_timestamps_are_told_apart(pg: Database, tmp_path: Any) -> None:
    """to_char writes NULL for infinity and drops the era of a BC date."""
    pg.script("""
        CREATE TABLE s (id int PRIMARY KEY, at timestamp, d date);
        INSERT INTO s VALUES (1, 'infinity', '0044-03-15 BC'), (2, '2024-01-01', '2024-01-01')
    """)
    other = Database("postgresql", pg.url)
    pg.script("""
        CREATE TABLE s2 (id bigint PRIMARY KEY, at timestamp, d date);
        INSERT INTO s2 VALUES (1, '-infinity', '0044-03-15'), (2, '2024-01-01', '2024-01-01')
    """)
    p = milepost.build_pipeline(
        {
            "name": "edges",
            "source": {"url": pg.url},
            "destination": {"url": other.url},
            "streams": [{"table": "s", "name": "s2"}],
        }
    )
    report = milepost.verify(p)  # id int against bigint: the canonical text, then by value
    assert not report.equal, report.as_dict()
    pg.sql("UPDATE s2 SET at = 'infinity', d = '0044-03-15 BC' WHERE id = 1")
    assert milepost.verify(p).equal


def test_case_differences_count_under_a_case_blind_collation(pg: Database) -> None:
    pg.script("""
        CREATE COLLATION blind (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
        CREATE TABLE w (id int PRIMARY KEY, word text COLLATE blind);
        INSERT INTO w VALUES (1, 'Hello'), (2, 'World')
    """)
    other = Database("postgresql", pg.url)
    pg.script("""
        CREATE TABLE w2 (id int PRIMARY KEY, word text COLLATE blind);
        INSERT INTO w2 VALUES (1, 'hello'), (2, 'World')
    """)
    p = milepost.build_pipeline(
        {
            "name": "edges",
            "source": {"url": pg.url},
            "destination": {"url": other.url},
            "streams": [{"table": "w", "name": "w2"}],
        }
    )
    report = milepost.verify(p)
    assert report.streams[0].method == "in-database"
    assert not report.equal


def test_a_set_aside_row_put_in_by_hand_survives_a_repair(pg: Database) -> None:
    pg.sql("CREATE TABLE r (id int PRIMARY KEY, v text)")
    pg.sql("INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 100) g")
    other = Database("postgresql", pg.url)
    pg.sql("CREATE TABLE r2 (id int PRIMARY KEY, v text)")
    pg.sql("INSERT INTO r2 SELECT id, v FROM r")
    p = milepost.build_pipeline(
        {
            "name": "edges",
            "source": {"url": pg.url},
            "destination": {"url": other.url},
            "streams": [{"table": "r", "name": "r2"}],
            "batch_size": 10,
        }
    )
    assert milepost.verify(p).equal  # creates nothing: no ledger yet
    from milepost import connectors, ledger

    conn = connectors.connect(p.destination_url(), "destination")
    try:
        ledger.ensure_tables(conn)
        with conn.transaction():
            ledger.record_rejected(conn, "edges", "r2", 0, [(encode_key((5,)) or "", "{}", "x")])
    finally:
        conn.close()
    pg.sql("UPDATE r2 SET v = 'by hand' WHERE id = 5")  # what an operator fixed
    pg.sql("UPDATE r2 SET v = 'wrong' WHERE id = 7")
    report = milepost.verify(p)
    assert [d.hi for d in report.differences] != [] and report.streams[0].rows_set_aside == 1
    milepost.repair(p, report.differences)
    assert pg.sql("SELECT v FROM r2 WHERE id IN (5, 7) ORDER BY id") == [("by hand",), ("v7",)]
    assert pg.sql("SELECT count(*) FROM r2") == [(100,)]
    assert milepost.verify(p).equal


def test_a_zoned_sqlite_cursor_is_compared_whole(lite: Database, pg: Database) -> None:
    """SQLite keeps timestamps as text: '+02:00' rows do not sort as their instants."""
    lite.sql("CREATE TABLE z (at TIMESTAMPTZ PRIMARY KEY, v INTEGER)")
    for i in range(60):
        offset = "+02:00" if i % 3 == 0 else "+00:00"
        lite.sql("INSERT INTO z VALUES (?, ?)", (f"2024-01-01 00:{i:02d}:00{offset}", i))
    p = copied(lite, pg, "z")
    assert milepost.verify(p).equal
    pg.sql("UPDATE z SET v = -1 WHERE v = 30")
    report = milepost.verify(p)
    assert [(d.lo, d.hi) for d in report.differences] == [(None, None)]
    milepost.repair(p, report.differences)
    assert pg.sql("SELECT count(*), sum(v) FROM z") == [(60, sum(range(60)))]
