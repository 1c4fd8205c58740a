"""The order-independent table checksum and the canonical row form it hashes."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from milepost import connectors
from milepost.urls import parse_database_url
from milepost.verify import _MASK, canonical, row_hash, table_sum

rows_st = st.lists(
    st.tuples(st.integers(), st.text(max_size=5) | st.none(), st.binary(max_size=3)), max_size=20
)


def total(rows: list[tuple]) -> int:
    return sum(row_hash(r) for r in rows) & _MASK


@given(rows_st, st.randoms())
def test_sum_does_not_depend_on_row_order(rows: list[tuple], rnd) -> None:
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert total(shuffled) == total(rows)


@given(rows_st.filter(bool), st.data())
def test_a_doubled_row_changes_the_sum(rows: list[tuple], data: st.DataObject) -> None:
    extra = data.draw(st.sampled_from(rows))
    assert total([*rows, extra]) != total(rows)


def test_pairs_of_different_doubled_rows_differ() -> None:
    """A sum, not an XOR: two copies of a row do not cancel out."""
    assert total([(1, "a"), (1, "a")]) != total([(2, "b"), (2, "b")])


def test_null_and_empty_string_differ() -> None:
    assert canonical(None) != canonical("")
    assert row_hash((1, None)) != row_hash((1, ""))


def test_empty_string_and_empty_bytes_differ() -> None:
    assert row_hash(("",)) != row_hash((b"",))


def test_values_do_not_run_into_each_other() -> None:
    """Each value is length-prefixed, so ("ab", "c") and ("a", "bc") differ."""
    assert row_hash(("ab", "c")) != row_hash(("a", "bc"))


def test_column_order_matters() -> None:
    assert row_hash((1, 2)) != row_hash((2, 1))


def test_numbers_compare_by_value_by_design() -> None:
    """Engines return 12.5 as float, Decimal('12.50') or int-like text: one canonical form."""
    assert canonical(12.5) == canonical(Decimal("12.50")) == canonical(Decimal("12.5"))
    assert canonical(3) == canonical(3.0) == canonical(Decimal("3.000"))
    assert canonical(Decimal("0.10")) == canonical(0.1)
    assert canonical(Decimal("-0")) == canonical(0)
    assert canonical(1) != canonical(Decimal("1.01"))


def test_booleans_match_the_integers_engines_store_them_as() -> None:
    assert canonical(True) == canonical(1)
    assert canonical(False) == canonical(0)


def test_a_number_and_its_text_differ() -> None:
    assert canonical(1) != canonical("1")


def test_aware_timestamps_compare_as_instants() -> None:
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    local = dt.datetime(2024, 1, 1, 17, 30, tzinfo=ist)
    assert canonical(local) == canonical(dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.UTC))
    assert canonical(local) == canonical(dt.datetime(2024, 1, 1, 12, 0))


def test_time_and_timedelta_time_of_day_agree() -> None:
    """MySQL returns TIME as a timedelta."""
    assert canonical(dt.time(1, 2, 3, 4)) == canonical(
        dt.timedelta(hours=1, minutes=2, seconds=3, microseconds=4)
    )


def test_uuid_matches_its_text() -> None:
    u = uuid.uuid4()
    assert canonical(u) == canonical(str(u))


def test_table_sum_streams_a_real_table(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    rows = [(i, None if i % 3 == 0 else str(i)) for i in range(1, 101)]
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    db.commit()
    db.close()
    conn = connectors.connect(parse_database_url(f"sqlite:///{path}", key="t"), "source")
    try:
        got = table_sum(conn, "t", ["id", "v"])
        filtered = table_sum(conn, "t", ["id", "v"], where="id <= 10")
    finally:
        conn.close()
    assert (got.rows, got.checksum) == (100, total(rows))
    assert (filtered.rows, filtered.checksum) == (10, total(rows[:10]))
    assert len(got.hex) == 16
