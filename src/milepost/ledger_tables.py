"""The ledger's tables: progress, lease, and what the run keeps beside them.

Table definitions only (SQLAlchemy Core), so that `ledger.ensure_tables` creates them all
and each module that reads or writes one (ledger, watermarks, rejects, backup, repair)
names the same columns.
"""

from __future__ import annotations

import sqlalchemy as sa

METADATA = sa.MetaData()
RUNS = sa.Table(
    "_milepost_runs",
    METADATA,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("fingerprint", sa.String(32), nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lease_token", sa.String(32)),
    sa.Column("owner_host", sa.String(255)),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("owner_started", sa.Double),
    sa.Column("heartbeat_at", sa.Double),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("message", sa.Text),
    # Set by `milepost pause` from anywhere; the runner stops after its batches in flight.
    sa.Column("pause_requested", sa.Double),
    # `milepost checkpoints create` against a running run: the request (JSON: token,
    # reason) and the runner's answer (JSON: token, id or error).
    sa.Column("checkpoint_request", sa.Text),
    sa.Column("checkpoint_answer", sa.Text),
)
STREAMS = sa.Table(
    "_milepost_streams",
    METADATA,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("stream", sa.String(255), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("cursor_columns", sa.Text, nullable=False),
    sa.Column("rows_estimate", sa.BigInteger),
    sa.Column("transfer", sa.String(32)),
    # The source's smallest and largest cursor when the plan was made: resume compares
    # them with the source's now, to notice a truncated or trimmed table.
    sa.Column("min_cursor", sa.Text),
    sa.Column("max_cursor", sa.Text),
)
CHUNKS = sa.Table(
    "_milepost_chunks",
    METADATA,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("stream", sa.String(255), primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("lo", sa.Text),
    sa.Column("hi", sa.Text),
    sa.Column("watermark", sa.Text),
    sa.Column("rows_written", sa.BigInteger, nullable=False),
    sa.Column("batches", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("rows_rejected", sa.BigInteger, nullable=False, server_default="0"),
)
# Copies of destination tables taken before a risky operation (milepost/backup.py).
BACKUPS = sa.Table(
    "_milepost_backups",
    METADATA,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("backup_name", sa.String(64), primary_key=True),
    sa.Column("checkpoint_id", sa.String(64), nullable=False),
    sa.Column("table_name", sa.String(255), nullable=False),
    sa.Column("rows_saved", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)
# Ranges `milepost verify --repair` re-copied (milepost/repair.py), each row written in the
# transaction that deleted and copied its range again.
REPAIRS = sa.Table(
    "_milepost_repairs",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("pipeline", sa.String(100), nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("stream", sa.String(255), nullable=False),
    sa.Column("lo", sa.Text),
    sa.Column("hi", sa.Text),
    sa.Column("rows_deleted", sa.BigInteger, nullable=False),
    sa.Column("rows_copied", sa.BigInteger, nullable=False),
    sa.Column("repaired_at", sa.Double, nullable=False),
)
# Rows the destination refused under `on_row_error: skip`, each with its reason. They are
# written in the transaction of the batch they belong to, so they too exist exactly once.
REJECTED = sa.Table(
    "_milepost_rejected_rows",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("pipeline", sa.String(100), nullable=False),
    sa.Column("stream", sa.String(255), nullable=False),
    sa.Column("chunk", sa.Integer, nullable=False),
    sa.Column("cursor_value", sa.Text, nullable=False),
    sa.Column("row_data", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)


# What an incremental stream has copied, kept across completed runs: the next run starts
# after `high_water` (and after `null_high_water` for rows whose leading cursor is NULL).
# Written in the transaction that marks a run done (milepost/watermarks.py).
WATERMARKS = sa.Table(
    "_milepost_watermarks",
    METADATA,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("stream", sa.String(255), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("high_water", sa.Text),
    sa.Column("null_high_water", sa.Text),
    sa.Column("rows_copied", sa.BigInteger, nullable=False),
    sa.Column("runs", sa.Integer, nullable=False),
    sa.Column("last_run_id", sa.String(32), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    # As they were before the last run completed: restoring or rolling back to one of
    # that run's checkpoints puts them back.
    sa.Column("prev_high_water", sa.Text),
    sa.Column("prev_null_high_water", sa.Text),
    sa.Column("prev_rows_copied", sa.BigInteger),
    sa.Column("prev_run_id", sa.String(32)),
)
