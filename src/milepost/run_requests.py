"""Asking a running run for something, through the ledger: a pause, a checkpoint.

The runner's heartbeat thread reads these once a second on its own connection. Going
through the destination database rather than a signal reaches a runner on any
machine, in a container, or under another user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from milepost.errors import LeaseLost
from milepost.ledger import Lease
from milepost.ledger import portable_sql as _sql


def request_pause(conn: Any, pipeline: str) -> bool:
    """Ask the runner holding the lease to stop after its batches in flight.

    Through the ledger, so it reaches a runner on any machine. False when no runner
    holds the lease (there is nothing to pause).
    """
    with conn.transaction():
        n = conn.execute(
            _sql(
                conn,
                "UPDATE _milepost_runs SET pause_requested = %s "
                "WHERE pipeline = %s AND lease_token IS NOT NULL",
            ),
            [time.time(), pipeline],
        )
    return n == 1


@dataclass(frozen=True)
class Requests:
    """What others asked of the running run through the ledger."""

    pause: bool
    checkpoint: str | None  # JSON {"token", "reason"} from `milepost checkpoints create`


def read_requests(conn: Any, lease: Lease) -> Requests:
    rows = conn.query(
        _sql(
            conn,
            "SELECT pause_requested, checkpoint_request FROM _milepost_runs "
            "WHERE pipeline = %s AND lease_token = %s",
        ),
        [lease.pipeline, lease.token],
    )
    # End the read: MySQL would otherwise answer the next poll from the same snapshot.
    # (Not conn.transaction(): on SQLite that takes the write lock, every second.)
    conn.raw.commit()
    if not rows:
        raise LeaseLost(f"Pipeline '{lease.pipeline}': another runner took over the lease.")
    return Requests(rows[0][0] is not None, rows[0][1])


def request_checkpoint(conn: Any, pipeline: str, request: str) -> bool:
    """Ask the running run for a checkpoint; False when no runner holds the lease."""
    with conn.transaction():
        n = conn.execute(
            _sql(
                conn,
                "UPDATE _milepost_runs SET checkpoint_request = %s, checkpoint_answer = NULL "
                "WHERE pipeline = %s AND lease_token IS NOT NULL",
            ),
            [request, pipeline],
        )
    return n == 1


def answer_checkpoint(conn: Any, lease: Lease, answer: str) -> None:
    """The runner's answer to a checkpoint request; the request is consumed with it."""
    with conn.transaction():
        conn.execute(
            _sql(
                conn,
                "UPDATE _milepost_runs SET checkpoint_request = NULL, checkpoint_answer = %s "
                "WHERE pipeline = %s AND lease_token = %s",
            ),
            [answer, lease.pipeline, lease.token],
        )
