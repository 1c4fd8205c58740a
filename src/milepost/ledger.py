"""The ledger: durable progress and the run's lease, kept in the destination database.

Three small tables. `_milepost_runs` holds one row per pipeline: its run id, phase,
status and lease (owner host, pid, process start time, heartbeat, and a random
token). `_milepost_streams` holds each stream's plan. `_milepost_chunks` holds each
chunk's watermark and rows written. Beside them: `_milepost_rejected_rows` (rows set
aside, milepost/rejects.py), `_milepost_backups` (milepost/backup.py) and
`_milepost_repairs` (milepost/repair.py). What others
ask of a running run through these rows is in milepost/run_requests.py.

A batch's rows and its chunk's ledger row commit in one destination transaction,
and that ledger update only matches while our lease token is still the run's: a
runner that lost its lease cannot commit another batch (fencing).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import psutil
import sqlalchemy as sa

from milepost.errors import LeaseHeld, LeaseLost
from milepost.keyset import Key, decode_key, encode_key
from milepost.ledger_tables import METADATA as _meta
from milepost.ledger_tables import RUNS

LEASE_TTL_S = 30.0  # how long a silent runner on another host keeps its lease
HEARTBEAT_EVERY_S = 5.0


@dataclass
class RunRow:
    pipeline: str
    run_id: str
    fingerprint: str
    phase: str
    status: str
    lease_token: str | None
    owner_host: str | None
    owner_pid: int | None
    owner_started: float | None
    heartbeat_at: float | None
    started_at: float
    updated_at: float
    message: str | None
    pause_requested: float | None = None
    checkpoint_request: str | None = None
    checkpoint_answer: str | None = None


@dataclass
class ChunkRow:
    stream: str
    index: int
    lo: Key | None
    hi: Key | None
    watermark: Key | None
    rows_written: int
    batches: int
    status: str
    rows_rejected: int = 0

    @property
    def resume_after(self) -> Key | None:
        """The exclusive lower bound of what is still to copy."""
        return self.watermark if self.watermark is not None else self.lo


@dataclass(frozen=True)
class Lease:
    pipeline: str
    token: str


def portable_sql(conn: Any, text: str) -> str:
    """A statement written with %s placeholders, in the connection's own style."""
    return text.replace("%s", "?") if conn.placeholder == "?" else text


_sql = portable_sql


def ensure_tables(conn: Any) -> None:
    """Create the ledger tables, and add columns a newer milepost needs to an older ledger."""
    import milepost.resource_ledger  # noqa: F401  (defines _milepost_resources on _meta)

    engine = conn.sqlalchemy_engine()
    _meta.create_all(engine, checkfirst=True)
    inspector = sa.inspect(engine)
    for table in _meta.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(engine, table, column)


def _add_column(engine: sa.Engine, table: sa.Table, column: sa.Column[Any]) -> None:
    ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
    with engine.begin() as c:
        c.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


def tables_exist(conn: Any) -> bool:
    return sa.inspect(conn.sqlalchemy_engine()).has_table(RUNS.name)


def read_run(conn: Any, pipeline: str) -> RunRow | None:
    cols = ", ".join(c.name for c in RUNS.columns)
    rows = conn.query(
        _sql(conn, f"SELECT {cols} FROM _milepost_runs WHERE pipeline = %s"), [pipeline]
    )
    return RunRow(*rows[0]) if rows else None


def read_chunks(conn: Any, pipeline: str) -> list[ChunkRow]:
    rows = conn.query(
        _sql(
            conn,
            f"SELECT {_CHUNK_COLUMNS} FROM _milepost_chunks WHERE pipeline = %s "
            "ORDER BY stream, chunk",
        ),
        [pipeline],
    )
    return [_chunk(row) for row in rows]


def read_chunk(conn: Any, pipeline: str, stream: str, index: int) -> ChunkRow:
    """One chunk as committed: after a lost connection, the truth about the last batch."""
    rows = conn.query(
        _sql(
            conn,
            f"SELECT {_CHUNK_COLUMNS} FROM _milepost_chunks "
            "WHERE pipeline = %s AND stream = %s AND chunk = %s",
        ),
        [pipeline, stream, index],
    )
    return _chunk(rows[0])


