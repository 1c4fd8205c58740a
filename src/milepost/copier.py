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

from milepost import connectors, ledger
from milepost.crash import crash_point
from milepost.errors import CopyFailed, LeaseLost, RowRejected
from milepost.keyset import Key, encode_key, show_key
from milepost.rejects import Refused, write_around_refused
from milepost.schema import SourceTable
from milepost.transfer import Transfer


@dataclass
class BatchDone:
    stream: str
    chunk: int
    rows: int
    watermark: Key | None
    chunk_done: bool
    rejected: int = 0


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
    on_row_error: str = "fail",
) -> bool:
    """Copy what remains of `chunk`. True when it is complete, False when asked to stop."""
    start = chunk.resume_after
    while True:
        outcome = _copy_batches(
            src, dst, transfer, lease, table, chunk, start, batch_size, stop, on_batch
        )
        if isinstance(outcome, bool):
            return outcome
        # A row was refused. The read-ahead has stopped, so the source connection is
        # free to look for it; the batches after it are planned afresh.
        done = _write_refused_batch(src, dst, transfer, lease, table, chunk, outcome, on_row_error)
        on_batch(done)
        if outcome.final:
            return True
        start = outcome.end


def _copy_batches(
    src: Any,
    dst: Any,
    transfer: Transfer,
    lease: ledger.Lease,
    table: SourceTable,
    chunk: ledger.ChunkRow,
    start: Key | None,
    batch_size: int,
    stop: threading.Event,
    on_batch: Callable[[BatchDone], None],
) -> bool | _Planned:
    """The fast path: True when the chunk is done, False when stopped, or the batch that
    the destination refused a row of (rolled back, to be written row-aware)."""
    stream = table.stream.target
    planned = _plan_batches(src, transfer, table, chunk, start, batch_size, stop)
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
                    crash_point("copy.before_commit")
                    ledger.advance(dst, lease, stream, chunk.index, batch.end, rows, batch.final)
            except LeaseLost:
                raise
            except Exception as exc:
                if connectors.rejection(exc) is not None:
                    return batch
                raise CopyFailed(
                    f"Stream '{stream}', chunk {chunk.index}: the batch after cursor "
                    f"{show_key(batch.lo)} up to {show_key(batch.end)} could not be written: "
                    f"{_reason(exc)}",
                    hint="Every batch before it is committed; fix the cause and run again to "
                    "continue from there.",
                ) from exc
            crash_point("copy.after_commit")
            on_batch(BatchDone(stream, chunk.index, rows, batch.end, batch.final))
            if batch.final:
                return True
        return False


def _write_refused_batch(
    src: Any,
    dst: Any,
    transfer: Transfer,
    lease: ledger.Lease,
    table: SourceTable,
    chunk: ledger.ChunkRow,
    batch: _Planned,
    on_row_error: str,
) -> BatchDone:
    """Write the batch around its refused rows: set them aside (`skip`) or name the first
    one (`fail`). The rows, the set-aside rows and the watermark commit together."""
    stream = table.stream.target
    refused: list[Refused] = []

    def on_refused(row: Refused) -> None:
        if on_row_error != "skip":
            raise RowRejected(
                f"Stream '{stream}', chunk {chunk.index}: the destination refused the row "
                f"with cursor {show_key(row.key)}: {row.reason}",
                hint="Every batch before it is committed. Fix the value or the destination "
                "table and run again, or set `on_row_error: skip` to set such rows aside in "
                "_milepost_rejected_rows and carry on.",
            )
        refused.append(row)

    rng = table.range(batch.lo, batch.end)
    try:
        with dst.transaction():
            rows = write_around_refused(src, dst, transfer, table, rng, on_refused)
            ledger.record_rejected(
                dst,
                lease.pipeline,
                stream,
                chunk.index,
                [(encode_key(r.key) or "", r.as_json(), r.reason) for r in refused],
            )
            ledger.advance(
                dst, lease, stream, chunk.index, batch.end, rows, batch.final, len(refused)
            )
    except (LeaseLost, RowRejected):
        raise
    except Exception as exc:
        raise CopyFailed(
            f"Stream '{stream}', chunk {chunk.index}: the batch after cursor {show_key(batch.lo)} "
            f"up to {show_key(batch.end)} could not be written around its refused rows: "
            f"{_reason(exc)}",
            hint="Every batch before it is committed; run again to continue from there.",
        ) from exc
    crash_point("copy.refused_after_commit")
    return BatchDone(stream, chunk.index, rows, batch.end, batch.final, len(refused))


def _plan_batches(
    src: Any,
    transfer: Transfer,
    table: SourceTable,
    chunk: ledger.ChunkRow,
    start: Key | None,
    batch_size: int,
    stop: threading.Event,
) -> Iterator[_Planned]:
    """Successive batches of the chunk after `start`: each one's last key first, then its
    rows."""
    src_table = table.reader(src)
    watermark = start
    while not stop.is_set():
        remaining = table.range(watermark, chunk.hi)
        try:
            end, final = src.next_batch_end(src_table, table.cursor, remaining, batch_size)
            payload = None
            if end is not None:
                payload = transfer.read(table.range(watermark, end))
        except Exception as exc:
            raise CopyFailed(
                f"Stream '{table.stream.target}', chunk {chunk.index}: reading the source "
                f"after cursor {show_key(watermark)} failed: {_reason(exc)}",
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


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:500]
