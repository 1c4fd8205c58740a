"""Verification: prove the destination holds what the source holds, chunk by chunk.

Each stream is compared over the cursor ranges its copy was planned in (the ledger's
chunks; a pipeline that never ran is planned the same way). A range is compared by
its row count and an order-independent 64-bit checksum on each side, computed where it
is cheapest (`checksum_sql` inside the databases, `checksum` on the client). A range
that differs is cut in half at a key read from an index, and each half compared again,
until the differing ranges are at most one batch of rows: the report names where the
data differ, not only that they do. Only the left half is summed; the right half's
count and checksum are the parent's minus the left's (sums are additive).

What a paused run has not copied yet is not compared, and is reported as pending: a
verification checks what the ledger says is in the destination.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from milepost import connectors, ledger, schema
from milepost.checksum import RangeSum, RowHasher, sum_rows
from milepost.checksum_sql import (
    canonical_text,
    client_select,
    native_row_hash,
    text_sum_query,
)
from milepost.config import Pipeline
from milepost.errors import ConfigError, LeaseHeld
from milepost.events import Event, Listener, ignore
from milepost.keyset import Key, RangeFilter, nulls_start
from milepost.plan import ChunkPlan, plan_chunks
from milepost.transfer import same_column_types
from milepost.verify_report import Difference, Report, StreamReport
from milepost.verify_upsert import UpsertSettler

# How a stream's ranges are summed (see checksum_sql and checksum).
NATIVE = "in-database"  # same engine, same types: each type's own hash, inside the server
TEXT = "in-database (canonical text)"  # any other pair: MD5 of one text per row
CLIENT = "client"  # rows streamed and hashed by milepost, by value: settles what TEXT finds

MAX_RANGES_PER_CHUNK = 16  # beyond this, a chunk's differences are reported coarser
SET_ASIDE_PER_QUERY = 200


@dataclass(frozen=True)
class Task:
    stream: str
    chunk: int
    lo: Key | None
    hi: Key | None


# --- comparing one range -------------------------------------------------------------


class RangeComparer:
    """Sums and narrows ranges of one stream over one pair of connections."""

    def __init__(
        self,
        src: Any,
        dst: Any,
        table: schema.SourceTable,
        method: str,
        batch_size: int,
        set_aside: Sequence[Key] = (),
    ) -> None:
        self.src, self.dst, self.table, self.method = src, dst, table, method
        # Rows the copy set aside (on_row_error: skip) are accounted for elsewhere (and
        # may since have been put in by hand): both sides leave them out.
        self.set_aside = tuple(set_aside)
        self.ranges_agree = orders_alike(table, {src.family, dst.family})
        self.stream = table.stream.target
        self.src_table = table.relation(src)
        self.dst_table = dst.quote(table.stream.target)
        self.narrow_to = max(1, batch_size)
        self.hasher = RowHasher([table.logical.get(c) for c in table.columns])
        self.settled_by_value = 0
        self._expr: dict[tuple[str, str], str] = {}

    def compare(self, lo: Key | None, hi: Key | None, s: RangeSum, d: RangeSum) -> list[Difference]:
        """The differing ranges within (lo, hi], whose sums by this comparer's method are
        `s` and `d`, narrowed; empty when equal."""
        if s == d:
            return []
        method = self.method
        if method == TEXT:
            # Text differs; the values may not (JSON key order, float notation): ask by value.
            method = CLIENT
            s, d = self.sums(CLIENT, lo, hi)
            if s == d:
                self.settled_by_value += 1
                return []
        found = self._narrow(method, lo, hi, s, d)
        if self.table.stream.write == "upsert":  # rows of its own, one per key: by key
            held = UpsertSettler(self.src, self.dst, self.table, self.src_table, self.dst_table)
            found = [f for f in found if not held.holds(f.lo, f.hi, self.set_aside)]
        return found

    def sums(self, method: str, lo: Key | None, hi: Key | None) -> tuple[RangeSum, RangeSum]:
        """Count and checksum of (lo, hi] on each side, without the rows set aside."""
        t = self.table
        src = self._sum(method, self.src, self.src_table, t.range(lo, hi), "src")
        dst = self._sum(method, self.dst, self.dst_table, t.range(lo, hi, source=False), "dst")
        # Sums add up: the set-aside rows' own sums come off, a few hundred keys at a time
        # (a predicate per key, kept well under every engine's limit on parameters).
        keys = in_range(self.set_aside, lo, hi)
        for start in range(0, len(keys), SET_ASIDE_PER_QUERY):
            part = keys[start : start + SET_ASIDE_PER_QUERY]
            src -= self._sum(method, self.src, self.src_table, t.range(lo, hi, within=part), "src")
            dst -= self._sum(
                method, self.dst, self.dst_table, t.range(lo, hi, source=False, within=part), "dst"
            )
        return src, dst

    def _sum(self, method: str, conn: Any, table: str, rng: RangeFilter, side: str) -> RangeSum:
        where, params = rng.sql(conn.keyset(self.table.cursor))
        if method == CLIENT:
            cols = ", ".join(
                client_select(conn, c, self.table.logical.get(c)) for c in self.table.columns
            )
            rows = conn.stream_rows(f"SELECT {cols} FROM {table} WHERE {where}", params)
            # Closed even when hashing a row fails: a PostgreSQL stream holds a transaction
            # open until its generator ends.
            with contextlib.closing(rows):
                return sum_rows(rows, self.hasher)
        sql = self._sum_query(method, conn, table, side, where)
        count, total = conn.query(sql, params)[0]
        return RangeSum(int(count), int(total or 0))

    def _sum_query(self, method: str, conn: Any, table: str, side: str, where: str) -> str:
        key = (method, side)
        if key not in self._expr:  # built once: the native hash looks up the catalog
            columns = self.table.columns
            if method == NATIVE:
                self._expr[key] = native_row_hash(conn, table, columns)
            else:
                kinds = [self.table.logical.get(c) for c in columns]
                self._expr[key] = canonical_text(conn, columns, kinds)
        if method == NATIVE:
            return f"SELECT count(*), SUM({self._expr[key]}) FROM {table} WHERE {where}"
        return text_sum_query(conn, table, self._expr[key], where)

    def _narrow(
        self, method: str, lo: Key | None, hi: Key | None, s: RangeSum, d: RangeSum
    ) -> list[Difference]:
        """Halve differing ranges until each is at most one batch of rows (or too many)."""
        found: list[Difference] = []
        # Breadth first: under the cap, every range is cut as finely as the others.
        todo = collections.deque([(lo, hi, s, d)])
        while todo:
            lo, hi, s, d = todo.popleft()
            mid = None
            small = max(s.rows, d.rows) <= self.narrow_to
            # Split only while the halves (two ranges where this is one) stay in bounds.
            if not small and len(found) + len(todo) + 2 <= MAX_RANGES_PER_CHUNK:
                mid = self._middle(lo, hi, s, d)
            if mid is None:
                found.append(Difference(self.stream, lo, hi, s.rows, d.rows))
                continue
            ls, ld = self.sums(method, lo, mid)
            rs = RangeSum(s.rows - ls.rows, s.checksum - ls.checksum)
            rd = RangeSum(d.rows - ld.rows, d.checksum - ld.checksum)
            if ls != ld:
                todo.append((lo, mid, ls, ld))
            if rs != rd:
                todo.append((mid, hi, rs, rd))
        return in_order(found)

    def _middle(self, lo: Key | None, hi: Key | None, s: RangeSum, d: RangeSum) -> Key | None:
        """A key that halves the side with more rows in the range (None: cannot split)."""
        if not self.ranges_agree:
            return None
        t = self.table
        # The source's keys when it has two rows to split between: keys read from the
        # destination may come back as another type (SQLite's text for a timestamp).
        if s.rows >= 2 or s.rows >= d.rows:
            conn, table, rng, n = self.src, self.src_table, t.range(lo, hi), s.rows
        else:
            conn, table, rng, n = self.dst, self.dst_table, t.range(lo, hi, source=False), d.rows
        if n < 2:
            return None
        key, _ = conn.next_batch_end(table, self.table.cursor, rng, n // 2)
        if key is None or key in (hi, lo):
            return None
        return tuple(key)


_COLLATED = {"text", "varchar"}
_TEMPORAL = {"date", "time", "timestamp", "timestamptz"}


def orders_alike(table: schema.SourceTable, families: set[str]) -> bool:
    """Do both sides put this stream's cursor keys in the same order?

    Not when the cursor holds text: each database sorts it by its own collation
    (case-insensitive in many MySQL databases), so a range (lo, hi] can hold different
    rows on each side. Nor dates and times kept by SQLite: they are text there, and
    text with a UTC offset does not sort as the instants do. Such a stream is compared,
    and repaired, only as a whole.
    """
    unlike = _COLLATED | (_TEMPORAL if "sqlite" in families else set())
    kinds = [table.logical.get(c) for c in table.cursor]
    return all(k is not None and k.kind not in unlike for k in kinds)


def in_range(keys: Sequence[Key], lo: Key | None, hi: Key | None) -> tuple[Key, ...]:
    """The keys that may lie in (lo, hi]: those that do when Python orders them as the
    databases do (numbers, dates, times), every one otherwise (text: collations differ)."""
    ordered = (int, float, Decimal, dt.date, dt.time)
    if not all(isinstance(v, ordered) and not isinstance(v, bool) for k in keys for v in k):
        return tuple(keys)
    return tuple(k for k in keys if (lo is None or k > lo) and (hi is None or k <= hi))


def in_order(found: list[Difference]) -> list[Difference]:
    """Ranges of one stream in cursor order, the one open below first (in the order they
    were found, should their keys not compare)."""
    try:
        return sorted(found, key=lambda f: (f.lo is not None, f.lo or ()))
    except TypeError:
        return found


def choose_method(src: Any, dst: Any, table: schema.SourceTable) -> str:
    """The cheapest way to sum this stream's ranges that compares every value. (The native
    hash looks each column's type up by its table, which a query does not have.)"""
    native = src.family == dst.family == "postgresql" and table.query is None
    if native and same_column_types(src, dst, table):
        return NATIVE
    return TEXT


