"""What verification compares for a `write: upsert` stream, where sums cannot settle it.

An upsert stream's destination table may hold rows of its own (keys the source does not
have), and holds one row per key: of two source rows with the same key, the later one in
cursor order. So a cursor range whose count and checksum differ is not yet a
difference. It is one only if some source row of the range is not in the destination
by its key, value for value, unless a later source row with the same key superseded it
and that later row is the one there. Rows whose key the source does not hold are the
destination's own: not compared, never repaired away.

This runs only for ranges the sums found different (after narrowing), a page of source
rows at a time: each page's keys are looked up in the destination (through the key's
unique index), and only the rows that do not match are looked up again in the source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from milepost.checksum import RowHasher, encoder_for
from milepost.checksum_sql import client_select
from milepost.keyset import Key, RangeFilter
from milepost.schema import SourceTable
from milepost.write_modes import upsert_key

PAGE = 200  # keys per lookup: one predicate per key, well under every engine's limits


class UpsertSettler:
    """Decides whether a differing range of an upsert stream holds every source row."""

    def __init__(
        self, src: Any, dst: Any, table: SourceTable, src_table: str, dst_table: str
    ) -> None:
        self.src, self.dst, self.table = src, dst, table
        self.src_table, self.dst_table = src_table, dst_table
        self.key = upsert_key(table)
        kinds = [table.logical.get(c) for c in table.columns]
        self.hasher = RowHasher(kinds)
        self.key_encoders = [encoder_for(table.logical.get(c)) for c in self.key]

    def holds(self, lo: Key | None, hi: Key | None, set_aside: Sequence[Key] = ()) -> bool:
        """Does the destination hold every source row of (lo, hi], or the later source row
        that superseded it, by key and value? Rows set aside are left out."""
        t, src = self.table, self.src
        skip = set(set_aside)
        after = lo
        while True:
            rng = t.range(after, hi)
            end, final = src.next_batch_end(self.src_table, t.cursor, rng, PAGE)
            if end is None:
                return True
            page = [
                (key, row)
                for key, row, cursor in self._rows(src, self.src_table, t.range(after, end))
                if cursor not in skip
            ]
            if not self._page_holds(page):
                return False
            if final:
                return True
            after = end

    def _page_holds(self, page: list[tuple[Key, tuple[Any, ...]]]) -> bool:
        if not page:
            return True
        there = self._by_key(self.dst, self.dst_table, [k for k, _ in page], None)
        missing = [k for k, row in page if self.hasher(row) not in there.get(self._id(k), ())]
        if not missing:
            return True
        # Superseded? The destination must hold the source's last row of each such key.
        latest: dict[tuple[bytes, ...], int] = {}
        for key, row, _ in self._lookup(self.src, self.src_table, missing, self.table.stream.where):
            latest[self._id(key)] = self.hasher(row)  # in cursor order: the last one stays
        return all(latest.get(self._id(k)) in there.get(self._id(k), ()) for k in missing)

    def _by_key(
        self, conn: Any, table: str, keys: list[Key], where: str | None
    ) -> dict[tuple[bytes, ...], set[int]]:
        found: dict[tuple[bytes, ...], set[int]] = defaultdict(set)
        for key, row, _ in self._lookup(conn, table, keys, where):
            found[self._id(key)].add(self.hasher(row))
        return found

    def _lookup(
        self, conn: Any, table: str, keys: list[Key], where: str | None
    ) -> list[tuple[Key, tuple[Any, ...], Key]]:
        """The rows of `table` with these key values, in cursor order."""
        out = []
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), PAGE):
            rng = RangeFilter(where=where, within=tuple(unique[start : start + PAGE]))
            cond, params = rng.sql(conn.keyset(self.key))
            order = conn.keyset(self.table.cursor).order()
            out += self._select(conn, table, cond, params, order)
        return out

    def _rows(
        self, conn: Any, table: str, rng: RangeFilter
    ) -> list[tuple[Key, tuple[Any, ...], Key]]:
        cond, params = rng.sql(conn.keyset(self.table.cursor))
        return self._select(conn, table, cond, params, conn.keyset(self.table.cursor).order())

    def _select(
        self, conn: Any, table: str, cond: str, params: list[Any], order: str
    ) -> list[tuple[Key, tuple[Any, ...], Key]]:
        t = self.table
        values = [client_select(conn, c, t.logical.get(c)) for c in t.columns]
        raw = [conn.quote(c) for c in [*self.key, *t.cursor]]
        rows = conn.fetch_rows(
            f"SELECT {', '.join(values + raw)} FROM {table} WHERE {cond} ORDER BY {order}", params
        )
        n, k = len(t.columns), len(self.key)
        return [(tuple(r[n : n + k]), tuple(r[:n]), tuple(r[n + k :])) for r in rows]

    def _id(self, key: Key) -> tuple[bytes, ...]:
        """A key's value whatever engine handed it over (SQLite's text for a date, ...)."""
        return tuple(
            b"N" if v is None else enc(v) for enc, v in zip(self.key_encoders, key, strict=True)
        )