_CHUNK_COLUMNS = "stream, chunk, lo, hi, watermark, rows_written, batches, status, rows_rejected"


def _chunk(row: tuple[Any, ...]) -> ChunkRow:
    s, i, lo, hi, wm, n, b, st, rejected = row
    return ChunkRow(
        s, int(i), decode_key(lo), decode_key(hi), decode_key(wm), int(n), int(b), st, int(rejected)
    )


@dataclass
class StreamRow:
    stream: str
    position: int
    cursor: list[str]
    rows_estimate: int | None
    transfer: str | None
    min_cursor: Key | None = None
    max_cursor: Key | None = None


def read_streams(conn: Any, pipeline: str) -> list[StreamRow]:
    return [
        StreamRow(s, int(p), json.loads(c), None if e is None else int(e), t, *map(decode_key, mm))
        for s, p, c, e, t, *mm in conn.query(
            _sql(
                conn,
                "SELECT stream, position, cursor_columns, rows_estimate, transfer, min_cursor, "
                "max_cursor FROM _milepost_streams WHERE pipeline = %s ORDER BY position",
            ),
            [pipeline],
        )
    ]


# --- the lease -----------------------------------------------------------------------


def _process_started(pid: int) -> float | None:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None  # killed, only not reaped yet by its parent: it holds nothing
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def holder_is_alive(run: RunRow, now: float, host: str | None = None) -> bool:
    """A lease holds while its process lives (same host) or its heartbeat is fresh."""
    if not run.lease_token:
        return False
    host = host or socket.gethostname()
    if run.owner_host == host and run.owner_pid is not None:
        started = _process_started(run.owner_pid)
        if started is None:
            return False
        # A recycled pid belongs to another process: compare start times.
        return run.owner_started is None or abs(started - run.owner_started) < 1.0
    return run.heartbeat_at is not None and now - run.heartbeat_at < LEASE_TTL_S


def describe_holder(run: RunRow, now: float) -> str:
    age = f"{now - run.heartbeat_at:.0f}s ago" if run.heartbeat_at else "never"
    return f"pid {run.owner_pid} on host {run.owner_host} (last heartbeat {age})"


def acquire(
    conn: Any, pipeline: str, fingerprint: str, *, ours: Lease | None = None
) -> tuple[Lease, RunRow | None, str | None]:
    """Take the pipeline's lease. Returns the lease, the run row as it was, and a takeover note.

    `ours` is a lease this process already holds and is coming back to after a lost
    connection; if someone else took it meanwhile, that is LeaseLost. Taking the lease
    clears any pause request meant for an earlier runner. Raises LeaseHeld when a live
    runner holds it.
    """
    token = ours.token if ours is not None else secrets.token_hex(16)
    now = time.time()
    host, pid = socket.gethostname(), os.getpid()
    started = _process_started(pid)
    lock = "" if conn.family == "sqlite" else " FOR UPDATE"
    cols = ", ".join(c.name for c in RUNS.columns)
    note = None
    with conn.transaction():
        rows = conn.query(
            _sql(conn, f"SELECT {cols} FROM _milepost_runs WHERE pipeline = %s{lock}"), [pipeline]
        )
        before = RunRow(*rows[0]) if rows else None
        if ours is not None and (before is None or before.lease_token != ours.token):
            raise LeaseLost(
                f"Pipeline '{pipeline}': another runner took over the lease while this one "
                "was reconnecting."
            )
        if before is not None:
            if ours is None and holder_is_alive(before, now, host):
                raise LeaseHeld(
                    f"Pipeline '{pipeline}' is being run by {describe_holder(before, now)}.",
                    hint="Wait for it, or stop it with SIGINT/SIGTERM; a second runner would "
                    "race it.",
                )
            if before.lease_token and ours is None:
                gone = (
                    "whose process is gone"
                    if before.owner_host == host
                    else f"silent for longer than {LEASE_TTL_S:.0f}s"
                )
                note = f"took over the lease of {describe_holder(before, now)}, {gone}"
            # A new holder starts without an old pause request; a runner coming back for its
            # own lease after a lost connection keeps one that arrived meanwhile.
            clear = "" if ours is not None else ", pause_requested = NULL"
            conn.execute(
                _sql(
                    conn,
                    "UPDATE _milepost_runs SET lease_token = %s, owner_host = %s, owner_pid = %s, "
                    f"owner_started = %s, heartbeat_at = %s, updated_at = %s{clear} "
                    "WHERE pipeline = %s",
                ),
                [token, host, pid, started, now, now, pipeline],
            )
        else:
            try:
                conn.execute(
                    _sql(
                        conn,
                        "INSERT INTO _milepost_runs (pipeline, run_id, fingerprint, phase, status, "
                        "lease_token, owner_host, owner_pid, owner_started, heartbeat_at, "
                        "started_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                        "%s, %s)",
                    ),
                    [
                        pipeline,
                        "",
                        fingerprint,
                        "new",
                        "new",
                        token,
                        host,
                        pid,
                        started,
                        now,
                        now,
                        now,
                    ],
                )
            except Exception as exc:
                if "duplicate" in str(exc).lower() or "unique" in str(exc).lower():
                    raise LeaseHeld(
                        f"Pipeline '{pipeline}' was just started by another runner."
                    ) from None
                raise
    return Lease(pipeline, token), before, note


