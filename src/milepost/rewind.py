"""Going back: restore a run to a checkpoint, or roll back a risky step.

Restore rewinds the run it belongs to: every chunk's watermark goes back to the
checkpoint's, and the destination rows written after it (found by their cursor, so a
table without a primary key is no obstacle) are deleted, with the rows set aside
after it, in one destination transaction. The next `run` then continues from the
checkpoint and ends identical to the source, as if nothing had been written since.

Rollback undoes a risky step (`write: replace`, `--fresh`): the tables it emptied get
their backed-up rows back and the ledger is rewritten to what the `before_risky`
checkpoint recorded, also in one transaction, down to the pipeline version (its
fingerprint) that state belonged to.

Both take the pipeline's lease first, so neither can run beside a copy, and both
leave an entry in the checkpoint's audit trail; the checkpoint becomes `active` and
the one that was active before, `superseded`.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from milepost import backup, connectors, ledger, watermarks
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.checkpoints.model import Checkpoint, ChunkState, key_from_doc
from milepost.config import Pipeline
from milepost.errors import ConfigError, ResumeRefused
from milepost.events import Listener, ignore
from milepost.keyset import Key, RangeFilter, decode_key, encode_key

_LEDGER_STATUS = {"pending": "pending", "in_progress": "copying", "done": "done"}


@dataclass(frozen=True)
class Rewound:
    checkpoint: Checkpoint
    rows_removed: int
    tables_restored: list[str]


def restore(pipeline: Pipeline, checkpoint_id: str, emit: Listener = ignore) -> Rewound:
    keeper = CheckpointKeeper(pipeline, emit)
    cp = _usable(keeper.load(checkpoint_id))
    dst = connectors.connect(pipeline.destination_url(), "destination")
    try:
        lease, before = _take_lease(dst, pipeline)
        left = _as_it_was(before)  # what the ledger says if nothing is restored after all
        try:
            run = ledger.read_run(dst, pipeline.name)
            _same_pipeline(pipeline, cp)
            pages = [s.target for s in pipeline.streams if s.kind in ("endpoint", "python")]
            if pages:  # their progress is per resource (resource_ledger), not in checkpoints
                raise ResumeRefused(
                    f"Stream '{pages[0]}' reads an HTTP API or a Python generator, whose "
                    "pages a checkpoint does not record: restore cannot rewind it.",
                    hint="Run the pipeline again to continue, or with --fresh to start over.",
                )
            if run is None or run.run_id != cp.run_id:
                raise ResumeRefused(
                    f"Checkpoint {cp.id} belongs to run {cp.run_id}, but the ledger is at run "
                    f"{run.run_id if run else '(none)'}: that run started over since.",
                    hint="A checkpoint taken before a risky step is undone with `milepost "
                    "rollback --to ID`; otherwise restore a checkpoint of the current run.",
                )
            removed = 0
            _not_ahead(cp, ledger.read_chunks(dst, pipeline.name))
            with dst.transaction():
                watermarks.rewind(dst, pipeline.name, cp.run_id)
                streams = {s.stream: s for s in ledger.read_streams(dst, pipeline.name)}
                chunks = ledger.read_chunks(dst, pipeline.name)
                # Children before parents: foreign keys added at finalize stay satisfied.
                order = sorted(chunks, key=lambda c: -streams[c.stream].position)
                upsert = {s.target for s in pipeline.streams if s.write == "upsert"}
                for chunk in order:
                    removed += _rewind_chunk(
                        dst, pipeline.name, streams[chunk.stream], chunk, cp, chunk.stream in upsert
                    )
                ledger.set_state(
                    dst,
                    lease,
                    phase="copy" if streams else "schema",
                    status="paused",
                    message=f"restored to checkpoint {cp.id}",
                )
            left = ("paused", f"restored to checkpoint {cp.id}")
        finally:
            ledger.release(dst, lease, *left)
    finally:
        dst.close()
    active = _activate(
        keeper, cp, "restored", f"{removed} destination rows written after it removed"
    )
    return Rewound(active, removed, [])


def rollback(pipeline: Pipeline, checkpoint_id: str, emit: Listener = ignore) -> Rewound:
    keeper = CheckpointKeeper(pipeline, emit)
    cp = _usable(keeper.load(checkpoint_id))
    dst = connectors.connect(pipeline.destination_url(), "destination")
    try:
        saved = backup.recorded(dst, pipeline.name, cp.id) if ledger.tables_exist(dst) else []
        if cp.kind != "before_risky" or not saved:
            raise ConfigError(
                f"Checkpoint {cp.id} ({cp.kind}) has no backup to roll back to: only a "
                "`before_risky` checkpoint, taken before `write: replace` or `--fresh` emptied "
                "a table, keeps one.",
                hint="To go back to it within its run, use `milepost checkpoints restore`.",
            )
        lease, before = _take_lease(dst, pipeline)
        left = _as_it_was(before)
        try:
            phase = "done" if cp.position.phase == "done" else cp.position.phase
            backed_up = {b.table for b in saved}
            # Tables without a backup were empty when the risky step began (only tables
            # holding rows are backed up): whatever the step wrote into them goes too.
            written_since = [
                name
                for name in {s.stream for s in ledger.read_streams(dst, pipeline.name)}
                | {s.name for s in cp.streams}
                if name not in backed_up and sa.inspect(dst.sqlalchemy_engine()).has_table(name)
            ]
            with dst.transaction():
                watermarks.rewind(dst, pipeline.name, cp.run_id)
                backup.put_back(dst, saved)
                for name in sorted(written_since):
                    dst.execute(f"DELETE FROM {dst.quote(name)}")
                ledger.reset_plan(dst, pipeline.name)
                for position, s in enumerate(cp.streams):
                    _replant(dst, pipeline.name, position, s, cp)
                ledger.set_state(
                    dst,
                    lease,
                    phase=phase if cp.streams else "new",
                    status="done" if phase == "done" else "paused",
                    run_id=cp.run_id,
                    # The ledger as it was, the pipeline version it belonged to included:
                    # a run of a changed pipeline file is then refused, as it was before.
                    fingerprint=cp.pipeline_fingerprint,
                    message=f"rolled back to checkpoint {cp.id}",
                )
            final = "done" if cp.position.phase == "done" else "paused"
            left = (final, f"rolled back to checkpoint {cp.id}")
        finally:
            ledger.release(dst, lease, *left)
    finally:
        dst.close()
    tables = [b.table for b in saved]
    active = _activate(keeper, cp, "rolled_back", f"restored {', '.join(tables)} from backups")
    return Rewound(active, 0, tables)


# --- the parts ----------------------------------------------------------------------


def _not_ahead(cp: Checkpoint, chunks: list[ledger.ChunkRow]) -> None:
    """Restore only goes back. A checkpoint that records more of a chunk than the ledger
    has (a later one after an earlier restore, a stream started over since, batches a
    server crash took back) would make the ledger claim rows that are not there."""
    for chunk in chunks:
        saved = _chunk_in(cp, chunk.stream, chunk.index)
        if saved is not None and (
            saved.rows_written > chunk.rows_written or saved.batches > chunk.batches
        ):
            raise ResumeRefused(
                f"Checkpoint {cp.id} records {saved.rows_written:,} rows of stream "
                f"'{chunk.stream}', chunk {chunk.index}, but the destination holds "
                f"{chunk.rows_written:,} of them now: restoring it would move the run forward "
                "over rows that are not there.",
                hint="Restore a checkpoint at or before the run's current position "
                "(`milepost checkpoints list`).",
            )


def _usable(cp: Checkpoint) -> Checkpoint:
    if cp.status == "failed":
        raise ConfigError(
            f"Checkpoint {cp.id} failed its validation when it was made; it is never used.",
            hint="Pick another one from `milepost checkpoints list`.",
        )
    return cp


def _same_pipeline(pipeline: Pipeline, cp: Checkpoint) -> None:
    if cp.pipeline_fingerprint != pipeline.fingerprint():
        raise ResumeRefused(
            f"Checkpoint {cp.id} was taken of another version of pipeline '{pipeline.name}' "
            "(its source, destination, streams, cursors or filters differ).",
            hint="Restore the pipeline file it was taken with.",
        )


def _take_lease(dst: Any, pipeline: Pipeline) -> tuple[ledger.Lease, ledger.RunRow | None]:
    """The lease, and the run row as it was before it was taken."""
    if not ledger.tables_exist(dst):
        raise ConfigError(f"Pipeline '{pipeline.name}' has no ledger in its destination.")
    ledger.ensure_tables(dst)
    lease, before, _ = ledger.acquire(dst, pipeline.name, pipeline.fingerprint())
    return lease, before


def _as_it_was(before: ledger.RunRow | None) -> tuple[str, str | None]:
    """The status and message to release the lease with when a restore or rollback is
    refused or fails: the run's own, so a refusal leaves the ledger saying what it said."""
    if before is None:
        return "new", None
    return before.status, before.message


