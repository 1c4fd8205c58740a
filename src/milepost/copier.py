"""One chunk, batch by batch: find the batch's last key, write its rows and the ledger together.

This loop is the guarantee. Each batch is a bounded cursor range (watermark, end]
whose end is read from the cursor's index before any row moves; the rows and the
chunk's new watermark then commit in one destination transaction. A crash before
the commit leaves neither; a crash after leaves both. Resume starts after the
watermark, so nothing is copied twice and nothing is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from milepost import ledger
from milepost.errors import CopyFailed, LeaseLost
from milepost.keyset import Key, RangeFilter
from milepost.schema import SourceTable
from milepost.transfer import Transfer


@dataclass
class BatchDone:
    stream: str
    chunk: int
    rows: int
    watermark: Key | None
    chunk_done: bool


def copy_chunk(
    src: Any,
    dst: Any,
    transfer: Transfer,
    lease: ledger.Lease,
    table: SourceTable,
    chunk: ledger.ChunkRow,
    batch_size: int,
    stop: threading.Event,
    on_batch: Callable[[BatchDone], None],
) -> bool:
    """Copy what remains of `chunk`. True when it is complete, False when asked to stop."""
    stream = table.stream.target
    src_table = src.qualified(table.name, table.stream.schema_)
    where = table.stream.where
    watermark = chunk.resume_after
    while not stop.is_set():
        remaining = RangeFilter(lo=watermark, hi=chunk.hi, where=where)
        try:
            end, final = src.next_batch_end(src_table, table.cursor, remaining, batch_size)
        except Exception as exc:
            raise CopyFailed(
                f"Stream '{stream}', chunk {chunk.index}: reading the source after cursor "
                f"{_show(watermark)} failed: {_reason(exc)}",
                hint="Every batch before it is committed; run again to continue from there.",
            ) from exc
        batch = RangeFilter(lo=watermark, hi=end, where=where)
        try:
            with dst.transaction():
                rows = transfer.write_batch(batch) if end is not None else 0
                ledger.advance(dst, lease, stream, chunk.index, end, rows, final)
        except LeaseLost:
            raise
        except Exception as exc:
            raise CopyFailed(
                f"Stream '{stream}', chunk {chunk.index}: the batch after cursor "
                f"{_show(watermark)} up to {_show(end)} could not be written: "
                f"{_reason(exc)}",
                hint="Every batch before it is committed; fix the cause and run again to "
                "continue from there.",
            ) from exc
        on_batch(BatchDone(stream, chunk.index, rows, end, final))
        if final:
            return True
        watermark = end
    return False


def _show(key: Key | None) -> str:
    if key is None:
        return "(start)"
    return "(" + ", ".join(repr(v) for v in key) + ")"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:500]
