"""Counts and order-independent checksums of a table, comparable across engines.

Each row is encoded canonically (numbers by value, timestamps in UTC, bytes as
bytes, NULL distinct from empty) and hashed to 64 bits with BLAKE2b; a table's
checksum is the sum of its row hashes modulo 2**64, so row order does not matter
and a doubled row changes it. Rows are streamed from a server-side cursor, so memory stays
bounded whatever the table's size.

This is the client-side half of verification; chunked, in-database checksums and
repair build on it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class TableSum:
    rows: int
    checksum: int

    @property
    def hex(self) -> str:
        return f"{self.checksum:016x}"


def canonical(value: Any) -> bytes:
    """One value's engine-independent bytes, tagged by kind."""
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
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return b"t" + value.isoformat(" ").encode()
    if isinstance(value, dt.date):
        return b"d" + value.isoformat().encode()
    if isinstance(value, dt.time):
        return b"c" + value.replace(tzinfo=None).isoformat().encode()
    if isinstance(value, dt.timedelta):
        return b"c" + (dt.datetime.min + value).time().isoformat().encode()
    if isinstance(value, uuid.UUID):
        return b"s" + str(value).encode()
    return b"s" + str(value).encode("utf-8")


def _number(value: int | float | Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    d = Decimal(repr(value)) if isinstance(value, float) else value
    if not d.is_finite():
        return str(d)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def row_hash(row: Sequence[Any]) -> int:
    h = hashlib.blake2b(digest_size=8)
    for value in row:
        data = canonical(value)
        h.update(len(data).to_bytes(4, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little")


def table_sum(conn: Any, table: str, columns: Sequence[str], where: str | None = None) -> TableSum:
    """Count and checksum `columns` of `table`, streamed in bounded memory, in any order."""
    cols = ", ".join(conn.quote(c) for c in columns)
    query = f"SELECT {cols} FROM {table}" + (f" WHERE {conn.verbatim(where)}" if where else "")
    rows, total = 0, 0
    for row in conn.stream_rows(query):
        total = (total + row_hash(row)) & _MASK
        rows += 1
    return TableSum(rows, total)