# --- which ranges -------------------------------------------------------------------


def plan_tasks(
    src: Any,
    dst: Any,
    pipeline: Pipeline,
    table: schema.SourceTable,
    chunks: list[ledger.ChunkRow] | None,
) -> tuple[list[Task], int, int]:
    """The ranges to compare for one stream, its number of chunks, and how many of them
    are not completely copied yet (a chunk copied in part is compared up to its watermark).

    With a ledger: each chunk up to its watermark. Without one (never run here): the
    chunks a run would plan.
    """
    stream = table.stream.target
    whole_only = not orders_alike(table, {src.family, dst.family})
    if chunks is not None:
        tasks, pending = [], 0
        for c in sorted(chunks, key=lambda c: c.index):
            whole = c.hi is None and (c.lo is None or c.lo == nulls_start(table.cursor))
            if whole_only and (c.status != "done" or not whole):
                pending += 1  # a part of a text range cannot be told apart on both sides
            elif c.status == "done":
                tasks.append(Task(stream, c.index, c.lo, c.hi))
            elif c.watermark is not None:
                tasks.append(Task(stream, c.index, c.lo, c.watermark))
                pending += 1
            else:
                pending += 1
        return tasks, len(chunks), pending
    src_table = table.relation(src)
    estimate = table.estimate_rows(src)
    planned = plan_chunks(src, table, src_table, estimate, pipeline.batch_size)
    if table.lead_nullable:
        planned.append(ChunkPlan(len(planned), nulls_start(table.cursor), None))
    return [Task(stream, c.index, c.lo, c.hi) for c in planned], len(planned), 0


