"""Row checksums computed on the client: one canonical form of each value, whatever engine.

Two engines hand the same value over differently: PostgreSQL gives a `datetime` with
a zone where MySQL gives a naive one in UTC and SQLite gives ISO text; PostgreSQL's
`jsonb` comes back with its keys in its own order, MySQL's JSON as the text it was
given. So each column is encoded by what it holds (its logical kind, from the source
table), not by the Python type that arrives:

- numbers (integers, decimals, floats, booleans) by exact value: 1.50 = 1.5, 0.1 is
  the float's shortest repr, True = 1; `float32` columns as the exact float32;
- text as UTF-8; bytes as bytes; uuids as lowercase text;
- dates, times and timestamps as ISO text with microseconds, zoned ones in UTC; a
  duration that is no time of day (MySQL TIME '25:00:00') by its exact length; text
  that does not parse as its kind ('infinity') as that text;
- JSON parsed and written again with sorted keys, no spaces, numbers by value;
- NULL as its own tag, so NULL and '' (or b'') differ.

Each value is tagged and length-prefixed, the row is hashed to 64 bits (BLAKE2b), and
a range's checksum is the sum of its row hashes modulo 2**64: independent of row order,
and a doubled row changes it (an XOR would cancel). Rows are streamed, so memory stays
bounded whatever the range's size.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from milepost.typemap import Logical

MASK = (1 << 64) - 1

Encoder = Callable[[Any], bytes]


@dataclass(frozen=True)
class RangeSum:
    """The row count and order-independent checksum of some rows."""

    rows: int
    checksum: int

    @property
    def hex(self) -> str:
        return f"{self.checksum & MASK:016x}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSum):
            return NotImplemented
        return self.rows == other.rows and (self.checksum - other.checksum) & MASK == 0

    def __hash__(self) -> int:
        return hash((self.rows, self.checksum & MASK))

    def __sub__(self, other: RangeSum) -> RangeSum:
        """The rows of this range but for those of `other` (a part of it): sums add up."""
        return RangeSum(self.rows - other.rows, (self.checksum - other.checksum) & MASK)


# --- one value ---------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """A value's engine-independent bytes by its Python type (no column kind known)."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"n1" if value else b"n0"
    if isinstance(value, int | float | Decimal):
        return b"n" + _number(value).encode()
    if isinstance(value, str):
        return b"s" + value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return b"x" + bytes(value)
    if isinstance(value, dt.datetime):
        return _timestamp(value)
    if isinstance(value, dt.date):
        return b"d" + value.isoformat().encode()
    if isinstance(value, dt.time | dt.timedelta):
        return _time(value)
    if isinstance(value, uuid.UUID):
        return b"s" + str(value).encode()
    return b"s" + str(value).encode("utf-8")


def _number(value: int | float | Decimal | str) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        d = Decimal(repr(value))
    elif isinstance(value, str):
        d = Decimal(value.strip())
    else:
        d = value
    if not d.is_finite():
        return "NaN" if d.is_nan() else str(d)
    if d == d.to_integral_value():
        return str(int(d))
    # Not d.normalize(): it rounds to the context's 28 digits, so two numeric(38, 10)
    # values differing in their last digits would look equal. "f" writes every digit.
    return format(d, "f").rstrip("0")


