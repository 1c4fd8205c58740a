"""One chunk, batch by batch: find the batch's last key, write its rows and the ledger together.

This loop is the guarantee. Each batch is a bounded cursor range (watermark, end]
whose end is read from the cursor's index before any row moves; the rows and the
chunk's new watermark then commit in one destination transaction. A crash before
the commit leaves neither; a crash after leaves both. Resume starts after the
watermark, so nothing is copied twice and nothing is skipped.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
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


@dataclass
class _Planned:
    """A batch whose range is settled and whose rows (for prefetching paths) are read."""

    lo: Key | None
    end: Key | None
    final: bool
    payload: Any


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
    planned = _plan_batches(src, transfer, table, chunk, batch_size, stop)
    if transfer.prefetch:
        planned = _read_ahead(planned, stop)
    # Closing stops the read-ahead thread at once, whether we finish, stop or fail.
    with contextlib.closing(planned):
        for batch in planned:
            if stop.is_set():
                return False
            try:
                with dst.transaction():
                    rows = transfer.write(batch.payload) if batch.end is not None else 0
                    ledger.advance(dst, lease, stream, chunk.index, batch.end, rows, batch.final)
            except LeaseLost:
                raise
            except Exception as exc:
                raise CopyFailed(
                    f"Stream '{stream}', chunk {chunk.index}: the batch after cursor "
                    f"{_show(batch.lo)} up to {_show(batch.end)} could not be written: "
                    f"{_reason(exc)}",
                    hint="Every batch before it is committed; fix the cause and run again to "
                    "continue from there.",
                ) from exc
            on_batch(BatchDone(stream, chunk.index, rows, batch.end, batch.final))
            if batch.final:
                return True
        return False


def _plan_batches(
    src: Any,
    transfer: Transfer,
    table: SourceTable,
    chunk: ledger.ChunkRow,
    batch_size: int,
    stop: threading.Event,
) -> Iterator[_Planned]:
    """Successive batches of the chunk: each one's last key first, then its rows."""
    src_table = src.qualified(table.name, table.stream.schema_)
    where = table.stream.where
    watermark = chunk.resume_after
    while not stop.is_set():
        remaining = RangeFilter(lo=watermark, hi=chunk.hi, where=where)
        try:
            end, final = src.next_batch_end(src_table, table.cursor, remaining, batch_size)
            payload = None
            if end is not None:
                payload = transfer.read(RangeFilter(lo=watermark, hi=end, where=where))
        except Exception as exc:
            raise CopyFailed(
                f"Stream '{table.stream.target}', chunk {chunk.index}: reading the source "
                f"after cursor {_show(watermark)} failed: {_reason(exc)}",
                hint="Every batch before it is committed; run again to continue from there.",
            ) from exc
        yield _Planned(watermark, end, final, payload)
        if final:
            return
        watermark = end


def _read_ahead(batches: Iterator[_Planned], stop: threading.Event) -> Iterator[_Planned]:
    """Read batch k+1 from the source while batch k is written and committed.

    The reader starts a batch only once the writer has taken the previous one, so at
    most two batches are in memory: the one being written and the one read ahead. A
    reader error surfaces in the writer where that batch would have been written.
    """
    handoff: queue.Queue[_Planned | BaseException | None] = queue.Queue(maxsize=1)
    taken = threading.Semaphore(1)  # free when the writer has taken the last hand-off
    finished = threading.Event()

    def reader() -> None:
        try:
            while _wait(taken, finished):
                batch = next(batches, None)
                handoff.put(batch)  # never blocks: the slot is free
                if batch is None:
                    return
        except BaseException as exc:
            handoff.put(exc)

    thread = threading.Thread(target=reader, name="milepost-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not None:
            taken.release()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        finished.set()
        taken.release()  # wake a reader waiting for the slot, so it sees `finished`
        thread.join()


def _wait(taken: threading.Semaphore, finished: threading.Event) -> bool:
    """Wait for the hand-off slot; False once the writer has stopped taking batches."""
    while not finished.is_set():
        if taken.acquire(timeout=0.1):
            return not finished.is_set()
    return False


def _show(key: Key | None) -> str:
    if key is None:
        return "(start)"
    return "(" + ", ".join(repr(v) for v in key) + ")"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:500]
