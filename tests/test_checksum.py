"""The order-independent checksum and the canonical form of each value it hashes."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from milepost import connectors
from milepost.checksum import MASK as _MASK
from milepost.checksum import RangeSum, RowHasher, canonical, encoder_for, row_hash, table_sum
from milepost.typemap import Logical
from milepost.urls import parse_database_url

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


# --- by column kind: what each driver hands over for the same value -----------------------


def enc(kind: str, value: object, **extra: int) -> bytes:
    return encoder_for(Logical(kind, **extra))(value)


def test_timestamps_from_three_drivers_agree() -> None:
    """PostgreSQL: aware datetime; MySQL: naive UTC; SQLite: ISO text, with or without zone."""
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    forms = [
        dt.datetime(2024, 1, 1, 12, 0, 0, 500, tzinfo=dt.UTC),
        dt.datetime(2024, 1, 1, 17, 30, 0, 500, tzinfo=ist),
        dt.datetime(2024, 1, 1, 12, 0, 0, 500),
        "2024-01-01 12:00:00.000500",
        "2024-01-01T17:30:00.000500+05:30",
    ]
    assert len({enc("timestamptz", f) for f in forms}) == 1
    assert enc("timestamp", "2024-01-01 12:00:00") == enc("timestamp", dt.datetime(2024, 1, 1, 12))
    assert enc("timestamp", dt.datetime(2024, 1, 1, 12)) != enc(
        "timestamp", dt.datetime(2024, 1, 1, 12, 0, 0, 1)
    )


def test_dates_and_times_from_text_agree() -> None:
    assert enc("date", "2024-02-29") == enc("date", dt.date(2024, 2, 29))
    assert enc("time", "01:02:03.000004") == enc("time", dt.time(1, 2, 3, 4))
    assert enc("time", dt.timedelta(hours=1, minutes=2, seconds=3)) == enc("time", "01:02:03")


def test_json_compares_by_meaning_not_by_spelling() -> None:
    """jsonb reorders keys and adds spaces; MySQL keeps the text; numbers keep their value."""
    a = '{"b": [1, 2.50, {"y": null, "x": true}], "a": "ü"}'
    b = '{"a":"ü","b":[1,2.5,{"x":true,"y":null}]}'
    as_dict = {"a": "ü", "b": [1, Decimal("2.5"), {"x": True, "y": None}]}
    assert enc("jsonb", a) == enc("json", b) == enc("jsonb", as_dict)
    assert enc("json", '{"a": 1}') != enc("json", '{"a": "1"}')
    assert enc("json", '{"a": 1}') != enc("json", '{"a": 1, "b": null}')
    assert enc("json", "[1, 2]") != enc("json", "[2, 1]")


def test_decimals_compare_by_value_whatever_the_driver_form() -> None:
    forms = [Decimal("44357.60"), Decimal("44357.6"), 44357.6, "44357.60"]
    assert len({enc("decimal", f, precision=12, scale=2) for f in forms}) == 1
    assert enc("decimal", Decimal("1.505")) != enc("decimal", Decimal("1.51"))


def test_float32_compares_the_exact_float32() -> None:
    """PostgreSQL's real arrives as its shortest text, SQLite's as a double, MySQL's (read
    as DOUBLE) as the float's exact double: all are the same float32."""
    import struct

    exact = struct.unpack("f", struct.pack("f", 1.2345678))[0]
    assert enc("float32", exact) == enc("float32", 1.2345678) == enc("float32", "1.2345678")
    assert enc("float32", 1.0) != enc("float32", 1.0000001)
    assert enc("float32", 1.5) != enc("float32", 1.25)


def test_durations_that_are_no_time_of_day_keep_their_length() -> None:
    assert enc("time", dt.timedelta(hours=25)) != enc("time", dt.timedelta(hours=1))
    assert enc("time", dt.timedelta(hours=-1)) != enc("time", dt.timedelta(hours=23))
    assert enc("time", dt.timedelta(hours=1)) == enc("time", dt.time(1))


def test_text_that_is_not_its_kind_compares_as_text() -> None:
    assert enc("timestamp", "infinity") != enc("timestamp", "-infinity")
    assert enc("date", "0044-03-15 BC") != enc("date", "0044-03-15")
    assert enc("date", "2024-01-02 10:00") != enc("date", "2024-01-02")


def test_bools_match_the_integers_other_engines_store() -> None:
    assert enc("bool", True) == enc("bool", 1) and enc("bool", False) == enc("bool", 0)


def test_uuid_case_and_bytes_forms() -> None:
    u = uuid.uuid4()
    assert enc("uuid", u) == enc("uuid", str(u).upper())
    assert enc("bytes", memoryview(b"\x00\x01")) == enc("bytes", b"\x00\x01")


def test_null_differs_from_every_empty_value_in_a_row() -> None:
    for kind in ("text", "varchar", "bytes", "json"):
        hasher = RowHasher([Logical("int64"), Logical(kind)])
        empty = b"" if kind == "bytes" else ("{}" if kind == "json" else "")
        assert hasher((1, None)) != hasher((1, empty)), kind


def test_range_sums_compare_modulo_two_to_the_64() -> None:
    """The database sums signed (PostgreSQL) or unsigned (MySQL) 64-bit hashes exactly; the
    halves of a range are the parent minus the left half."""
    assert RangeSum(3, -1) == RangeSum(3, _MASK)
    assert RangeSum(3, 5) != RangeSum(4, 5)
    rows = [(i, str(i)) for i in range(10)]
    parent, left = RangeSum(10, total(rows)), RangeSum(4, total(rows[:4]))
    right = RangeSum(parent.rows - left.rows, parent.checksum - left.checksum)
    assert right == RangeSum(6, total(rows[4:]))
