"""Incremental runs: where each stream's last completed run stopped, and where the next starts.

A migrate stream is copied once; an incremental one is copied again by every run, from
just after the largest cursor its last completed run copied (its high water). The high
water is written in the transaction that marks the run done, so it moves exactly when
a run completes: a run that crashes, pauses or fails verification leaves it where the
last completed run put it, and its own progress is resumed from the chunks' watermarks
as for any run.

`lookback` moves the start back: rows whose cursor lies within that distance behind the
high water are read again, for rows that committed after a run had passed their cursor
(a transaction that began before the run and committed after it). Those rows reach the
destination through `write: upsert`, so reading them twice updates instead of doubling.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from milepost.config import StreamConfig, parse_duration
from milepost.errors import ConfigError
from milepost.keyset import Key, decode_key, encode_key, null_lead, show_key
from milepost.ledger import ChunkRow, portable_sql


@dataclass(frozen=True)
class Watermark:
    """One stream's standing after its last completed run."""

    stream: str
    mode: str
    high_water: Key | None  # the largest cursor copied (rows with a non-NULL lead)
    null_high_water: Key | None  # the same among rows whose leading cursor is NULL
    rows_copied: int  # over every completed run
    runs: int
    last_run_id: str
    updated_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "watermark": show_key(self.high_water, none="(none)"),
            "null_watermark": show_key(self.null_high_water, none="(none)")
            if self.null_high_water is not None
            else None,
            "completed_runs": self.runs,
            "rows_copied": self.rows_copied,
            "last_run_id": self.last_run_id,
            "updated_at": self.updated_at,
        }


def read(conn: Any, pipeline: str) -> dict[str, Watermark]:
    rows = conn.query(
        portable_sql(
            conn,
            "SELECT stream, mode, high_water, null_high_water, rows_copied, runs, last_run_id, "
            "updated_at FROM _milepost_watermarks WHERE pipeline = %s",
        ),
        [pipeline],
    )
    return {
        r[0]: Watermark(
            r[0], r[1], decode_key(r[2]), decode_key(r[3]), int(r[4]), int(r[5]), r[6], float(r[7])
        )
        for r in rows
    }


def forget(conn: Any, pipeline: str) -> None:
    """`--fresh`: every stream starts from nothing again."""
    conn.execute(
        portable_sql(conn, "DELETE FROM _milepost_watermarks WHERE pipeline = %s"), [pipeline]
    )


