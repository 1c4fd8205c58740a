"""Repair: re-copy only the ranges a verification found different, one transaction each.

For each differing range (lo, hi] of a stream, one destination transaction deletes the
destination's rows in the range, copies the source's rows of the range again (batch
by batch, by the stream's usual transfer path), and records the repair in
`_milepost_repairs`. A crash leaves each range either as it was or repaired, never
half of it. The repair holds the pipeline's lease throughout, so no run writes while
it does; it leaves the run's phase and status as they were.

Afterwards a checkpoint records the repairs in its audit trail (when the pipeline has
a checkpoint store), and the repaired ranges are verified again.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from milepost import connectors, ledger, schema, transfer
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.config import Pipeline
from milepost.errors import CopyFailed, LeaseLost
from milepost.events import Event, Listener, ignore
from milepost.keyset import Key, encode_key, show_key
from milepost.verify import Difference, in_range

_sql = ledger.portable_sql


@dataclass(frozen=True)
class Repaired:
    stream: str
    lo: Key | None
    hi: Key | None
    rows_deleted: int
    rows_copied: int


def repair(
    pipeline: Pipeline, differences: list[Difference], *, on_event: Listener = ignore
) -> list[Repaired]:
    """Delete and copy again each differing range; returns what was done, range by range."""
    if not differences:
        return []
    src = connectors.connect(pipeline.source_url(), "source")
    dst = None
    try:
        dst = connectors.connect(pipeline.destination_url(), "destination")
        ledger.ensure_tables(dst)
        lease, before, _ = ledger.acquire(dst, pipeline.name, pipeline.fingerprint())
        try:
            done = _repair_all(pipeline, src, dst, lease, differences, on_event)
        finally:
            status = before.status if before is not None else "new"
            ledger.release(dst, lease, status, before.message if before is not None else None)
        _audit(pipeline, dst, done, on_event)
        return done
    finally:
        src.close()
        if dst is not None:
            dst.close()


def _repair_all(
    pipeline: Pipeline,
    src: Any,
    dst: Any,
    lease: ledger.Lease,
    differences: list[Difference],
    emit: Listener,
) -> list[Repaired]:
    run = ledger.read_run(dst, pipeline.name)
    run_id = run.run_id if run is not None else ""
    set_aside = ledger.read_set_aside(dst, pipeline.name)
    by_target = {s.target: s for s in pipeline.streams}
    tables: dict[str, schema.SourceTable] = {}
    paths: dict[str, transfer.Transfer] = {}
    done = []
    for diff in differences:
        if diff.stream not in tables:
            tables[diff.stream] = schema.inspect_source(src, by_target[diff.stream])
            # Chosen outside any transaction: some paths set up their connection first.
            paths[diff.stream] = transfer.choose(src, dst, tables[diff.stream])
        table, path = tables[diff.stream], paths[diff.stream]
        try:
            with dst.transaction():
                if dst.family == "postgresql":
                    # Reported as repaired only once it is on disk (batches commit
                    # asynchronously: connectors/postgres.py).
                    dst.execute("SET LOCAL synchronous_commit = on")
                _hold(dst, lease)
                skip = tuple(set_aside.get(diff.stream, ()))
                deleted = _delete_range(dst, table, diff, skip)
                copied = _copy_range(src, path, table, diff, pipeline.batch_size, skip)
                _record(dst, lease, run_id, diff, deleted, copied)
        except LeaseLost:
            raise
        except Exception as exc:
            raise CopyFailed(
                f"Stream '{diff.stream}': repairing the range after cursor {show_key(diff.lo)} "
                f"up to {show_key(diff.hi, 'the end')} failed and was rolled back: "
                f"{' '.join(str(exc).split())[:500]}",
                hint="The ranges repaired before it are committed; fix the cause and run "
                "`milepost verify --repair` again.",
            ) from exc
        done.append(Repaired(diff.stream, diff.lo, diff.hi, deleted, copied))
        emit(
            Event(
                "message",
                stream=diff.stream,
                text=f"{diff.stream}: repaired the range after {show_key(diff.lo)} up to "
                f"{show_key(diff.hi, 'the end')}: {deleted:,} row(s) deleted, {copied:,} copied",
            )
        )
    return done


def _hold(dst: Any, lease: ledger.Lease) -> None:
    """Fence: the range commits only while this repair still holds the pipeline's lease."""
    n = dst.execute(
        _sql(
            dst,
            "UPDATE _milepost_runs SET heartbeat_at = %s WHERE pipeline = %s AND lease_token = %s",
        ),
        [time.time(), lease.pipeline, lease.token],
    )
    if n != 1:
        raise LeaseLost(f"Pipeline '{lease.pipeline}': another runner took over the lease.")


def _delete_range(
    dst: Any, table: schema.SourceTable, diff: Difference, set_aside: tuple[Key, ...]
) -> int:
    """The range's destination rows, but for set-aside rows someone may have put in by hand."""
    if table.stream.write == "upsert":
        return 0  # rows of the table's own live there too; upserting the range again repairs
    rng = table.range(diff.lo, diff.hi, source=False, without=in_range(set_aside, diff.lo, diff.hi))
    where, params = rng.sql(dst.keyset(table.cursor))
    return int(dst.execute(f"DELETE FROM {dst.quote(table.stream.target)} WHERE {where}", params))


def _copy_range(
    src: Any,
    path: transfer.Transfer,
    table: schema.SourceTable,
    diff: Difference,
    batch: int,
    set_aside: tuple[Key, ...],
) -> int:
    """The source's rows of the range, a batch at a time (memory stays bounded), but for
    the rows set aside (`on_row_error: skip`): the destination refused them before."""
    src_table = table.reader(src)
    copied, after = 0, diff.lo
    while True:
        end, final = src.next_batch_end(src_table, table.cursor, table.range(after, diff.hi), batch)
        if end is None:
            return copied
        rows = table.range(after, end, without=in_range(set_aside, after, end))
        copied += path.write(path.read(rows))
        if final:
            return copied
        after = end


def _record(
    dst: Any, lease: ledger.Lease, run_id: str, diff: Difference, deleted: int, copied: int
) -> None:
    dst.execute(
        _sql(
            dst,
            "INSERT INTO _milepost_repairs (pipeline, run_id, stream, lo, hi, rows_deleted, "
            "rows_copied, repaired_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        ),
        [
            lease.pipeline,
            run_id,
            diff.stream,
            encode_key(diff.lo),
            encode_key(diff.hi),
            deleted,
            copied,
            time.time(),
        ],
    )


def _audit(pipeline: Pipeline, dst: Any, done: list[Repaired], emit: Listener) -> None:
    """A checkpoint after the repairs, with one `repaired` audit entry per range."""
    if not done:
        return
    keeper = CheckpointKeeper(pipeline, emit)
    try:
        keeper.open()
        taken = keeper.take(
            dst, "manual", reason=f"after `verify --repair` of {len(done)} range(s)"
        )
        now = dt.datetime.now(dt.UTC)
        for r in done:
            taken = taken.with_audit(
                "repaired",
                at=now,
                detail=f"{r.stream} ({show_key(r.lo)}, {show_key(r.hi, '(end)')}]: "
                f"{r.rows_deleted} deleted, {r.rows_copied} copied",
            )
        keeper.write(taken)
    except Exception as exc:
        emit(
            Event(
                "message",
                text=f"repairs recorded in _milepost_repairs; no checkpoint taken: "
                f"{' '.join(str(exc).split())[:300]}",
            )
        )
    finally:
        keeper.close()