def _as_number(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"n1" if value else b"n0"
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode()
    return b"n" + _number(value).encode()


def _as_float32(value: Any) -> bytes:
    """The float32 the value stands for, exactly: PostgreSQL's real arrives as its shortest
    text, SQLite's REAL as a double, MySQL's FLOAT (read as DOUBLE: see client_select)
    as the float's exact double; all round to the same float32."""
    if isinstance(value, str | bytes | bytearray):
        value = float(value)
    single = struct.unpack("f", struct.pack("f", float(value)))[0]
    return b"n" + _number(single).encode()


def _as_text(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return b"s" + bytes(value)
    return b"s" + str(value).encode("utf-8")


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return b"x" + value.encode("utf-8")
    return b"x" + bytes(value)


def _as_uuid(value: Any) -> bytes:
    return b"s" + str(value).lower().encode()


def _unparsed(value: str) -> bytes:
    """Text that does not parse as the column's kind (PostgreSQL's 'infinity', a BC date,
    a SQLite value stored in another form) compares as that text: equal only to itself."""
    return b"s" + value.encode("utf-8")


def _timestamp(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return _unparsed(value)
    elif not isinstance(value, dt.datetime):  # a date in a timestamp column (SQLite)
        value = dt.datetime.combine(value, dt.time())
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return b"t" + value.isoformat(" ", timespec="microseconds").encode()


def _date(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            return _unparsed(value)
    elif isinstance(value, dt.datetime):
        value = value.date()
    return b"d" + value.isoformat().encode()


def _time(value: Any) -> bytes:
    if isinstance(value, str):
        try:
            value = dt.time.fromisoformat(value)
        except ValueError:
            return _unparsed(value)
    elif isinstance(value, dt.timedelta):  # MySQL hands TIME over as a duration
        if not dt.timedelta(0) <= value < dt.timedelta(days=1):
            # A duration no time of day can be ('25:00:00', '-01:00:00'): its exact length.
            return b"u" + str(value // dt.timedelta(microseconds=1)).encode()
        value = (dt.datetime.min + value).time()
    return b"c" + value.replace(tzinfo=None).isoformat(timespec="microseconds").encode()


def _json(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value, parse_float=Decimal)
    return b"j" + _json_text(value).encode("utf-8")


def _json_text(value: Any) -> str:
    """JSON with sorted keys, no spaces, numbers by value: the same for any engine's text."""
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{_json_text(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float | Decimal):
        return _number(value)
    return json.dumps(value, ensure_ascii=False)


_BY_KIND: dict[str, Encoder] = {
    "int16": _as_number,
    "int32": _as_number,
    "int64": _as_number,
    "decimal": _as_number,
    "float64": _as_number,
    "bool": _as_number,
    "float32": _as_float32,
    "text": _as_text,
    "varchar": _as_text,
    "bytes": _as_bytes,
    "uuid": _as_uuid,
    "json": _json,
    "jsonb": _json,
    "date": _date,
    "time": _time,
    "timestamp": _timestamp,
    "timestamptz": _timestamp,
}


def encoder_for(kind: Logical | None) -> Encoder:
    """The canonical encoder for a column of this kind (by Python type when unknown)."""
    return _BY_KIND.get(kind.kind, canonical) if kind is not None else canonical


# --- rows and ranges ---------------------------------------------------------------


class RowHasher:
    """Hashes rows whose columns are of the given kinds, in that order."""

    def __init__(self, kinds: Sequence[Logical | None]) -> None:
        self.encoders = [encoder_for(k) for k in kinds]

    def __call__(self, row: Sequence[Any]) -> int:
        parts = []
        for encode, value in zip(self.encoders, row, strict=True):
            data = b"N" if value is None else encode(value)
            parts.append(len(data).to_bytes(4, "little"))
            parts.append(data)
        digest = hashlib.blake2b(b"".join(parts), digest_size=8).digest()
        return int.from_bytes(digest, "little")


def row_hash(row: Sequence[Any]) -> int:
    """A row's hash with every column encoded by its Python type."""
    return RowHasher([None] * len(row))(row)


def sum_rows(rows: Any, hasher: Callable[[Sequence[Any]], int]) -> RangeSum:
    """Count and checksum rows as they stream past."""
    count, total = 0, 0
    for row in rows:
        total += hasher(row)
        count += 1
    return RangeSum(count, total & MASK)


def table_sum(conn: Any, table: str, columns: Sequence[str], where: str | None = None) -> RangeSum:
    """Count and checksum `columns` of a whole table by their Python types, streamed."""
    cols = ", ".join(conn.quote(c) for c in columns)
    query = f"SELECT {cols} FROM {table}" + (f" WHERE {conn.verbatim(where)}" if where else "")
    return sum_rows(conn.stream_rows(query), row_hash)
