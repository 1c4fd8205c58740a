"""Cursor keys: their durable encoding, and the SQL predicates that range over them."""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import uuid
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milepost.keyset import KeysetSql, RangeFilter, decode_key, encode_key

# Whole-second offsets: historical zones have them (Paris was +00:09:21), none has less.
zones = st.builds(
    lambda s: dt.timezone(dt.timedelta(seconds=s)), st.integers(-23 * 3600, 23 * 3600)
)
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(),
    st.decimals(allow_nan=False),
    st.datetimes(),
    st.datetimes(timezones=zones),
    st.dates(),
    st.times(),
    st.binary(),
    st.uuids(),
    st.floats(),
    st.booleans(),
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


@given(st.lists(scalars, min_size=1, max_size=4))
def test_encoded_key_decodes_to_the_same_typed_values(key: list[object]) -> None:
    decoded = decode_key(encode_key(tuple(key)))
    assert decoded is not None and len(decoded) == len(key)
    for before, after in zip(key, decoded, strict=True):
        assert _same(before, after), (before, after)


@given(st.datetimes(timezones=zones))
def test_aware_timestamp_keeps_its_offset_not_just_its_instant(value: dt.datetime) -> None:
    (after,) = decode_key(encode_key((value,)))
    assert after.utcoffset() == value.utcoffset()


def test_decimal_keeps_its_exponent() -> None:
    (after,) = decode_key(encode_key((Decimal("12.50"),)))
    assert str(after) == "12.50"


def test_none_key_encodes_to_none() -> None:
    assert encode_key(None) is None
    assert decode_key(None) is None


def test_unsupported_cursor_value_is_refused_by_type() -> None:
    with pytest.raises(TypeError, match="complex"):
        encode_key((1j,))


# --- predicates, checked against Python's own tuple order ---------------------------------

COLS = ("a", "b", "c")
# Columns of one kind each, with few distinct values so keys share leading parts.
column_values = [st.integers(-2, 2), st.sampled_from(["", "a", "ab", "b"]), st.integers(0, 2)]


def _keys(width: int) -> st.SearchStrategy[tuple]:
    return st.tuples(*column_values[:width])


@st.composite
def table_and_key(draw: st.DrawFn) -> tuple[int, list[tuple], tuple]:
    width = draw(st.integers(1, 3))
    rows = draw(st.lists(_keys(width), max_size=30, unique=True))
    key = draw(_keys(width))
    return width, rows, key


def _select(rows: list[tuple], width: int, clause: str, params: list) -> list[tuple]:
    db = sqlite3.connect(":memory:")
    cols = ", ".join(COLS[:width])
    db.execute(f"CREATE TABLE t ({cols})")
    db.executemany(f"INSERT INTO t VALUES ({', '.join('?' * width)})", rows)
    return sorted(db.execute(f"SELECT {cols} FROM t WHERE {clause}", params).fetchall())


OPS = {
    "after": lambda row, key: row > key,
    "up_to": lambda row, key: row <= key,
}


@pytest.mark.parametrize("row_values", [True, False], ids=["row-values", "expanded"])
@pytest.mark.parametrize("op", sorted(OPS))
@settings(max_examples=150, deadline=None)
@given(case=table_and_key())
def test_predicate_selects_what_tuple_comparison_selects(
    case: tuple[int, list[tuple], tuple], op: str, row_values: bool
) -> None:
    width, rows, key = case
    ks = KeysetSql(COLS[:width], "?", row_values=row_values)
    clause, params = getattr(ks, op)(key)
    assert _select(rows, width, clause, params) == sorted(r for r in rows if OPS[op](r, key))


@pytest.mark.parametrize("row_values", [True, False], ids=["row-values", "expanded"])
@settings(max_examples=100, deadline=None)
@given(case=table_and_key(), bounds=st.data())
def test_range_filter_selects_the_range_after_lo_up_to_hi(
    case: tuple[int, list[tuple], tuple], bounds: st.DataObject, row_values: bool
) -> None:
    width, rows, lo = case
    hi = bounds.draw(st.none() | _keys(width))
    ks = KeysetSql(COLS[:width], "?", row_values=row_values)
    clause, params = RangeFilter(lo=lo, hi=hi, where="a >= -1").sql(ks)
    expected = [r for r in rows if lo < r and (hi is None or r <= hi) and r[0] >= -1]
    assert _select(rows, width, clause, params) == sorted(expected)


def test_expanded_form_leads_with_an_indexable_range_on_the_first_column() -> None:
    clause, params = KeysetSql(("a", "b"), "%s", row_values=False).after((1, 2))
    assert clause.startswith("a >= %s AND ")
    assert params[0] == 1


def test_row_value_form_is_one_comparison() -> None:
    clause, params = KeysetSql(("a", "b"), "%s", row_values=True).up_to((1, 2))
    assert (clause, params) == ("(a, b) <= (%s, %s)", [1, 2])


def test_empty_range_filter_matches_everything() -> None:
    assert RangeFilter().sql(KeysetSql(("a",), "?", True)) == ("1=1", [])


def test_order_lists_every_cursor_column_in_both_directions() -> None:
    ks = KeysetSql(('"a"', '"b"'), "?", True)
    assert ks.order() == '"a", "b"'
    assert ks.order(descending=True) == '"a" DESC, "b" DESC'


def test_uuid_and_bytes_keys_are_tagged_not_stringified() -> None:
    key = (uuid.UUID(int=5), b"\x00\xff")
    assert decode_key(encode_key(key)) == key
