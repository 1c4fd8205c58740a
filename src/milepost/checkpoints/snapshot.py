"""A checkpoint document read off the ledger: what the run has committed, nothing more.

The ledger is the truth (DESIGN.md, guarantee 3). A snapshot reads every chunk's
committed progress in one statement, so it always stands on batch boundaries:
whatever a worker is writing at that moment is either in it, whole, or not at all.
Nothing is asked of the source: its shape was recorded in the ledger with the plan.
"""

from __future__ import annotations

from typing import Any

from milepost import ledger
from milepost.checkpoints.model import (
    Checkpoint,
    ChunkState,
    ErrorState,
    Kind,
    Position,
    SourceStream,
    StreamState,
    key_to_doc,
    new_checkpoint,
)
from milepost.config import Pipeline
from milepost.errors import MilepostError

_PHASES = {
    "new": "schema",
    "schema": "schema",
    "copy": "copy",
    "verify": "verify",
    "finalize": "finalize",
}


def take_snapshot(
    pipeline: Pipeline,
    conn: Any,
    *,
    kind: Kind,
    reason: str | None = None,
    retries: int = 0,
    errors: int = 0,
    after: str | None = None,
    run_id: str | None = None,
) -> Checkpoint:
    """A new checkpoint (status `created`) of what the ledger in `conn` has committed.

    `run_id` names the run it belongs to when that is not the ledger's yet: a new run's
    `before_risky` checkpoint records the ledger as the previous run left it.
    """
    run = ledger.read_run(conn, pipeline.name)
    streams = ledger.read_streams(conn, pipeline.name)
    # Every chunk's progress in one statement: one consistent view of committed batches.
    chunks = ledger.read_chunks(conn, pipeline.name)
    # End the read (a MySQL snapshot would otherwise outlive it). Not conn.transaction():
    # on SQLite that would take the write lock from the workers.
    conn.raw.commit()
    if run is None or not (run.run_id or run_id):
        raise MilepostError(
            f"Pipeline '{pipeline.name}' has no run yet; there is nothing to checkpoint.",
            hint="Start it with `milepost run`.",
        )
    states = [_stream_state(s, [c for c in chunks if c.stream == s.stream]) for s in streams]
    return new_checkpoint(
        pipeline=pipeline.name,
        run_id=run_id or run.run_id,
        kind=kind,
        reason=reason,
        position=_position(run.phase, states),
        pipeline_fingerprint=run.fingerprint,
        streams=states,
        config=pipeline.model_dump(mode="json", by_alias=True),
        errors=ErrorState(
            error_count=errors,
            rows_set_aside=sum(c.rows_rejected for c in chunks),
            retries=retries,
        ),
        source={
            s.stream: SourceStream(
                rows_estimate=s.rows_estimate,
                min_cursor=key_to_doc(s.min_cursor),
                max_cursor=key_to_doc(s.max_cursor),
            )
            for s in streams
        },
        after=after,
    )


def _stream_state(stream: ledger.StreamRow, chunks: list[ledger.ChunkRow]) -> StreamState:
    done = bool(chunks) and all(c.status == "done" for c in chunks)
    started = any(c.batches for c in chunks)
    return StreamState(
        name=stream.stream,
        cursor=stream.cursor,
        state="done" if done else "in_progress" if started else "pending",
        rows_done=sum(c.rows_written for c in chunks),
        rows_total=stream.rows_estimate,
        chunks=[
            ChunkState(
                index=c.index,
                lo=key_to_doc(c.lo),
                hi=key_to_doc(c.hi),
                watermark=key_to_doc(c.watermark),
                rows_written=c.rows_written,
                batches=c.batches,
                status=c.status,
            )
            for c in chunks
        ],
    )


def _position(phase: str, streams: list[StreamState]) -> Position:
    """The phase, and while copying the first stream still under way and its first open
    chunk: where an operator reading the checkpoint would look."""
    total = sum(s.rows_done for s in streams)
    shown = "done" if phase == "done" else _PHASES.get(phase, "schema")
    current = next((s for s in streams if s.state == "in_progress"), None)
    if current is None:
        return Position(phase=shown, rows_done=total)  # type: ignore[arg-type]
    chunk = next((c for c in current.chunks if c.status != "done"), current.chunks[-1])
    return Position(
        phase=shown,  # type: ignore[arg-type]
        stream=current.name,
        chunk=chunk.index,
        batch=chunk.batches,
        watermark=chunk.watermark,
        rows_done=total,
    )
