"""Rows the destination refuses: found by halving the batch's cursor range, not row by row.

When a batch fails because the destination rejects a value (a constraint, a value
out of range), the batch is written again inside its transaction in cursor ranges,
each under a savepoint: a range that fails is split in two at its middle key (read
from the source's index) and each half is tried, until the refused rows stand alone.
One bad row in a batch of 10,000 costs about 2 log2(10,000) ≈ 28 small writes, not
10,000, and the good rows still travel by the batch's own fast path.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from milepost import connectors
from milepost.keyset import Key, RangeFilter
from milepost.query import Relation
from milepost.schema import SourceTable
from milepost.transfer import Transfer


@dataclass(frozen=True)
class Refused:
    """One row the destination would not take, and why."""

    key: Key
    row: dict[str, Any]
    reason: str

    def as_json(self) -> str:
        return json.dumps(self.row, default=_plain, ensure_ascii=False, sort_keys=True)


def write_around_refused(
    src: Any,
    dst: Any,
    transfer: Transfer,
    table: SourceTable,
    rng: RangeFilter,
    on_refused: Callable[[Refused], None],
) -> int:
    """Write every row of `rng` the destination accepts; report each refused one.

    Call inside the destination transaction; returns the rows written. `on_refused`
    may raise to stop at the first refused row.
    """
    src_table = table.reader(src)
    where, params = rng.sql(src.keyset(table.cursor))
    relation = table.relation(src)
    total = int(src.query(f"SELECT COUNT(*) FROM {relation} WHERE {where}", params)[0][0])

    def attempt(lo: Key | None, hi: Key | None, n: int) -> int:
        part = table.range(lo, hi)
        try:
            with dst.savepoint():
                return int(transfer.write(transfer.read(part)))
        except Exception as exc:
            reason = connectors.rejection(exc)
            if reason is None:
                raise
        if n <= 1:
            assert hi is not None  # every upper bound here is a key read from the index
            on_refused(Refused(hi, _fetch_row(src, table, src_table, part), reason))
            return 0
        half = n // 2
        mid, _ = src.next_batch_end(src_table, table.cursor, part, half)
        return attempt(lo, mid, half) + attempt(mid, hi, n - half)

    return attempt(rng.lo, rng.hi, total) if total else 0


def _fetch_row(
    src: Any, table: SourceTable, src_table: Relation, rng: RangeFilter
) -> dict[str, Any]:
    query, params = src.select_range(src_table, table.columns, table.cursor, rng)
    rows = src.fetch_rows(query, params)
    return dict(zip(table.columns, rows[0], strict=True)) if rows else {}


def _plain(value: Any) -> Any:
    """JSON for the values drivers hand back, exact enough to repair the row by hand."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.timedelta):
        return str(value)
    return str(value)