def record_run(
    conn: Any,
    pipeline: str,
    run_id: str,
    streams: list[StreamConfig],
    chunks: list[ChunkRow],
) -> None:
    """Inside the transaction that marks the run done: each stream's new high water.

    Counted from what the stream stood at before this run, so a run that completed, was
    restored to one of its checkpoints and completed again is counted once."""
    now = time.time()
    rows = conn.query(
        portable_sql(
            conn,
            "SELECT stream, last_run_id, high_water, null_high_water, rows_copied, runs, "
            "prev_high_water, prev_null_high_water, prev_rows_copied, prev_run_id "
            "FROM _milepost_watermarks WHERE pipeline = %s",
        ),
        [pipeline],
    )
    before: dict[str, tuple[Any, ...]] = {}
    for name, last, high, null_high, copied, runs, p_high, p_null, p_copied, p_run in rows:
        if last == run_id:  # this run completed before and was rewound since
            before[name] = (p_high, p_null, int(p_copied or 0), int(runs) - 1, p_run)
        else:
            before[name] = (high, null_high, int(copied), int(runs), last)
    conn.execute(
        portable_sql(conn, "DELETE FROM _milepost_watermarks WHERE pipeline = %s"), [pipeline]
    )
    for stream in streams:
        mine = sorted((c for c in chunks if c.stream == stream.target), key=lambda c: c.index)
        prev_high, prev_null, prev_copied, prev_runs, prev_run = before.get(
            stream.target, (None, None, 0, 0, None)
        )
        high, null_high = decode_key(prev_high), decode_key(prev_null)
        for chunk in mine:
            if chunk.watermark is None:
                continue
            if null_lead(chunk.watermark):
                null_high = chunk.watermark
            else:
                high = chunk.watermark  # chunks are in cursor order: the last one is the largest
        conn.execute(
            portable_sql(
                conn,
                "INSERT INTO _milepost_watermarks (pipeline, stream, mode, high_water, "
                "null_high_water, rows_copied, runs, last_run_id, updated_at, prev_high_water, "
                "prev_null_high_water, prev_rows_copied, prev_run_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            ),
            [
                pipeline,
                stream.target,
                stream.mode,
                encode_key(high),
                encode_key(null_high),
                prev_copied + sum(c.rows_written for c in mine),
                prev_runs + 1,
                run_id,
                now,
                prev_high,
                prev_null,
                prev_copied,
                prev_run,
            ],
        )


def rewind(conn: Any, pipeline: str, run_id: str) -> None:
    """A checkpoint of run `run_id` is restored or rolled back to: if that run had completed,
    its streams stand where they stood before it."""
    conn.execute(
        portable_sql(
            conn,
            "DELETE FROM _milepost_watermarks WHERE pipeline = %s AND last_run_id = %s "
            "AND runs <= 1",
        ),
        [pipeline, run_id],
    )
    conn.execute(
        portable_sql(
            conn,
            "UPDATE _milepost_watermarks SET high_water = prev_high_water, "
            "null_high_water = prev_null_high_water, rows_copied = prev_rows_copied, "
            "runs = runs - 1, last_run_id = prev_run_id, prev_high_water = NULL, "
            "prev_null_high_water = NULL, prev_rows_copied = NULL, prev_run_id = NULL "
            "WHERE pipeline = %s AND last_run_id = %s",
        ),
        [pipeline, run_id],
    )


def skipped(stream: StreamConfig, marks: dict[str, Watermark]) -> bool:
    """A migrate stream that a completed run has copied is not copied again."""
    return stream.mode == "migrate" and stream.target in marks


def start_after(
    src: Any, relation: str, cursor: list[str], stream: StreamConfig, mark: Watermark | None
) -> Key | None:
    """Where this run reads from: after the high water, less the lookback."""
    if mark is None or mark.high_water is None:
        return None
    if stream.lookback is None:
        return mark.high_water
    lead = mark.high_water[0]
    back = _behind(lead, stream.lookback, stream, cursor[0])
    # The rows to read again are those whose lead is at or after `back`: start after the
    # last key before it (None: from the beginning).
    cols = ", ".join(src.quote(c) for c in cursor)
    order = ", ".join(f"{src.quote(c)} DESC" for c in cursor)
    where = f" AND ({src.verbatim(stream.where)})" if stream.where else ""
    rows = src.query(
        f"SELECT {cols} FROM {relation} WHERE {src.quote(cursor[0])} < {src.placeholder}"
        f"{where} ORDER BY {order} LIMIT 1",
        [back],
    )
    return tuple(rows[0]) if rows else None


def _behind(lead: Any, lookback: str | int | float, stream: StreamConfig, column: str) -> Any:
    """The lead cursor value `lookback` before `lead`."""
    temporal = isinstance(lead, dt.date | dt.datetime)
    if isinstance(lookback, str) and temporal:
        return lead - parse_duration(lookback)
    if (
        isinstance(lookback, str)
        and isinstance(lead, str)
        and (text := _iso_behind(lead, lookback))
    ):
        return text
    if not isinstance(lookback, str) and isinstance(lead, int | float | Decimal):
        if isinstance(lead, Decimal):
            return lead - Decimal(str(lookback))
        return lead - lookback
    wanted = "a duration such as 5m" if temporal or isinstance(lead, str) else "a number"
    raise ConfigError(
        f"Stream '{stream.target}': `lookback: {lookback}` does not fit the cursor column "
        f"'{column}', whose values are {type(lead).__name__}; it needs {wanted}.",
        hint="Lookback works on numeric, date and timestamp cursors.",
    )


def _iso_behind(lead: Any, lookback: str) -> str | None:
    """SQLite keeps dates and times as ISO text, compared as text: step back and write the
    result in the same shape, so that it still sorts among the stored values."""
    if not isinstance(lead, str):
        return None
    try:
        when = dt.datetime.fromisoformat(lead)
    except ValueError:
        return None
    back = when - parse_duration(lookback)
    if len(lead) == 10:
        return back.date().isoformat()
    sep = "T" if "T" in lead else " "
    return back.isoformat(sep=sep, timespec="microseconds" if "." in lead else "seconds")