def heartbeat(conn: Any, lease: Lease) -> None:
    with conn.transaction():
        n = conn.execute(
            _sql(
                conn,
                "UPDATE _milepost_runs SET heartbeat_at = %s "
                "WHERE pipeline = %s AND lease_token = %s",
            ),
            [time.time(), lease.pipeline, lease.token],
        )
    if n == 0:
        raise LeaseLost(f"Pipeline '{lease.pipeline}': another runner took over the lease.")


def release(conn: Any, lease: Lease, status: str, message: str | None = None) -> None:
    with conn.transaction():
        conn.execute(
            _sql(
                conn,
                "UPDATE _milepost_runs SET lease_token = NULL, status = %s, message = %s, "
                "updated_at = %s WHERE pipeline = %s AND lease_token = %s",
            ),
            [status, message, time.time(), lease.pipeline, lease.token],
        )


def set_state(
    conn: Any,
    lease: Lease,
    *,
    phase: str | None = None,
    status: str | None = None,
    run_id: str | None = None,
    fingerprint: str | None = None,
    message: str | None = None,
) -> None:
    """Change the run's phase/status (in the caller's transaction when there is one)."""
    sets, params = ["updated_at = %s"], [time.time()]
    for col, val in (
        ("phase", phase),
        ("status", status),
        ("run_id", run_id),
        ("fingerprint", fingerprint),
        ("message", message),
    ):
        if val is not None:
            sets.append(f"{col} = %s")
            params.append(val)
    n = conn.execute(
        _sql(
            conn,
            f"UPDATE _milepost_runs SET {', '.join(sets)} WHERE pipeline = %s AND lease_token = %s",
        ),
        [*params, lease.pipeline, lease.token],
    )
    if n == 0:
        raise LeaseLost(f"Pipeline '{lease.pipeline}': another runner took over the lease.")


# --- progress ------------------------------------------------------------------------


def reset_plan(conn: Any, pipeline: str) -> None:
    for table in ("_milepost_chunks", "_milepost_streams"):
        conn.execute(_sql(conn, f"DELETE FROM {table} WHERE pipeline = %s"), [pipeline])


