"""Backups of destination tables before a risky operation, and putting them back.

A risky operation overwrites or deletes destination data: `write: replace` on a fresh
run, or `--fresh`, both of which empty tables that hold rows. Before either, milepost
copies each such table aside (`CREATE TABLE _milepost_backup_<hex> AS SELECT * ...`,
in the destination database, so the backup is as durable as the data) and takes a
`before_risky` checkpoint; `_milepost_backups` records which backup belongs to which
checkpoint and table. `milepost rollback --to ID` puts the rows back, in one
transaction with the ledger's rewind.

The copy costs a pass over the table and its space until the backup is dropped, which
happens with the checkpoint it belongs to (`checkpoints clear`, or when a completed run
does not keep its checkpoints).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from milepost import ledger

_sql = ledger.portable_sql


@dataclass(frozen=True)
class Backup:
    table: str
    backup: str
    rows: int


def back_up(dst: Any, tables: list[str]) -> list[Backup]:
    """Copy each table aside; the caller records them against a checkpoint."""
    made = []
    for table in tables:
        name = f"_milepost_backup_{secrets.token_hex(5)}"
        with dst.transaction():
            dst.execute(f"CREATE TABLE {dst.quote(name)} AS SELECT * FROM {dst.quote(table)}")
        rows = int(dst.query(f"SELECT count(*) FROM {dst.quote(name)}")[0][0])
        made.append(Backup(table, name, rows))
    return made


def record(dst: Any, pipeline: str, checkpoint_id: str, backups: list[Backup]) -> None:
    with dst.transaction():
        for b in backups:
            dst.execute(
                _sql(
                    dst,
                    "INSERT INTO _milepost_backups (pipeline, checkpoint_id, table_name, "
                    "backup_name, rows_saved, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                ),
                [pipeline, checkpoint_id, b.table, b.backup, b.rows, time.time()],
            )


def recorded(dst: Any, pipeline: str, checkpoint_id: str | None = None) -> list[Backup]:
    """The backups recorded for a checkpoint (every one of the pipeline when None)."""
    where, params = "pipeline = %s", [pipeline]
    if checkpoint_id is not None:
        where += " AND checkpoint_id = %s"
        params.append(checkpoint_id)
    rows = dst.query(
        _sql(
            dst,
            f"SELECT table_name, backup_name, rows_saved FROM _milepost_backups WHERE {where} "
            "ORDER BY table_name",
        ),
        params,
    )
    return [Backup(t, b, int(n)) for t, b, n in rows]


def put_back(dst: Any, backups: list[Backup]) -> None:
    """Replace each table's rows with its backup's; call inside the caller's transaction."""
    for b in backups:
        dst.execute(f"DELETE FROM {dst.quote(b.table)}")
        dst.execute(f"INSERT INTO {dst.quote(b.table)} SELECT * FROM {dst.quote(b.backup)}")


def recorded_checkpoints(dst: Any, pipeline: str) -> list[str]:
    """The checkpoints that have backups recorded."""
    rows = dst.query(
        _sql(dst, "SELECT DISTINCT checkpoint_id FROM _milepost_backups WHERE pipeline = %s"),
        [pipeline],
    )
    return [str(r[0]) for r in rows]


def drop_for(dst: Any, pipeline: str, removed: list[str]) -> int:
    """Drop the backups of checkpoints that were just removed: with no checkpoint to roll
    back to, a backup only takes space. Only those: a store that lists nothing (moved, or
    briefly unreachable) must not cost a backup that can still be rolled back to."""
    gone = 0
    wanted = set(removed)
    rows = dst.query(
        _sql(dst, "SELECT checkpoint_id, backup_name FROM _milepost_backups WHERE pipeline = %s"),
        [pipeline],
    )
    for checkpoint_id, name in rows:
        if checkpoint_id not in wanted:
            continue
        with dst.transaction():
            dst.execute(f"DROP TABLE IF EXISTS {dst.quote(name)}")
            dst.execute(
                _sql(dst, "DELETE FROM _milepost_backups WHERE pipeline = %s AND backup_name = %s"),
                [pipeline, name],
            )
        gone += 1
    return gone