def sample(tasks: list[Task], fraction: float, rng: random.Random | None = None) -> list[Task]:
    """A random share of a stream's ranges, at least one."""
    if not tasks or fraction >= 1:
        return tasks
    k = max(1, math.ceil(len(tasks) * fraction))
    chosen = (rng or random.Random()).sample(range(len(tasks)), k)
    return [tasks[i] for i in sorted(chosen)]


# --- a whole verification --------------------------------------------------------------


class Verifier:
    """Compares the streams of a pipeline with `workers` threads, each with its own
    connections to both sides."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workers: int | None = None,
        on_event: Listener = ignore,
        stop: threading.Event | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.workers = max(1, workers or pipeline.workers)
        self.emit = on_event
        self.stop = stop or threading.Event()
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        self._tables: dict[str, schema.SourceTable] = {}
        self._methods: dict[str, str] = {}
        self._set_aside: dict[str, list[Key]] = {}
        self._given: tuple[Any, Any] = (None, None)

    def run(
        self,
        src: Any,
        dst: Any,
        *,
        full: Sequence[str] | None = None,
        fraction: float = 1.0,
        only: Sequence[str] | None = None,
        run_holder: ledger.Lease | None = None,
        tables: Sequence[schema.SourceTable] | None = None,
    ) -> Report:
        """Verify every stream (or `only` these); streams outside `full` are sampled at
        `fraction` of their chunks. `run_holder` is the runner's own lease: a verification
        from the CLI refuses while a live runner is writing. `tables`: the streams as the
        caller has already reflected them."""
        chunks_by_stream = self._prepare(src, dst, only, run_holder, tables)
        reports: dict[str, StreamReport] = {}
        tasks: list[Task] = []
        for target, t in self._tables.items():
            planned, total, pending = plan_tasks(
                src, dst, self.pipeline, t, chunks_by_stream.get(target)
            )
            chosen = planned if full is None or target in full else sample(planned, fraction)
            reports[target] = StreamReport(
                target,
                target,
                self._methods[target],
                chunks=total,
                chunks_compared=len(chosen),
                chunks_pending=pending,
                rows_set_aside=len(self._set_aside.get(target, ())),
            )
            tasks.extend(chosen)
        return self._execute(reports, tasks)

    def recheck(self, src: Any, dst: Any, differences: Sequence[Difference]) -> Report:
        """Compare exactly these ranges again (after a repair)."""
        streams = sorted({d.stream for d in differences})
        self._prepare(src, dst, streams, None, None)
        tasks = [Task(d.stream, i, d.lo, d.hi) for i, d in enumerate(differences)]
        reports = {
            s: StreamReport(
                s,
                s,
                self._methods[s],
                chunks=sum(t.stream == s for t in tasks),
                chunks_compared=sum(t.stream == s for t in tasks),
            )
            for s in streams
        }
        return self._execute(reports, tasks)

    def _prepare(
        self,
        src: Any,
        dst: Any,
        only: Sequence[str] | None,
        run_holder: ledger.Lease | None,
        tables: Sequence[schema.SourceTable] | None,
    ) -> dict[str, list[ledger.ChunkRow]]:
        """Reflect the streams, choose how to sum each, and read the ledger's chunks."""
        self._given = (src, dst)
        chunks_by_stream: dict[str, list[ledger.ChunkRow]] = {}
        # End any read this connection had open: a MySQL snapshot taken before the copy
        # would show the chunks as they were then.
        dst.raw.commit()
        # Inside a run (which holds the lease) the ledger and the tables are known to exist.
        if run_holder is not None or ledger.tables_exist(dst):
            if run_holder is None:
                ledger.ensure_tables(dst)
                run = ledger.read_run(dst, self.pipeline.name)
                if run is not None:
                    refuse_if_running(run)
            # A planned stream may have no chunks: a migrate stream that an earlier
            # completed run copied, in an incremental run. It has nothing new to compare.
            for s in ledger.read_streams(dst, self.pipeline.name):
                chunks_by_stream[s.stream] = []
            for c in ledger.read_chunks(dst, self.pipeline.name):
                chunks_by_stream.setdefault(c.stream, []).append(c)
            self._set_aside = ledger.read_set_aside(dst, self.pipeline.name)
        # An HTTP API or a generator cannot be read a second time alike: nothing to compare.
        pages = [s.target for s in self.pipeline.streams if s.kind in ("endpoint", "python")]
        if pages and (only is None or set(pages) & set(only)):
            self.emit(
                Event(
                    "message",
                    text=f"verification skips {', '.join(pages)}: an HTTP or Python source "
                    "cannot be read again consistently (docs/sources/http.md)",
                )
            )
        if tables is None:
            tables = [
                schema.inspect_source(src, s)
                for s in self.pipeline.streams
                if s.target not in pages
            ]
            for t in tables:
                _require_destination_table(dst, t)
        chosen = [
            t
            for t in tables
            if (only is None or t.stream.target in only) and t.stream.target not in pages
        ]
        self._tables = {t.stream.target: t for t in chosen}
        self._methods = {t.stream.target: choose_method(src, dst, t) for t in chosen}
        return chunks_by_stream

    def _execute(self, reports: dict[str, StreamReport], tasks: list[Task]) -> Report:
        started = time.monotonic()
        self.emit(Event("phase", text="verify", data={"ranges": len(tasks)}))
        threads = min(self.workers, len(tasks))
        try:
            if threads <= 1:
                # One range (a small table): the connections at hand serve; opening two
                # more would cost more than comparing it.
                src, dst = self._given
                dst.read_json_as_text()
                self._local.conns = (src, dst, {})
                results = [self._compare(task) for task in tasks]
            else:
                with ThreadPoolExecutor(threads, thread_name_prefix="milepost-verify") as pool:
                    results = list(pool.map(self._compare, tasks))
        finally:
            self._local = threading.local()
            for conn in self._opened:
                conn.close()
            self._opened.clear()
        for task, (s, d, diffs, settled) in zip(tasks, results, strict=True):
            r = reports[task.stream]
            r.source_rows += s
            r.destination_rows += d
            r.settled_by_value += settled
            if diffs:
                r.chunks_differing += 1
                r.differences.extend(diffs)
        for r in reports.values():
            r.differences = in_order(r.differences)
            self.emit(_stream_event(r))
        return Report(self.pipeline.name, list(reports.values()), time.monotonic() - started)

    def _compare(self, task: Task) -> tuple[int, int, list[Difference], int]:
        if self.stop.is_set():
            raise InterruptedError("verification stopped")
        comparer = self._comparer(task.stream)
        before = comparer.settled_by_value
        try:
            s, d = comparer.sums(comparer.method, task.lo, task.hi)
            diffs: list[Difference] = []
            if s != d:
                diffs = comparer.compare(task.lo, task.hi, s, d)
        finally:
            comparer.dst.raw.commit()  # no snapshot or transaction outlives its range
        return s.rows, d.rows, diffs, comparer.settled_by_value - before

    def _comparer(self, stream: str) -> RangeComparer:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            src = connectors.connect(self.pipeline.source_url(), "source")
            dst = connectors.connect(self.pipeline.destination_url(), "destination")
            with self._lock:
                self._opened.extend([src, dst])
            # JSON as text, as a source connection reads it: parsed, the JSON string
            # "x" would arrive as the text x, which is not JSON.
            dst.read_json_as_text()
            conns = self._local.conns = (src, dst, {})
        src, dst, comparers = conns
        if stream not in comparers:
            comparers[stream] = RangeComparer(
                src,
                dst,
                self._tables[stream],
                self._methods[stream],
                self.pipeline.batch_size,
                self._set_aside.get(stream, ()),
            )
        return comparers[stream]