def _rewind_chunk(
    dst: Any,
    pipeline: str,
    stream: ledger.StreamRow,
    chunk: ledger.ChunkRow,
    cp: Checkpoint,
    upsert: bool = False,
) -> int:
    """Put one chunk back where the checkpoint saw it; returns the rows deleted.

    An upsert stream's rows stay: its table holds rows of its own among them, and
    upserting them again from the checkpoint on ends with the same table."""
    saved = _chunk_in(cp, chunk.stream, chunk.index)
    back_to: Key | None = key_from_doc(saved.watermark) if saved else None
    keep_after = back_to if back_to is not None else chunk.lo
    removed = 0
    if chunk.watermark is not None and chunk.watermark != back_to:
        where, params = RangeFilter(lo=keep_after, hi=chunk.watermark).sql(
            dst.keyset(stream.cursor)
        )
        if not upsert:
            removed = dst.execute(f"DELETE FROM {dst.quote(chunk.stream)} WHERE {where}", params)
        aside = _rejected_keys(dst, pipeline, chunk.stream, chunk.index)
        later = [i for i, key in aside if keep_after is None or key > keep_after]
        _forget_rejected(dst, later)
    rejected_left = len(_rejected_keys(dst, pipeline, chunk.stream, chunk.index))
    _set_chunk(
        dst,
        pipeline,
        ledger.ChunkRow(
            chunk.stream,
            chunk.index,
            chunk.lo,
            chunk.hi,
            back_to,
            saved.rows_written if saved else 0,
            saved.batches if saved else 0,
            _LEDGER_STATUS[saved.status] if saved else "pending",
            rejected_left,
        ),
    )
    return max(removed, 0)


