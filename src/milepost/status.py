"""What a pipeline's ledger says, as plain data: for `milepost status` and, later, the API."""

from __future__ import annotations

import time
from typing import Any

from milepost import connectors, ledger, resource_ledger, watermarks
from milepost.config import Pipeline


def pipeline_status(pipeline: Pipeline) -> dict[str, Any]:
    """Read the ledger in the destination; never takes the lease, never writes progress."""
    if connectors.new_sqlite_file(pipeline.destination_url()) is not None:
        return _never_run(pipeline)
    dst = connectors.connect(pipeline.destination_url(), "destination")
    try:
        if not ledger.tables_exist(dst):
            return _never_run(pipeline)
        ledger.ensure_tables(dst)  # a ledger left by an older milepost gains its new columns
        run = ledger.read_run(dst, pipeline.name)
        if run is None:
            return _never_run(pipeline)
        now = time.time()
        chunks = ledger.read_chunks(dst, pipeline.name)
        marks = watermarks.read(dst, pipeline.name)
        modes = {s.target: s.mode for s in pipeline.streams}
        # HTTP and Python streams: their resources and high water (resource_ledger.py).
        resources = resource_ledger.summary(dst, pipeline.name)
        streams = []
        for row in ledger.read_streams(dst, pipeline.name):
            name, estimate, path = row.stream, row.rows_estimate, row.transfer
            mine = [c for c in chunks if c.stream == name]
            done = sum(c.status == "done" for c in mine)
            streams.append(
                {
                    "stream": name,
                    "rows_written": sum(c.rows_written for c in mine),
                    "rows_rejected": sum(c.rows_rejected for c in mine),
                    "rows_estimate": estimate,
                    "chunks": len(mine),
                    "chunks_done": done,
                    "state": "done"
                    if mine and done == len(mine)
                    else ("in_progress" if any(c.batches for c in mine) else "pending"),
                    "transfer": path,
                    "mode": modes.get(name, "migrate"),
                    # Where the last completed run stopped: the next incremental run
                    # starts after it.
                    "completed": marks[name].as_dict() if name in marks else None,
                    **({"resources": resources[name]} if name in resources else {}),
                }
            )
        alive = ledger.holder_is_alive(run, now)
        return {
            "pipeline": pipeline.name,
            "run_id": run.run_id,
            "phase": run.phase,
            "status": shown_status(run.status, alive),
            "lease": (
                {
                    "host": run.owner_host,
                    "pid": run.owner_pid,
                    "heartbeat_age_s": round(now - run.heartbeat_at, 1)
                    if run.heartbeat_at
                    else None,
                }
                if alive
                else None
            ),
            "message": run.message or None,
            "pause_requested_s_ago": round(now - run.pause_requested, 1)
            if alive and run.pause_requested
            else None,
            "rows_written": sum(s["rows_written"] for s in streams),
            "rows_rejected": sum(s["rows_rejected"] for s in streams),
            "streams": streams,
        }
    finally:
        dst.close()


def shown_status(recorded: str, alive: bool) -> str:
    """A run whose holder died mid-copy (kill -9, a crash) never recorded that it stopped."""
    if alive:
        return "running"
    return "interrupted" if recorded == "running" else recorded


def _never_run(pipeline: Pipeline) -> dict[str, Any]:
    return {"pipeline": pipeline.name, "status": "never run", "streams": []}