def _stream_event(r: StreamReport) -> Event:
    state = "equal" if r.equal else f"{len(r.differences)} differing range(s)"
    return Event(
        "verified",
        stream=r.stream,
        rows_done=r.source_rows,
        text=f"{r.stream}: {state} ({r.chunks_compared} of {r.chunks} chunk(s) compared, "
        f"{r.method})",
        data={"equal": r.equal, "differences": len(r.differences)},
    )


def refuse_if_running(run: ledger.RunRow) -> None:
    now = time.time()
    if run.lease_token and ledger.holder_is_alive(run, now):
        raise LeaseHeld(
            f"Pipeline '{run.pipeline}' is being run by {ledger.describe_holder(run, now)}; "
            "its destination is changing under the comparison.",
            hint="Pause it first (`milepost pause`), or let it finish: a run verifies by "
            "itself before finalize.",
        )


def _require_destination_table(dst: Any, table: schema.SourceTable) -> None:
    inspector = sa.inspect(dst.sqlalchemy_engine())
    if inspector.has_table(table.stream.target):
        have = {c["name"] for c in inspector.get_columns(table.stream.target)}
        missing = [c for c in table.columns if c not in have]
        if missing:
            raise ConfigError(
                f"Stream '{table.stream.target}': the destination table "
                f"'{table.stream.target}' in {dst.url.masked} has no column "
                f"{', '.join(repr(c) for c in missing)}, which the source has; there is "
                "nothing to compare them with.",
                hint="Add the column, or copy into a table that has every column.",
            )
        return
    raise ConfigError(
        f"Stream '{table.stream.target}': the destination table '{table.stream.target}' "
        f"does not exist in {dst.url.masked}; there is nothing to compare.",
        hint="Run the pipeline first (`milepost run`).",
    )


def verify(
    pipeline: Pipeline,
    *,
    workers: int | None = None,
    on_event: Listener = ignore,
    fraction: float = 1.0,
    ranges: Sequence[Difference] | None = None,
) -> Report:
    """Verify a pipeline from outside a run (the CLI and the Python API): every stream,
    a `fraction` of each stream's chunks, or exactly `ranges` (after a repair)."""
    src = connectors.connect(pipeline.source_url(), "source")
    try:
        dst = connectors.connect(pipeline.destination_url(), "destination")
        try:
            verifier = Verifier(pipeline, workers=workers, on_event=on_event)
            if ranges is not None:
                return verifier.recheck(src, dst, ranges)
            full = None if fraction >= 1 else ()
            return verifier.run(src, dst, full=full, fraction=fraction)
        finally:
            dst.close()
    finally:
        src.close()