def _chunk_in(cp: Checkpoint, stream: str, index: int) -> ChunkState | None:
    for s in cp.streams:
        if s.name == stream:
            return next((c for c in s.chunks if c.index == index), None)
    return None


def _replant(dst: Any, pipeline: str, position: int, s: Any, cp: Checkpoint) -> None:
    """Write one stream's plan and progress back into the ledger as the checkpoint has it."""
    source = cp.source.get(s.name)
    ledger.record_stream(
        dst,
        pipeline,
        s.name,
        position,
        s.cursor or [],
        s.rows_total,
        None,
        [(c.index, key_from_doc(c.lo), key_from_doc(c.hi)) for c in s.chunks],
        (
            key_from_doc(source.min_cursor) if source else None,
            key_from_doc(source.max_cursor) if source else None,
        ),
    )
    for c in s.chunks:
        _set_chunk(
            dst,
            pipeline,
            ledger.ChunkRow(
                s.name,
                c.index,
                key_from_doc(c.lo),
                key_from_doc(c.hi),
                key_from_doc(c.watermark),
                c.rows_written,
                c.batches,
                _LEDGER_STATUS[c.status],
            ),
        )


def _activate(keeper: CheckpointKeeper, cp: Checkpoint, action: str, detail: str) -> Checkpoint:
    """The checkpoint the run now stands on is `active`, with what was done in its trail;
    the one active before is `superseded`."""
    now = dt.datetime.now(dt.UTC)
    for entry in keeper.list():
        other = entry.checkpoint
        if other is not None and other.id != cp.id and other.status == "active":
            keeper.write(other.with_status("superseded", at=now, detail=f"{action} to {cp.id}"))
    fresh = keeper.load(cp.id)  # it may have changed since it was read
    active = fresh.with_status("active", at=now, detail=action).with_audit(
        action, at=now, detail=detail
    )
    keeper.write(active)
    return active


# --- the ledger rows only going back touches ---------------------------------------------


def _set_chunk(conn: Any, pipeline: str, chunk: ledger.ChunkRow) -> None:
    """Put a chunk's progress back as a checkpoint recorded it (restore, rollback)."""
    conn.execute(
        ledger.portable_sql(
            conn,
            "UPDATE _milepost_chunks SET watermark = %s, rows_written = %s, batches = %s, "
            "status = %s, rows_rejected = %s, updated_at = %s "
            "WHERE pipeline = %s AND stream = %s AND chunk = %s",
        ),
        [
            encode_key(chunk.watermark),
            chunk.rows_written,
            chunk.batches,
            chunk.status,
            chunk.rows_rejected,
            time.time(),
            pipeline,
            chunk.stream,
            chunk.index,
        ],
    )


def _rejected_keys(conn: Any, pipeline: str, stream: str, chunk: int) -> list[tuple[int, Key]]:
    """(id, cursor value) of the rows set aside in one chunk."""
    rows = conn.query(
        ledger.portable_sql(
            conn,
            "SELECT id, cursor_value FROM _milepost_rejected_rows "
            "WHERE pipeline = %s AND stream = %s AND chunk = %s",
        ),
        [pipeline, stream, chunk],
    )
    return [(int(i), decode_key(c) or ()) for i, c in rows]


def _forget_rejected(conn: Any, ids: list[int]) -> None:
    for i in ids:
        conn.execute(
            ledger.portable_sql(conn, "DELETE FROM _milepost_rejected_rows WHERE id = %s"), [i]
        )