def record_stream(
    conn: Any,
    pipeline: str,
    stream: str,
    position: int,
    cursor: list[str],
    rows_estimate: int | None,
    transfer: str | None,
    chunks: list[tuple[int, Key | None, Key | None]],
    bounds: tuple[Key | None, Key | None] = (None, None),
) -> None:
    conn.execute(
        _sql(
            conn,
            "INSERT INTO _milepost_streams (pipeline, stream, position, cursor_columns, "
            "rows_estimate, transfer, min_cursor, max_cursor) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        ),
        [
            pipeline,
            stream,
            position,
            json.dumps(cursor),
            rows_estimate,
            transfer,
            encode_key(bounds[0]),
            encode_key(bounds[1]),
        ],
    )
    now = time.time()
    for index, lo, hi in chunks:
        conn.execute(
            _sql(
                conn,
                "INSERT INTO _milepost_chunks (pipeline, stream, chunk, lo, hi, watermark, "
                "rows_written, batches, status, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, NULL, 0, 0, 'pending', %s)",
            ),
            [pipeline, stream, index, encode_key(lo), encode_key(hi), now],
        )


def advance(
    conn: Any,
    lease: Lease,
    stream: str,
    chunk: int,
    watermark: Key | None,
    rows: int,
    done: bool,
    rejected: int = 0,
) -> None:
    """Move a chunk's watermark; call inside the transaction that wrote the batch.

    The update matches only while our lease token is the run's, so a runner whose
    lease was taken over fails here and its batch rolls back with it. The run row is
    share-locked until the batch commits, so a takeover (which updates that row) waits for
    batches in flight instead of letting them commit behind its back.
    """
    lock = {"postgresql": " FOR SHARE", "mysql": " LOCK IN SHARE MODE"}.get(conn.family, "")
    n = conn.execute(
        _sql(
            conn,
            "UPDATE _milepost_chunks SET watermark = COALESCE(%s, watermark), "
            "rows_written = rows_written + %s, batches = batches + 1, status = %s, "
            "updated_at = %s, rows_rejected = rows_rejected + %s "
            "WHERE pipeline = %s AND stream = %s AND chunk = %s AND EXISTS (SELECT 1 FROM "
            f"_milepost_runs WHERE pipeline = %s AND lease_token = %s{lock})",
        ),
        [
            encode_key(watermark),
            rows,
            "done" if done else "copying",
            time.time(),
            rejected,
            lease.pipeline,
            stream,
            chunk,
            lease.pipeline,
            lease.token,
        ],
    )
    if n != 1:
        raise LeaseLost(
            f"Pipeline '{lease.pipeline}': another runner took over the lease; "
            "this batch was rolled back."
        )


def record_rejected(
    conn: Any, pipeline: str, stream: str, chunk: int, rows: list[tuple[str, str, str]]
) -> None:
    """Set refused rows aside: (cursor value, row as JSON, reason), in the batch's transaction."""
    now = time.time()
    for cursor_value, row_data, reason in rows:
        conn.execute(
            _sql(
                conn,
                "INSERT INTO _milepost_rejected_rows (pipeline, stream, chunk, cursor_value, "
                "row_data, reason, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            ),
            [pipeline, stream, chunk, cursor_value, row_data, reason, now],
        )


def read_set_aside(conn: Any, pipeline: str) -> dict[str, list[Key]]:
    """Per stream, the cursor values of the rows set aside under `on_row_error: skip`."""
    rows = conn.query(
        _sql(conn, "SELECT stream, cursor_value FROM _milepost_rejected_rows WHERE pipeline = %s"),
        [pipeline],
    )
    found: dict[str, list[Key]] = {}
    for stream, value in rows:
        key = decode_key(value)
        if key is not None:
            found.setdefault(stream, []).append(key)
    return found


def restart_stream(conn: Any, pipeline: str, stream: str) -> None:
    """Every chunk of a stream back to not started, its set-aside rows forgotten: the
    stream is copied again from the start (its destination rows are the caller's)."""
    conn.execute(
        _sql(
            conn,
            "UPDATE _milepost_chunks SET watermark = NULL, rows_written = 0, batches = 0, "
            "status = 'pending', rows_rejected = 0, updated_at = %s "
            "WHERE pipeline = %s AND stream = %s",
        ),
        [time.time(), pipeline, stream],
    )
    conn.execute(
        _sql(conn, "DELETE FROM _milepost_rejected_rows WHERE pipeline = %s AND stream = %s"),
        [pipeline, stream],
    )
