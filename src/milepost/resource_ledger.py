"""The resource queue of HTTP and Python streams: each resource's page, rows and high water.

A SQL stream's progress is a cursor watermark per chunk (`_milepost_chunks`). A page
source has no keyset to range over: its progress is the state its source hands back
after each page (a page number, a cursor token, the next link, a generator's cursor).
`_milepost_resources` keeps that state per resource, one row each:

    pipeline, stream, resource_id  the key; resource_id hashes `resource`
    resource      the expanded endpoint path (no query string, so no secrets in it), or
                  the generator's import path
    position      the resource's place in this run's queue (NULL: not in this run)
    state         JSON: where the next page starts; NULL before the first page
    rows_written, pages, status (pending | in_progress | done | idle), updated_at
    high_water    JSON: the largest incremental cursor value a completed run has seen for
                  this resource (and, for `write: append`, the keys seen at that value);
                  kept across runs, so the next run asks only for what is newer

A page's rows, its resource's new state and its stream's chunk row commit in one
destination transaction, and each update matches only while the run's lease token is
ours (the same fencing as `ledger.advance`). Resources are queued in a stable order;
resume skips the done ones and continues the one in progress at its recorded state.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from milepost.errors import LeaseLost
from milepost.ledger_tables import METADATA

if TYPE_CHECKING:
    from milepost.ledger import Lease

RESOURCES = sa.Table(
    "_milepost_resources",
    METADATA,
    sa.Column("pipeline", sa.String(100), primary_key=True),
    sa.Column("stream", sa.String(255), primary_key=True),
    sa.Column("resource_id", sa.String(32), primary_key=True),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("position", sa.Integer),
    sa.Column("state", sa.Text),
    sa.Column("rows_written", sa.BigInteger, nullable=False),
    sa.Column("pages", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("high_water", sa.Text),
    sa.Column("updated_at", sa.Double, nullable=False),
)


@dataclass
class ResourceRow:
    stream: str
    resource: str
    position: int | None
    state: dict[str, Any] | None
    rows_written: int
    pages: int
    status: str
    high_water: dict[str, Any] | None


def resource_id(resource: str) -> str:
    """A fixed-width key for a resource text of any length (MySQL cannot index TEXT)."""
    return hashlib.sha256(resource.encode()).hexdigest()[:32]


def _sql(conn: Any, text: str) -> str:
    return text.replace("%s", "?") if conn.placeholder == "?" else text


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _fence(conn: Any) -> str:
    """The lease check every write carries (share-locks the run row, like ledger.advance)."""
    lock = {"postgresql": " FOR SHARE", "mysql": " LOCK IN SHARE MODE"}.get(conn.family, "")
    return f"EXISTS (SELECT 1 FROM _milepost_runs WHERE pipeline = %s AND lease_token = %s{lock})"


_COLUMNS = "stream, resource, position, state, rows_written, pages, status, high_water"


def _row(values: tuple[Any, ...]) -> ResourceRow:
    stream, resource, position, state, rows, pages, status, high = values
    return ResourceRow(
        stream,
        resource,
        None if position is None else int(position),
        json.loads(state) if state else None,
        int(rows),
        int(pages),
        status,
        json.loads(high) if high else None,
    )


def queue(conn: Any, pipeline: str, stream: str) -> list[ResourceRow]:
    """The stream's resources in this run, in queue order."""
    rows = conn.query(
        _sql(
            conn,
            f"SELECT {_COLUMNS} FROM _milepost_resources WHERE pipeline = %s AND stream = %s "
            "AND position IS NOT NULL ORDER BY position",
        ),
        [pipeline, stream],
    )
    return [_row(r) for r in rows]


def read_all(conn: Any, pipeline: str) -> list[ResourceRow]:
    """Every resource the pipeline has recorded, in this run or kept from earlier ones."""
    rows = conn.query(
        _sql(
            conn,
            f"SELECT {_COLUMNS} FROM _milepost_resources WHERE pipeline = %s "
            "ORDER BY stream, position, resource_id",
        ),
        [pipeline],
    )
    return [_row(r) for r in rows]


def high_waters(conn: Any, pipeline: str, stream: str) -> dict[str, dict[str, Any]]:
    """resource -> high water, for the resources of `stream` that have one."""
    return {
        r.resource: r.high_water
        for r in read_all(conn, pipeline)
        if r.stream == stream and r.high_water is not None
    }


