"""HTTP and Python streams in a run: their tables, their plan, their copy and their status.

The runner knows SQL streams (chunks of cursor ranges, copier.py). A stream read from an
HTTP API or a Python generator is a page source instead (pages.py); this module is where
the runner hands such streams over:

- schema: the destination table comes from `columns:` (types from config.DECLARED_TYPES,
  `key:` as its primary key), as a `SourceTable` the schema phase creates like any other;
- plan: one chunk per stream, and the resource queue (resource_ledger): a stream's own
  endpoint, or, for a child stream (`parent:`), one resource per parent record, queued
  when the child starts, from the parent's rows committed in the destination;
- copy: parents before children; the resources in queue order, each page committed with
  its state; after a transient failure the copy starts again from the ledger;
- verify: skipped (an API or a generator cannot be read twice alike);
- status: resources queued and done, pages, and the incremental high water.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from milepost import ledger, resource_ledger, watermarks
from milepost.config import Pipeline, StreamConfig, endpoint_fields
from milepost.copier import BatchDone
from milepost.crash import crash_point
from milepost.errors import ConfigError, CopyFailed
from milepost.events import Event, Listener
from milepost.pages import Page, RowShape, Target, copy_resource, finish_empty
from milepost.retry import RetryPolicy
from milepost.schema import SourceTable
from milepost.typemap import Logical

PAGE_KINDS = ("endpoint", "python")
TRANSFER = {"endpoint": "http", "python": "python"}

# Declared column types as milepost's logical kinds (typemap.py), which map to each engine.
LOGICAL = {
    "integer": Logical("int32"),
    "bigint": Logical("int64"),
    "float": Logical("float64"),
    "numeric": Logical("decimal"),
    "text": Logical("text"),
    "boolean": Logical("bool"),
    "date": Logical("date"),
    "timestamp": Logical("timestamp"),
    "timestamptz": Logical("timestamptz"),
    "json": Logical("json"),
    "uuid": Logical("uuid"),
}
_ORDERED = ("integer", "bigint", "float", "numeric", "date", "timestamp", "timestamptz")


def is_page(stream: StreamConfig) -> bool:
    return stream.kind in PAGE_KINDS


def declared_columns(stream: StreamConfig) -> tuple[dict[str, str], list[str] | None]:
    """A stream's columns (name: declared type) and key: from the pipeline, or for a
    Python stream from its @milepost.source decorator."""
    if stream.kind != "python":
        return dict(stream.columns or {}), stream.key
    from milepost.python_source import resolve

    fn = resolve(stream)
    if stream.columns and stream.columns != fn.columns:
        raise ConfigError(
            f"Stream '{stream.target}': `columns:` differs from the columns of "
            f"@milepost.source on {fn.__qualname__}; declare them in one place.",
        )
    if stream.key and fn.key and stream.key != fn.key:
        raise ConfigError(
            f"Stream '{stream.target}': `key:` differs from the key of @milepost.source "
            f"on {fn.__qualname__}; declare it in one place."
        )
    return dict(stream.columns or fn.columns), stream.key or fn.key


def inspect(stream: StreamConfig) -> SourceTable:
    """The destination table a page stream declares, checked before anything is written."""
    columns, key = declared_columns(stream)
    name = f"Stream '{stream.target}'"
    for role, names in (("key", key or []), ("cursor", stream.cursor or [])):
        for c in names:
            if c not in columns:
                raise ConfigError(
                    f"{name}: the {role} column '{c}' is not one of its `columns:` "
                    f"({', '.join(columns)})."
                )
    if stream.write == "upsert" and not key:
        raise ConfigError(
            f"{name}: `write: upsert` needs a `key:`, the columns that identify a record."
        )
    if stream.kind == "endpoint":
        _check_http(stream, columns)
    if stream.tie_breaker:
        raise ConfigError(f"{name}: `tie_breaker:` orders SQL cursors; it does not apply here.")
    return SourceTable(
        stream,
        list(columns),
        {c: sa.JSON() if t == "json" else sa.types.NullType() for c, t in columns.items()},
        {c: LOGICAL[t] for c, t in columns.items()},
        {},
        {c: c not in (key or []) for c in columns},
        list(key or []),
        list(stream.cursor or key or list(columns)[:1]),
    )


def _check_http(stream: StreamConfig, columns: dict[str, str]) -> None:
    name = f"Stream '{stream.target}'"
    p = stream.paginate
    if p.style == "cursor" and not p.next:
        raise ConfigError(
            f"{name}: `paginate: {{style: cursor}}` needs `next:`, the dotted path of the "
            "next page's token in the response body."
        )
    if stream.mode == "incremental":
        if not stream.cursor or len(stream.cursor) != 1 or not stream.since_param:
            raise ConfigError(
                f"{name}: an incremental HTTP stream names one record field as `cursor:` "
                "(whose largest value is remembered) and the query parameter that asks for "
                "records from that value on as `since_param:`."
            )
        kind = columns[stream.cursor[0]]
        if stream.lookback is not None and kind not in _ORDERED:
            raise ConfigError(
                f"{name}: `lookback:` moves a date, time or number back; the cursor "
                f"'{stream.cursor[0]}' is {kind}."
            )
    elif stream.since_param:
        raise ConfigError(f"{name}: `since_param:` is sent by incremental streams only.")


def root_resource(stream: StreamConfig) -> str:
    """The one resource of a stream without a parent."""
    if stream.kind == "python":
        return f"python:{stream.source_identity()}"
    return str(stream.endpoint)


# --- the plan (inside the schema phase's transaction) ------------------------------------


def record_stream(
    dst: Any,
    pipeline: str,
    table: SourceTable,
    position: int,
    marks: dict[str, watermarks.Watermark],
) -> None:
    """One chunk for the stream, and its resource queue (a child's is made when it starts).

    A migrate stream that a completed run copied gets no chunk: it is not read again.
    Without a completed run on record (a first run, or --fresh) the resources' high
    waters are forgotten with it."""
    stream = table.stream
    resource_ledger.set_aside(dst, pipeline, stream.target, forget=stream.target not in marks)
    chunks: list[tuple[int, Any, Any]] = []
    if not watermarks.skipped(stream, marks):
        chunks = [(0, None, None)]
    ledger.record_stream(
        dst, pipeline, stream.target, position, table.cursor, None, TRANSFER[stream.kind], chunks
    )
    if chunks and stream.parent is None:
        resource_ledger.enqueue(dst, pipeline, stream.target, [root_resource(stream)])


def probe(pipeline: Pipeline, src: Any, stop: threading.Event, recorded: Any, fresh: bool) -> None:
    """Before a fresh run writes anything: ask each HTTP stream without a parent for its
    first page, so a wrong URL, token or `records:` path is reported (exit 2) with nothing
    written. Resumed and incremental runs have been through this already."""
    if getattr(src, "family", None) != "http":
        return
    from milepost import recovery
    from milepost.connectors.http import HttpResource

    decision = recovery.decide(
        recorded, pipeline.fingerprint(), fresh=fresh, incremental=pipeline.incremental
    )
    if decision.action != "fresh":
        return
    client = src.client(pipeline.source, pipeline.retry, stop)
    for s in pipeline.streams:
        if s.kind == "endpoint" and s.parent is None:
            HttpResource(
                client, s.target, str(s.endpoint), dict(s.params), s.records, s.paginate
            ).probe()


# --- the copy phase ----------------------------------------------------------------------


class PageCopier:
    """The copy phase's work on page streams, shared by the runner's workers."""

    def __init__(
        self,
        pipeline: Pipeline,
        retry: RetryPolicy,
        emit: Listener,
        on_batch: Callable[[BatchDone], None],
        chunks: list[ledger.ChunkRow],
    ) -> None:
        self.pipeline = pipeline
        self.retry = retry
        self.stop = retry.stop  # the run's: set by a pause, a signal or a failed worker
        self.emit = emit
        self.on_batch = on_batch
        # A child waits for its parent's rows: set when the parent's chunk is done (or
        # when it has none to copy in this run).
        self.finished: dict[str, threading.Event] = {}
        for s in pipeline.streams:
            event = self.finished[s.target] = threading.Event()
            mine = [c for c in chunks if c.stream == s.target]
            if all(c.status == "done" for c in mine):
                event.set()

    def copy(self, conns: Any, chunk: ledger.ChunkRow, lease: ledger.Lease, table: SourceTable):
        """Copy what remains of a page stream, again from the ledger after a passing fault."""
        stream = table.stream
        if stream.parent is not None and not self._wait_for(stream.parent):
            return
        known = {"pages": 0, "rows": chunk.rows_written}

        def on_page(done: BatchDone) -> None:
            known["pages"] += 1
            known["rows"] += done.rows
            self.on_batch(done)

        def attempt() -> bool:
            try:
                if conns.broken:
                    conns.close()
                    self._recount(conns, chunk, known)
                src, dst, _ = conns.open(None)
                return self._copy(src, dst, chunk, lease, table, on_page)
            except BaseException:
                conns.broken = True
                raise

        complete = self.retry.call(
            attempt,
            what=f"Stream '{chunk.stream}'",
            progress=lambda: known["pages"],
            stream=chunk.stream,
        )
        if complete:
            self.finished[chunk.stream].set()

    def _wait_for(self, parent: str) -> bool:
        event = self.finished.get(parent)
        while event is not None and not event.wait(0.2):
            if self.stop.is_set():
                return False
        return not self.stop.is_set()

    def _recount(self, conns: Any, chunk: ledger.ChunkRow, known: dict[str, int]) -> None:
        """A page whose COMMIT was sent as the connection died may have committed: the
        ledger says, and its rows are counted."""
        _, dst, _ = conns.open(None)
        now = ledger.read_chunk(dst, self.pipeline.name, chunk.stream, chunk.index)
        if now.rows_written > known["rows"]:
            extra = now.rows_written - known["rows"]
            known["rows"] = now.rows_written
            self.on_batch(BatchDone(chunk.stream, chunk.index, extra, None, now.status == "done"))

    def _copy(
        self,
        src: Any,
        dst: Any,
        chunk: ledger.ChunkRow,
        lease: ledger.Lease,
        table: SourceTable,
        on_page: Callable[[BatchDone], None],
    ) -> bool:
        p, stream = self.pipeline, table.stream
        columns, key = declared_columns(stream)
        target = Target(stream.target, chunk.index, list(columns), stream.write, key)
        queue = resource_ledger.queue(dst, p.name, stream.target)
        if stream.parent is not None and not queue:
            if not self._enqueue_children(dst, lease, table, target, on_page):
                return True
            queue = resource_ledger.queue(dst, p.name, stream.target)
        if not queue:
            raise CopyFailed(f"Stream '{stream.target}': no resources are queued for it.")
        shape = RowShape(stream.target, columns)
        for i, res in enumerate(queue):
            if res.status == "done":
                continue
            if self.stop.is_set():
                return False
            with contextlib.closing(self._pages(src, stream, shape, res)) as pages:
                if not copy_resource(
                    dst,
                    lease,
                    target,
                    res.position,
                    res.resource,
                    pages,
                    self.stop,
                    on_page,
                    last=i == len(queue) - 1,
                ):
                    return False
        return True

    def _enqueue_children(
        self,
        dst: Any,
        lease: ledger.Lease,
        table: SourceTable,
        target: Target,
        on_page: Callable[[BatchDone], None],
    ) -> bool:
        """Queue one resource per parent record (read back from the destination, where the
        parent's rows are committed). False when there are none: the stream is done."""
        from milepost.connectors.http import expand

        stream = table.stream
        fields = endpoint_fields(str(stream.endpoint))
        cols = ", ".join(dst.quote(f) for f in fields)
        with dst.transaction():
            rows = dst.query(
                f"SELECT DISTINCT {cols} FROM {dst.quote(str(stream.parent))} ORDER BY {cols}"
            )
            resources = [
                expand(str(stream.endpoint), dict(zip(fields, row, strict=True)))
                for row in rows
                if None not in row
            ]
            resource_ledger.enqueue(dst, lease.pipeline, stream.target, resources, lease)
        crash_point("pages.after_enqueue")
        self.emit(
            Event(
                "message",
                stream=stream.target,
                text=f"{stream.target}: {len(resources):,} resource(s), one per record of "
                f"{stream.parent}",
                data={"resources": len(resources)},
            )
        )
        if not resources:
            finish_empty(dst, lease, target, on_page)
        return bool(resources)

    def _pages(
        self, src: Any, stream: StreamConfig, shape: RowShape, res: resource_ledger.ResourceRow
    ) -> Iterator[Page]:
        incremental = stream.mode == "incremental"
        if stream.kind == "python":
            from milepost.python_source import read_pages, resolve

            return read_pages(resolve(stream), shape, res.state, res.high_water, incremental)
        from milepost.connectors.http import HttpResource
        from milepost.connectors.http import read_pages as read_http
        from milepost.page_cursor import CursorTracker

        p = self.pipeline
        client = src.client(p.source, p.retry, self.stop, self._rate_limited)
        resource = HttpResource(
            client,
            stream.target,
            res.resource,
            dict(stream.params),
            stream.records,
            stream.paginate,
        )
        tracker = None
        if incremental:
            kind = shape.types[(stream.cursor or [""])[0]]
            tracker = CursorTracker(stream, kind, res.high_water)
        return read_http(resource, shape, res.state, stream.since_param, tracker)

    def _rate_limited(self, text: str) -> None:
        self.emit(Event("message", text=f"API rate limit: {text}"))


# --- status and verification ---------------------------------------------------------------


def status_detail(dst: Any, pipeline: str) -> dict[str, dict[str, Any]]:
    """Per page stream: resources queued and done, pages, and the high water."""
    return resource_ledger.summary(dst, pipeline)


def skipped_by_verify(pipeline: Pipeline) -> list[str]:
    """The streams verification cannot compare: their source cannot be read again alike."""
    return [s.target for s in pipeline.streams if is_page(s)]
