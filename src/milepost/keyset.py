"""Keyset pagination: cursor keys, their durable encoding, and the SQL that ranges over them.

A key is a tuple of cursor values. The ledger stores keys as tagged JSON so a
watermark written by one version reads back as exactly the same typed values.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

Key = tuple[Any, ...]


def encode_key(key: Key | None) -> str | None:
    if key is None:
        return None
    return json.dumps(key_to_values(key), separators=(",", ":"))


def key_to_values(key: Key) -> list[Any]:
    """The JSON-ready list `encode_key` writes, for documents that embed keys."""
    return [_tag(v) for v in key]


def decode_key(text: str | None) -> Key | None:
    if text is None:
        return None
    return key_from_values(json.loads(text))


def key_from_values(values: list[Any]) -> Key:
    """A key from the parsed JSON list `encode_key` wrote (no second round of JSON)."""
    return tuple(_untag(v) for v in values)


def _tag(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return {"f": repr(v)}
    if isinstance(v, Decimal):
        return {"d": str(v)}
    if isinstance(v, dt.datetime):
        return {"ts": v.isoformat()}
    if isinstance(v, dt.date):
        return {"date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"time": v.isoformat()}
    if isinstance(v, bytes | bytearray | memoryview):
        return {"b": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, uuid.UUID):
        return {"uuid": str(v)}
    raise TypeError(f"cannot record a cursor value of type {type(v).__name__}")


_UNTAG = {
    "f": float,
    "d": Decimal,
    "ts": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "b": base64.b64decode,
    "uuid": uuid.UUID,
}


def _untag(v: Any) -> Any:
    if isinstance(v, dict):
        ((tag, text),) = v.items()
        return _UNTAG[tag](text)
    return v


def show_key(key: Key | None, none: str = "(start)") -> str:
    """A key as an operator reads it in a message: (42), ('a b', 7), (2024-01-01 10:00:00)."""
    return none if key is None else "(" + ", ".join(_shown(v) for v in key) + ")"


def _shown(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(" ")
    if isinstance(value, dt.date | dt.time | Decimal | uuid.UUID):
        return str(value)
    return repr(value)


def verbatim(fragment: str, placeholder: str) -> str:
    """A user's SQL (a `where:`) escaped to mean exactly what they wrote: drivers with %s
    placeholders read a lone % as the start of one."""
    return fragment.replace("%", "%%") if placeholder == "%s" else fragment


@dataclass(frozen=True)
class KeysetSql:
    """Builds range predicates over a cursor for one SQL dialect.

    PostgreSQL and SQLite compare row values, which their planners turn into one
    index range. MySQL/MariaDB do not use an index for a row-value comparison, so
    there the comparison is spelled out with a leading `c1 >= v1` that the range
    optimizer can use.
    """

    columns: Sequence[str]  # quoted
    placeholder: str
    row_values: bool

    def after(self, key: Key) -> tuple[str, list[Any]]:
        """Rows strictly after `key`."""
        return self._compare(key, ">")

    def up_to(self, key: Key) -> tuple[str, list[Any]]:
        """Rows at or before `key`."""
        return self._compare(key, "<=")

    def order(self, descending: bool = False) -> str:
        way = " DESC" if descending else ""
        return ", ".join(c + way for c in self.columns)

    def _compare(self, key: Key, op: str) -> tuple[str, list[Any]]:
        cols, p = list(self.columns), self.placeholder
        if len(cols) == 1:
            return f"{cols[0]} {op} {p}", [key[0]]
        if self.row_values:
            marks = ", ".join([p] * len(cols))
            return f"({', '.join(cols)}) {op} ({marks})", list(key)
        strict = op[0]  # '<' or '>'
        return self._expanded(cols, list(key), strict, op)

    def _expanded(
        self, cols: list[str], vals: list[Any], strict: str, last_op: str
    ) -> tuple[str, list[Any]]:
        # (a, b, c) > (x, y, z)  ==  a >= x AND (a > x OR (a = x AND (b, c) > (y, z)))
        p = self.placeholder
        if len(cols) == 1:
            return f"{cols[0]} {last_op} {p}", [vals[0]]
        inner, inner_params = self._expanded(cols[1:], vals[1:], strict, last_op)
        sql = (
            f"{cols[0]} {strict}= {p} AND ({cols[0]} {strict} {p} OR ({cols[0]} = {p} AND {inner}))"
        )
        return sql, [vals[0], vals[0], vals[0], *inner_params]


def null_lead(key: Key | None) -> bool:
    """Is this a key of the rows whose leading cursor column is NULL?

    Those rows cannot be ordered against the others (NULL compares as unknown), so they
    are copied as a part of their own, ordered by the cursor's other columns; their keys
    are the whole cursor with None in front. The part starts after (None, None, ...).
    """
    return key is not None and key[0] is None


def nulls_start(cursor: Sequence[str]) -> Key:
    """The lower bound of the NULL-lead part of a stream: before its first row."""
    return (None,) * len(cursor)


@dataclass(frozen=True)
class RangeFilter:
    """The rows of one batch or chunk: after `lo` (exclusive) and up to `hi` (inclusive).

    A batch's `hi` is its last key, read from the index before the batch; a chunk's is
    the boundary planned for it. None leaves that side open. A key with None in front
    (`null_lead`) selects the rows whose leading cursor column is NULL, compared by the
    columns after it; `lead_nullable` keeps those rows out of every other range.
    """

    lo: Key | None = None
    hi: Key | None = None
    where: str | None = None
    # Keys left out, or the only keys taken (rows set aside under `on_row_error: skip`).
    without: tuple[Key, ...] = ()
    within: tuple[Key, ...] = ()
    lead_nullable: bool = False

    def sql(self, keyset: KeysetSql) -> tuple[str, list[Any]]:
        parts: list[str] = []
        params: list[Any] = []
        nulls = null_lead(self.lo) or null_lead(self.hi)
        ks = keyset
        if nulls:
            parts.append(f"{keyset.columns[0]} IS NULL")
            ks = KeysetSql(keyset.columns[1:], keyset.placeholder, keyset.row_values)
        elif self.lead_nullable:
            parts.append(f"{keyset.columns[0]} IS NOT NULL")
        for key, build in ((self.lo, ks.after), (self.hi, ks.up_to)):
            rest = key[1:] if nulls and key is not None else key
            if rest is not None and ks.columns and any(v is not None for v in rest):
                clause, values = build(rest)
                parts.append(f"({clause})")
                params.extend(values)
        if self.where:
            parts.append(f"({verbatim(self.where, keyset.placeholder)})")
        for keys, form in ((self.without, "NOT ({})"), (self.within, "({})")):
            if keys:
                matches = []
                for key in keys:
                    match, values = _equal(keyset, key)
                    matches.append(f"({match})")
                    params.extend(values)
                parts.append(form.format(" OR ".join(matches)))
        return (" AND ".join(parts) or "1=1"), params


def _equal(keyset: KeysetSql, key: Key) -> tuple[str, list[Any]]:
    """The row with exactly this key; a NULL lead matches NULL."""
    terms, values = [], []
    for column, value in zip(keyset.columns, key, strict=True):
        if value is None:
            terms.append(f"{column} IS NULL")
        else:
            terms.append(f"{column} = {keyset.placeholder}")
            values.append(value)
    return " AND ".join(terms), values