def set_aside(conn: Any, pipeline: str, stream: str, *, forget: bool) -> None:
    """When a run plans the stream: take its resources out of the queue. Their high water
    stays for the next incremental run, unless `forget` (no completed run is remembered,
    e.g. after --fresh) says the destination starts over, so everything is asked for."""
    if forget:
        conn.execute(
            _sql(conn, "DELETE FROM _milepost_resources WHERE pipeline = %s AND stream = %s"),
            [pipeline, stream],
        )
        return
    conn.execute(
        _sql(
            conn,
            "UPDATE _milepost_resources SET position = NULL, state = NULL, rows_written = 0, "
            "pages = 0, status = 'idle', updated_at = %s WHERE pipeline = %s AND stream = %s",
        ),
        [time.time(), pipeline, stream],
    )


def enqueue(
    conn: Any, pipeline: str, stream: str, resources: list[str], lease: Lease | None = None
) -> None:
    """Queue `resources` for this run in this order (inside the caller's transaction).

    A resource seen by an earlier run keeps its high water; its progress starts over.
    With `lease`, each write matches only while the lease is ours (the copy phase queues
    a child stream's resources); the schema phase's own transaction is fenced already."""
    fence, fence_args = (
        ("", []) if lease is None else (f" AND {_fence(conn)}", [pipeline, lease.token])
    )
    known = {
        r[0]
        for r in conn.query(
            _sql(
                conn,
                "SELECT resource_id FROM _milepost_resources WHERE pipeline = %s AND stream = %s",
            ),
            [pipeline, stream],
        )
    }
    now = time.time()
    for position, resource in enumerate(resources):
        rid = resource_id(resource)
        if rid in known:
            n = conn.execute(
                _sql(
                    conn,
                    "UPDATE _milepost_resources SET position = %s, state = NULL, "
                    "rows_written = 0, pages = 0, status = 'pending', updated_at = %s "
                    f"WHERE pipeline = %s AND stream = %s AND resource_id = %s{fence}",
                ),
                [position, now, pipeline, stream, rid, *fence_args],
            )
        else:
            known.add(rid)
            n = conn.execute(
                _sql(
                    conn,
                    "INSERT INTO _milepost_resources (pipeline, stream, resource_id, resource, "
                    "position, state, rows_written, pages, status, high_water, updated_at) "
                    "SELECT %s, %s, %s, %s, %s, NULL, 0, 0, 'pending', NULL, %s "
                    f"FROM _milepost_runs WHERE pipeline = %s{fence}",
                ),
                [pipeline, stream, rid, resource, position, now, pipeline, *fence_args],
            )
        if n != 1:
            raise LeaseLost(
                f"Pipeline '{pipeline}': another runner took over the lease; "
                f"the resources of stream '{stream}' were not queued."
            )


def advance(
    conn: Any,
    lease: Lease,
    stream: str,
    position: int,
    state: dict[str, Any] | None,
    rows: int,
    done: bool,
    high_water: dict[str, Any] | None = None,
) -> None:
    """Record a committed page: call inside the transaction that wrote its rows.

    Matches only while our lease token is the run's, so a runner whose lease was taken
    over fails here and its page rolls back with it. `high_water` (given with the final
    page of an incremental resource) replaces the one kept from earlier runs."""
    keep = "" if high_water is None else "high_water = %s, "
    n = conn.execute(
        _sql(
            conn,
            f"UPDATE _milepost_resources SET state = %s, {keep}rows_written = rows_written + %s, "
            "pages = pages + 1, status = %s, updated_at = %s "
            f"WHERE pipeline = %s AND stream = %s AND position = %s AND {_fence(conn)}",
        ),
        [
            _json(state),
            *([_json(high_water)] if high_water is not None else []),
            rows,
            "done" if done else "in_progress",
            time.time(),
            lease.pipeline,
            stream,
            position,
            lease.pipeline,
            lease.token,
        ],
    )
    if n != 1:
        raise LeaseLost(
            f"Pipeline '{lease.pipeline}': another runner took over the lease; "
            "this page was rolled back."
        )


def summary(conn: Any, pipeline: str) -> dict[str, dict[str, Any]]:
    """Per stream: resources queued and done, pages, and the high water (for `status`).

    One resource: its high water value. Several: how many have one, and the largest."""
    out: dict[str, dict[str, Any]] = {}
    for r in read_all(conn, pipeline):
        s = out.setdefault(
            r.stream,
            {"resources": 0, "resources_done": 0, "pages": 0, "with_high_water": 0, "_hw": []},
        )
        if r.position is not None:
            s["resources"] += 1
            s["resources_done"] += r.status == "done"
            s["pages"] += r.pages
        if r.high_water is not None and r.high_water.get("value") is not None:
            s["with_high_water"] += 1
            s["_hw"].append(r.high_water["value"])
    for s in out.values():
        values = s.pop("_hw")
        s["high_water"] = _largest(values)
    return out


def _largest(values: list[Any]) -> Any:
    """The largest of values of one JSON kind (numbers, or ISO strings as the API wrote
    them); None when there are none or they do not compare."""
    try:
        return max(values) if values else None
    except TypeError:
        return None
