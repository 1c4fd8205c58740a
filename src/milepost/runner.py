"""A run, phase by phase: preflight, lease, schema, copy (parallel chunks), verify, finalize.

The runner decides nothing about resuming itself (`recovery.decide` does) and moves
no rows itself (`copier.copy_chunk` does). It owns the order of phases, the workers,
the heartbeat, retrying what a passing fault broke, and stopping cleanly when asked.

Retry happens at two levels. A worker that loses a connection reconnects, reads its
chunk's watermark back from the ledger (the truth, even when the connection died
during COMMIT) and carries on from there: a dropped connection costs the batch in
flight and the backoff wait. Anything else that fails transiently (the schema phase,
finalize, a phase change) re-enters the run, which resumes from the ledger.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from milepost import backup, connectors, ledger, page_streams, recovery, schema, watermarks
from milepost.alerts import send_alert
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.checkpoints.model import Kind
from milepost.checkpoints.triggers import RunCheckpoints
from milepost.config import Pipeline
from milepost.copier import BatchDone, copy_chunk
from milepost.crash import crash_point
from milepost.errors import (
    LeaseLost,
    MilepostError,
    Paused,
    RetriesExhausted,
)
from milepost.events import Event, Listener, ignore
from milepost.heartbeat import Heartbeat
from milepost.plan import foreign_key_order, record_plans
from milepost.preflight import preflight
from milepost.resume_checks import check_resume
from milepost.retry import RetryPolicy
from milepost.transfer import WorkerConnections
from milepost.verify_phase import resumed_streams, verify_phase


@dataclass
class RunResult:
    run_id: str
    status: str
    rows_written: int
    resumed: bool


class Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        fresh: bool = False,
        on_event: Listener = ignore,
        origin: str | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.fresh = fresh
        self.origin = origin  # the pipeline file, to tell an operator how to resume
        self.stop = threading.Event()
        self.stop_reason = "stopped on request"
        self.retries = 0
        self.emit = self._counting_retries(on_event)
        self.retry = RetryPolicy(pipeline.retry, self.stop, self.emit)
        self.keeper = CheckpointKeeper(pipeline, self.emit)
        self.checkpoints = RunCheckpoints(
            pipeline, self.keeper, self.emit, lambda: (self.retries, len(self._errors))
        )
        self._errors: list[BaseException] = []
        self._wrote = False
        self._lock = threading.Lock()
        self._rows_done: dict[str, int] = {}
        self._rows_total: dict[str, int | None] = {}
        self._lease: ledger.Lease | None = None  # held across retries of the whole run
        self._resumed: set[str] = set()  # streams whose copy was interrupted and continued
        self._run_id = ""

    def _lease_lost(self, exc: LeaseLost) -> None:
        with self._lock:
            self._errors.append(exc)
        self.stop.set()

    def _counting_retries(self, listener: Listener) -> Listener:
        def emit(event: Event) -> None:
            if event.kind == "retry":
                self.retries += 1
            listener(event)

        return emit

    def request_stop(self, reason: str = "stopped on request", *, announce: bool = True) -> None:
        """Finish the batches in flight, record them, and stop (SIGINT/SIGTERM, pause).

        A signal handler passes `announce=False` and says so itself: emitting from inside
        a handler could wait forever on a lock the interrupted code holds."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()
            if announce:
                self.emit(Event("message", text=f"{reason}: stopping after the batches in flight"))

    # --- the run ------------------------------------------------------------------

    def run(self) -> RunResult:
        p = self.pipeline
        new_file = connectors.new_sqlite_file(p.destination_url())
        try:
            # A failure before the lease is held (a wrong URL, a refused preflight) is the
            # operator's to fix and is reported at once; after it, a passing fault is retried.
            return self.retry.call(
                self._attempt,
                what=f"Pipeline '{p.name}'",
                progress=lambda: sum(self._rows_done.values()),
                retry_if=lambda exc: self._lease is not None,
            )
        except (RetriesExhausted, Paused) as exc:
            self._let_go(exc)
            raise
        finally:
            if new_file is not None and not self._wrote:
                # Refused before writing: leave no empty database file behind either.
                connectors.remove_sqlite_file(new_file)

    def _attempt(self) -> RunResult:
        p = self.pipeline
        src = connectors.connect(p.source_url(), "source")
        dst = None
        try:
            dst = connectors.connect(p.destination_url(), "destination")
            return self._run(src, dst)
        finally:
            src.close()
            if dst is not None:
                dst.close()

    def _let_go(self, exc: MilepostError) -> None:
        """After giving up on a passing fault (or a pause during its backoff): record
        `paused` if the destination answers, release the lease, and raise the alarm."""
        if self._lease is not None:
            with contextlib.suppress(Exception):
                dst = connectors.connect(self.pipeline.destination_url(), "destination")
                try:
                    ledger.release(dst, self._lease, "paused", str(exc))
                finally:
                    dst.close()
            self._lease = None
        if isinstance(exc, RetriesExhausted):
            send_alert(self.pipeline, self._run_id, exc, self.origin, self.emit)

    def _run(self, src: Any, dst: Any) -> RunResult:
        p = self.pipeline
        fingerprint = p.fingerprint()
        tables = foreign_key_order([schema.inspect_source(src, s) for s in p.streams])
        plans = schema.inspect_destination(src, dst, tables)
        recorded, copied = None, set()
        if ledger.tables_exist(dst):
            ledger.ensure_tables(dst)  # a ledger from an older milepost gains its new columns
            recorded = ledger.read_run(dst, p.name)
            copied = set(watermarks.read(dst, p.name))
        preflight(
            p.name,
            recovery.decide(recorded, fingerprint, fresh=self.fresh, incremental=p.incremental),
            plans,
            self.fresh,
            copied,
        )
        page_streams.probe(p, src, self.stop, recorded, self.fresh)  # an HTTP source's URLs
        self.keeper.open()  # a missing key or a bad store is bad input: before any write

        self._wrote = True
        ledger.ensure_tables(dst)
        lease, before, takeover = ledger.acquire(dst, p.name, fingerprint, ours=self._lease)
        self._lease = lease
        heartbeat = Heartbeat(
            p,
            lease,
            on_pause=lambda: self.request_stop("paused by `milepost pause`"),
            on_checkpoint_request=self.checkpoints.request_manual,
            on_lease_lost=self._lease_lost,
        )
        heartbeat.start()
        self.checkpoints.start(lease)
        status, message, keep_lease = "failed", None, False
        try:
            if takeover:
                self.emit(Event("message", text=f"Pipeline '{p.name}': {takeover}."))
            decision = recovery.decide(
                before, fingerprint, fresh=self.fresh, incremental=p.incremental
            )
            preflight(p.name, decision, plans, self.fresh, copied)
            if decision.action == "done":
                status = "done"
                self.emit(Event("finished", text=decision.reason))
                return RunResult(before.run_id if before else "", "done", 0, False)
            resumed = decision.action == "resume"
            run_id = before.run_id if resumed and before else uuid.uuid4().hex
            self._run_id = run_id
            self.emit(
                Event("run", text=decision.reason, data={"run_id": run_id, "resumed": resumed})
            )
            phase = decision.phase if resumed else "schema"
            if resumed:
                self._resumed |= resumed_streams(dst, p.name)
            if phase == "schema":
                self._schema_phase(src, dst, lease, run_id, fingerprint, plans)
                # Emptied once; a retry of this run resumes what it has copied since.
                self.fresh = False
                self.checkpoints.at(dst, "phase", "schema phase done")
                phase = "copy"
            else:
                with dst.transaction():
                    ledger.set_state(dst, lease, status="running")
                if phase == "copy" and before is not None:
                    check_resume(p, src, dst, before, plans, self.keeper, self.emit)
            if phase == "copy":
                self._copy_phase(dst, lease, plans)
                if self.stop.is_set() or self._errors:
                    status, message = self._stopped_status()
                    self._raise_stopped()
                with dst.transaction():
                    ledger.set_state(dst, lease, phase="verify")
                self.checkpoints.at(dst, "phase", "copy phase done")
                phase = "verify"
            if phase == "verify":
                self._verify_phase(src, dst, lease, [plan.source for plan in plans])
                with dst.transaction():
                    ledger.set_state(dst, lease, phase="finalize")
                self.checkpoints.at(dst, "phase", "verify phase done")
                phase = "finalize"
            self.emit(Event("phase", text="finalize"))
            added = schema.add_foreign_keys(dst, plans)
            if added:
                self.emit(Event("message", text=f"added {added} foreign key constraint(s)"))
            crash_point("finalize.before_done")
            with dst.transaction():
                if dst.family == "postgresql":
                    # Batches commit asynchronously (connectors/postgres.py), so a server crash
                    # may take the last of them back. This commit waits for the WAL to reach
                    # disk, and with it every batch before it: "done" is never reported of a
                    # copy that a crash could still undo.
                    dst.execute("SET LOCAL synchronous_commit = on")
                watermarks.record_run(
                    dst, p.name, run_id, list(p.streams), ledger.read_chunks(dst, p.name)
                )
                ledger.set_state(dst, lease, phase="done", status="done")
            status = "done"
            self._lease = None
            self.checkpoints.finish()  # one still queued must not outlive the clearing
            self._after_success(dst, run_id)
            total = sum(self._rows_done.values())
            self.emit(Event("finished", rows_done=total, text=f"run {run_id} complete"))
            return RunResult(run_id, "done", total, resumed)
        except (Paused, RetriesExhausted) as exc:
            status, message = "paused", str(exc)
            kind: Kind = "pause" if isinstance(exc, Paused) else "failure"
            self.checkpoints.at(dst, kind, exc.message)
            raise
        except BaseException as exc:
            message = str(exc) or type(exc).__name__
            # Coming back for it: the retry keeps the lease, so no one else starts meanwhile.
            keep_lease = connectors.transient_reason(exc) is not None
            if not keep_lease and self._run_id and not isinstance(exc, LeaseLost):
                # (A runner that lost its lease must not touch the new holder's checkpoints.)
                self.checkpoints.at(dst, "failure", _first_line(message))
            raise
        finally:
            heartbeat.finish()
            self.checkpoints.finish()
            if not keep_lease:
                self._lease = None
                # The destination may be what failed; the lease then lapses by itself.
                with contextlib.suppress(Exception):
                    ledger.release(dst, lease, status, message)

    def _verify_phase(
        self, src: Any, dst: Any, lease: ledger.Lease, tables: list[schema.SourceTable]
    ) -> None:
        try:
            verify_phase(
                self.pipeline,
                src,
                dst,
                lease,
                self._resumed,
                self.emit,
                self.stop,
                self.origin,
                tables,
            )
        except InterruptedError:
            self._raise_stopped()

    def _before_risky(self, dst: Any, run_id: str, plans: list[schema.DestinationPlan]) -> None:
        """Emptying tables that hold rows is undoable: back them up and checkpoint first.
        If either fails, nothing is emptied (unless `before_risky: false` says not to)."""
        if not self.pipeline.checkpoints.before_risky:
            return
        names = [plan.table.name for plan in plans]
        saved = backup.back_up(dst, names)
        taken = self.checkpoints.at(
            dst, "before_risky", f"before emptying {', '.join(names)}", run_id=run_id
        )
        assert taken is not None
        backup.record(dst, self.pipeline.name, taken.id, saved)
        for b in saved:
            self.emit(
                Event(
                    "message",
                    text=f"backed up {b.table} ({b.rows:,} rows) as {b.backup}; "
                    f"`milepost rollback --to {taken.id}` puts it back",
                )
            )

    def _after_success(self, dst: Any, run_id: str) -> None:
        """A completed run keeps its checkpoints (and so its backups) only when asked to
        (`keep_after_success`); otherwise both go, and it can no longer be rolled back."""
        if self.pipeline.checkpoints.keep_after_success:
            self.checkpoints.at(dst, "phase", "run complete")
            return
        try:
            removed = self.keeper.clear(run_id)
            dropped = backup.drop_for(dst, self.pipeline.name, removed)
        except Exception as exc:
            self.emit(Event("message", text=f"checkpoints of run {run_id} not removed: {exc}"))
            return
        if removed or dropped:
            self.emit(
                Event(
                    "message",
                    text=f"removed the {len(removed)} checkpoint(s) and {dropped} backup(s) "
                    f"of run {run_id} (keep_after_success: false)",
                )
            )

    def _schema_phase(
        self,
        src: Any,
        dst: Any,
        lease: ledger.Lease,
        run_id: str,
        fingerprint: str,
        plans: list[schema.DestinationPlan],
    ) -> None:
        p = self.pipeline
        self.emit(Event("phase", text="schema"))
        # `--fresh` forgets the high waters in the transaction that starts this run, after
        # the backup: a run failing before it leaves the last completed run's standing.
        marks = {} if self.fresh else watermarks.read(dst, p.name)
        to_empty = [
            plan
            for plan in plans
            if plan.rows_present
            and (self.fresh or plan.source.stream.write == "replace")
            and not watermarks.skipped(plan.source.stream, marks)
        ]
        if to_empty:
            self._before_risky(dst, run_id, to_empty)
        with dst.transaction():
            if self.fresh:
                watermarks.forget(dst, p.name)
            ledger.set_state(
                dst,
                lease,
                phase="schema",
                status="running",
                run_id=run_id,
                fingerprint=fingerprint,
                message="",
            )
            ledger.reset_plan(dst, p.name)
        for plan in to_empty:
            with dst.transaction():
                dst.execute(f"DELETE FROM {dst.quote(plan.table.name)}")
            why = "--fresh" if self.fresh else "write: replace"
            self.emit(Event("message", text=f"emptied {plan.table.name} ({why})"))
        created = schema.create_tables(dst, plans)
        for name in created:
            self.emit(Event("message", text=f"created table {name}"))
        crash_point("schema.after_create")
        with dst.transaction():
            record_plans(src, dst, p, plans, marks)
            ledger.set_state(dst, lease, phase="copy")

    # --- the copy phase: chunks over workers ----------------------------------------

    def _copy_phase(
        self, dst: Any, lease: ledger.Lease, plans: list[schema.DestinationPlan]
    ) -> None:
        p = self.pipeline
        self.emit(Event("phase", text="copy"))
        by_target = {plan.source.stream.target: plan.source for plan in plans}
        chunks = ledger.read_chunks(dst, p.name)
        self._pages = page_streams.PageCopier(p, self.retry, self.emit, self._on_batch, chunks)
        estimates = {s.stream: s.rows_estimate for s in ledger.read_streams(dst, p.name)}
        order = [plan.source.stream.target for plan in plans]
        for stream in order:
            mine = [c for c in chunks if c.stream == stream]
            done = sum(c.rows_written for c in mine)
            self._rows_done[stream] = done
            self._rows_total[stream] = estimates.get(stream)
            self.emit(
                Event(
                    "stream",
                    stream=stream,
                    rows_done=done,
                    rows_total=estimates.get(stream),
                    data={
                        "chunks": len(mine),
                        "chunks_done": sum(c.status == "done" for c in mine),
                    },
                )
            )
        pending = [
            c for stream in order for c in chunks if c.stream == stream and c.status != "done"
        ]
        work: queue.Queue[ledger.ChunkRow] = queue.Queue()
        for c in pending:
            work.put(c)
        workers = min(p.workers, max(1, len(pending)))
        if dst.family == "sqlite" and workers > 1:
            self.emit(Event("message", text="SQLite takes one writer at a time: using 1 worker"))
            workers = 1
        threads = [
            threading.Thread(
                target=self._worker,
                args=(work, lease, by_target),
                name=f"milepost-worker-{i}",
                daemon=True,
            )
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for stream in order:
            if not self.stop.is_set() and not self._errors:
                self.emit(Event("stream_done", stream=stream, rows_done=self._rows_done[stream]))

    def _worker(
        self,
        work: queue.Queue[ledger.ChunkRow],
        lease: ledger.Lease,
        tables: dict[str, schema.SourceTable],
    ) -> None:
        conns = WorkerConnections(self.pipeline)
        try:
            while not self.stop.is_set():
                try:
                    chunk = work.get_nowait()
                except queue.Empty:
                    return
                if page_streams.is_page(tables[chunk.stream].stream):  # HTTP, Python
                    self._pages.copy(conns, chunk, lease, tables[chunk.stream])
                else:
                    self._copy_with_retry(conns, chunk, lease, tables[chunk.stream])
        except Paused:
            return  # asked to stop while waiting to retry: nothing was lost
        except BaseException as exc:
            with self._lock:
                self._errors.append(exc)
            self.stop.set()
        finally:
            conns.close()

    def _copy_with_retry(
        self,
        conns: WorkerConnections,
        chunk: ledger.ChunkRow,
        lease: ledger.Lease,
        table: schema.SourceTable,
    ) -> None:
        """Copy one chunk; after a lost connection, reconnect and go on from its watermark."""
        p = self.pipeline
        known = {"rows": chunk.rows_written, "batches": chunk.batches}
        current = [chunk]

        def on_batch(batch: BatchDone) -> None:
            known["rows"] += batch.rows
            known["batches"] += 1
            self._on_batch(batch)

        def attempt() -> bool:
            # Everything here may meet a dead connection, reconnecting and choosing the
            # transfer path (which asks both servers) included: any failure marks the
            # connections broken, or the next attempt would reuse a closed one, and the next.
            try:
                if conns.broken:
                    conns.close()
                    current[0] = self._reread(conns, chunk, known)
                src, dst, path = conns.open(table)
                return copy_chunk(
                    src,
                    dst,
                    path,
                    lease,
                    table,
                    current[0],
                    p.batch_size,
                    self.stop,
                    on_batch,
                    p.on_row_error,
                )
            except BaseException:
                conns.broken = True
                raise

        self.retry.call(
            attempt,
            what=f"Stream '{chunk.stream}', chunk {chunk.index}",
            progress=lambda: known["batches"],
            stream=chunk.stream,
        )

    def _reread(
        self, conns: WorkerConnections, chunk: ledger.ChunkRow, known: dict[str, int]
    ) -> ledger.ChunkRow:
        """The chunk as the ledger has it. A batch whose COMMIT was sent just as the
        connection died may have committed after all: the ledger says, and it is counted."""
        _, dst, _ = conns.open(None)
        now = ledger.read_chunk(dst, self.pipeline.name, chunk.stream, chunk.index)
        with self._lock:
            self._resumed.add(chunk.stream)
        if now.batches > known["batches"]:
            extra = now.rows_written - known["rows"]
            known.update(rows=now.rows_written, batches=now.batches)
            self._on_batch(
                BatchDone(chunk.stream, chunk.index, extra, now.watermark, now.status == "done")
            )
        elif now.batches < known["batches"]:
            # A destination that crashed can lose commits it had acknowledged (PostgreSQL
            # batches commit asynchronously): their rows went with their ledger rows, so they
            # are simply copied again, and the count of rows done steps back to match.
            with self._lock:
                self._rows_done[chunk.stream] -= known["rows"] - now.rows_written
            known.update(rows=now.rows_written, batches=now.batches)
        self.emit(
            Event(
                "message",
                stream=chunk.stream,
                text=f"{chunk.stream}: chunk {chunk.index} reconnected; continuing after "
                f"{now.rows_written:,} committed rows",
                data={"chunk": chunk.index, "rows_committed": now.rows_written},
            )
        )
        return now

    def _on_batch(self, batch: BatchDone) -> None:
        with self._lock:
            self._rows_done[batch.stream] += batch.rows
            done = self._rows_done[batch.stream]
        self.checkpoints.after_batch(batch.rows)
        data: dict[str, Any] = {"chunk": batch.chunk, "chunk_done": batch.chunk_done}
        if batch.rejected:
            data["rejected"] = batch.rejected
        self.emit(
            Event(
                "batch",
                stream=batch.stream,
                rows=batch.rows,
                rows_done=done,
                rows_total=self._rows_total.get(batch.stream),
                data=data,
            )
        )

    def _stopped_status(self) -> tuple[str, str | None]:
        if self._errors:
            first = self._errors[0]
            return ("paused" if isinstance(first, RetriesExhausted) else "failed"), str(first)
        return "paused", f"{self.stop_reason} after a committed batch"

    def _raise_stopped(self) -> None:
        if self._errors:
            err = self._errors[0]
            if isinstance(err, MilepostError):
                raise err
            raise MilepostError(f"Pipeline '{self.pipeline.name}': {err}") from err
        raise Paused(
            f"Pipeline '{self.pipeline.name}' paused after its last committed batch "
            f"({self.stop_reason}).",
            hint="Run the same command again to resume; --workers and --batch-size may change.",
        )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:500] if text.strip() else ""


def run(pipeline: Pipeline, *, fresh: bool = False, on_event: Listener = ignore) -> RunResult:
    """Run a pipeline to completion (the Python API)."""
    return Runner(pipeline, fresh=fresh, on_event=on_event).run()
