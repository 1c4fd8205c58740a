"""A stateful property: whatever order of runs, kills, pauses, retuned reruns and source inserts,
the destination is always a prefix-consistent copy of the source, and a finished run holds
exactly the rows it owed.

Hypothesis drives a real migration (a few hundred rows; PostgreSQL source, and in the torture
variant MariaDB too, into a PostgreSQL destination table without a primary key, so a row written
twice stays twice) through the real CLI, one child process per step:

- `run_to_end`: `milepost run` exits 0 (once done, `start_over` checks that a plain run says it
  already completed and writes nothing).
- `run_and_kill`: SIGKILL after the run's k-th committed batch (plus 0-3 ms); sometimes with
  other --workers/--batch-size.
- `run_and_pause`: the run is held at a drawn row R (`gates.RowGate`), `milepost pause` asks
  from another process after the run's k-th batch (k at most the batches certain to commit
  before R's), and the run must exit 3, the pause 0 saying it stopped, the ledger `paused`.
  Either R's batch waits inside its transaction and is let through only once the runner has
  seen the request ("between batches": it must then stop after it), or R's batch fails with a
  serialization failure and the run waits in a long retry backoff, which the pause must end.
  Without the hold a small copy is over before the request lands (the pause process alone takes
  0.7 s to start, and the runner reads requests once a second).
- `resume_with_other_volume`: a run with other --workers/--batch-size exits 0.
- `insert_source_rows`: new source rows between runs, above the current maximum id and in
  unused ids inside the range, often next to a chunk's watermark.
- `insert_while_running`: the same while a runner copies (after its k-th batch); the run then
  finishes, or is killed a few batches later.
- `start_over`: once done, `run --fresh` (to the end, or killed after its k-th batch), so an
  example goes on after its first completed copy.

The invariant, checked after every step (no runner is alive then; after a SIGKILL the test
first waits until the dead runner's sessions have left the server, so a COMMIT it sent just
before dying is decided):

Let a chunk's *committed range* be (lo, watermark] as `_milepost_chunks` records it (empty while
its watermark is NULL). Then

1. the destination's rows, as a multiset, are exactly the source rows whose id lies in some
   committed range, except the rows the model knows were *skipped by design* (below);
   so nothing is missing behind a watermark, nothing is doubled, nothing lies outside the
   committed ranges, nothing is changed;
2. each chunk's `rows_written` is the number of destination rows in its committed range;
3. the plan never changes once recorded (only `--fresh` plans anew), covers every id (the
   first chunk is open below, the last open above, each starts where the previous ends), and
   watermarks and row counts never go back;
4. every row owed to a chunk that says `done` is in the destination; once the run says `done`,
   the destination holds exactly the source rows minus those skipped by design. A run that
   reaches its verify phase with such a row missing stops there with exit 4 (status `failed`),
   and the destination then really differs from the source.

What migrate mode promises about rows inserted during a run (a run being the whole resumable
migration, across processes) decides "skipped by design". The model classifies a row inserted
between runner processes from the ledger at that moment (no runner alive: the ledger is exact):

- no plan recorded yet: owed (the plan is made from the source as it is when a run starts;
  its first chunk is unbounded below and its last unbounded above, so every id is in it);
- the id falls in a chunk that is done, or at or below its chunk's watermark: skipped by design.
  The chunk has moved past it and never goes back: migrate mode copies once, and a chunk's
  final batch ends at the largest id of its range present when that batch was planned;
- otherwise (above its chunk's watermark, in a chunk not done): owed; the chunk reads on from
  its watermark in the source as it is then, so it copies the row when it gets there.

A row inserted while a runner copies is the same, except in a zone just past each chunk's
watermark (read right after the insert) that batches planned before the insert may cover: at
most two per chunk, the one being written and the one read ahead, each of the next `batch` rows
present before. A row in that zone may be copied or passed over (it counts as skipped if it
is behind the watermark and absent); beyond it the row is owed like any other.

Note that the last chunk is open-ended (hi = NULL): a row inserted above the maximum id seen
at planning time is still copied by the same run if the last chunk has not finished, and
skipped if it has. The plan fixes chunk boundaries, not a snapshot of the rows.

Replaying: the `make test` variant is derandomized (the same examples every time; a failure
prints its steps). The torture variant prints its seed; MILEPOST_STATEFUL_SEED=N replays the
same steps. Kill timing is real time, so a replay repeats the steps, not always the instant.
Shrinking is off (each step costs real processes): MILEPOST_STATEFUL_SHRINK=1 turns it on.
MILEPOST_STATEFUL_EXAMPLES and MILEPOST_STATEFUL_STEPS override the torture budget.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, Phase, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conftest import Database, mysql_connection
from faults import (
    COLUMNS,
    NAMES,
    NOTES,
    TABLE,
    Cli,
    create_destination,
    create_source,
    database,
    make_rows,
    table_rows,
    write_pipeline,
)
from gates import RowGate, wait_for_pause_request, wait_until_pause_seen, wait_until_quiet
from milepost.keyset import decode_key

PIPELINE = "stateful"
# A long backoff for the `fail` hold: the run waits in it until the pause ends it.
LONG_BACKOFF = {"max_attempts": 50, "initial_delay_s": 600.0, "max_delay_s": 600.0}
STEP_TIMEOUT_S = 120.0  # a child that hangs is killed, and the test fails naming it
# Every step starts real processes: slow is the point, not a problem of the strategies.
SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# What the examples did, summed over a test (printed at its end, for the record).
TALLY: Counter[str] = Counter()


@dataclass(frozen=True)
class Chunk:
    """One `_milepost_chunks` row of the single-stream, integer-cursor pipeline."""

    index: int
    lo: int | None
    hi: int | None
    watermark: int | None
    rows_written: int
    status: str

    def holds(self, i: int) -> bool:
        return (self.lo is None or i > self.lo) and (self.hi is None or i <= self.hi)

    def committed(self, i: int) -> bool:
        """Whether `i` is in (lo, watermark]: what the ledger says this chunk has written."""
        return (
            self.watermark is not None and (self.lo is None or i > self.lo) and i <= self.watermark
        )


def _first(key: tuple[Any, ...] | None) -> int | None:
    return None if key is None else int(key[0])


def _new_row(i: int) -> tuple[Any, ...]:
    """A source row for a new id, its values derived from the id (NULLs, non-ASCII, escapes)."""
    rng = random.Random(i)
    created = dt.datetime(2020, 1, 1) + dt.timedelta(seconds=rng.randint(0, 10**8))
    return (
        i,
        f"{rng.choice(NAMES)} new {i}",
        None if i % 7 == 0 else rng.randint(-(10**9), 10**9),
        None if i % 5 == 0 else Decimal(rng.randint(-(10**8), 10**8)).scaleb(-2),
        None if i % 11 == 0 else created.replace(microsecond=rng.randint(0, 999_999)),
        rng.choice(NOTES),
    )


def _insert(db: Database, rows: list[tuple[Any, ...]]) -> None:
    marks = ", ".join(["%s"] * len(COLUMNS))
    statement = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({marks})"
    if db.family == "postgresql":
        with psycopg.connect(db.url) as conn, conn.cursor() as cur:
            cur.executemany(statement, rows)
    else:
        conn = mysql_connection(db.url, autocommit=False)
        try:
            with conn.cursor() as cur:
                cur.executemany(statement, rows)
            conn.commit()
        finally:
            conn.close()


class Migration(RuleBasedStateMachine):
    """One migration, PIPELINE, from a fresh source into a fresh destination per example; the
    rules and the invariant are described in the module docstring."""

    def __init__(self, source_family: str, tmp_root: Path) -> None:
        super().__init__()
        self.source_family = source_family
        self.dir = Path(tempfile.mkdtemp(prefix="stateful-", dir=tmp_root))
        self.stack = contextlib.ExitStack()
        self.gate: RowGate | None = None
        # The model: rows inserted behind a chunk's progress, which no run will copy.
        self.skipped: set[int] = set()
        self.plan: list[tuple[int | None, int | None]] | None = None
        self.seen: dict[int, Chunk] = {}
        self.done = False
        self.pending: list[int] = []  # rows owed and not yet written, after the last step

    # --- setting up and tearing down ------------------------------------------------------

    @initialize(
        rows=st.integers(200, 450),
        batch=st.sampled_from([4, 5, 6, 8, 25]),
        workers=st.integers(1, 3),
        data_seed=st.integers(0, 2**31),
    )
    def create(self, rows: int, batch: int, workers: int, data_seed: int) -> None:
        """The source table and an empty destination table. Small batches make several chunks
        (a chunk is about 20 batches of the first run), large ones a single chunk."""
        self.source = self.stack.enter_context(database(self.source_family, self.dir, "src"))
        self.dest = self.stack.enter_context(database("postgresql", self.dir, "dst"))
        create_source(self.source, make_rows(rows, data_seed))
        create_destination(self.dest)
        self.gate = RowGate(self.dest)
        self.batch = batch
        TALLY["examples"] += 1
        self.pipeline = write_pipeline(
            self.dir, PIPELINE, self.source, self.dest, batch_size=batch, workers=workers
        )
        doc = yaml.safe_load(self.pipeline.read_text(encoding="utf-8"))
        doc["retry"] = LONG_BACKOFF
        self.pipeline.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        self.prefix_consistent()

    def teardown(self) -> None:
        if self.gate is not None:
            self.gate.close()
        self.stack.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- what the databases say -----------------------------------------------------------

    def chunks(self) -> list[Chunk]:
        if not self.dest.sql("SELECT to_regclass('_milepost_chunks') IS NOT NULL")[0][0]:
            return []
        rows = self.dest.sql(
            "SELECT chunk, lo, hi, watermark, rows_written, status FROM _milepost_chunks "
            "WHERE pipeline = %s ORDER BY chunk",
            (PIPELINE,),
        )
        return [
            Chunk(
                int(c),
                _first(decode_key(lo)),
                _first(decode_key(hi)),
                _first(decode_key(wm)),
                int(n),
                st_,
            )
            for c, lo, hi, wm, n, st_ in rows
        ]

    def run_row(self) -> tuple[str, str | None] | None:
        """(status, lease token) of the pipeline's run, or None before the first run."""
        if not self.dest.sql("SELECT to_regclass('_milepost_runs') IS NOT NULL")[0][0]:
            return None
        rows = self.dest.sql(
            "SELECT status, lease_token FROM _milepost_runs WHERE pipeline = %s", (PIPELINE,)
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def ledger_rows(self) -> int:
        return sum(c.rows_written for c in self.chunks())

    # --- the rules --------------------------------------------------------------------------

    @precondition(lambda self: not self.done)
    @rule()
    def run_to_end(self) -> None:
        self.finish(self.start(), {0})

    @precondition(lambda self: not self.done)
    @rule(data=st.data())
    def run_and_kill(self, data: st.DataObject) -> None:
        volume = data.draw(st.none() | st.tuples(st.integers(1, 3), st.integers(3, 50)))
        batch = self.batch if volume is None else volume[1]
        k = data.draw(st.integers(1, len(self.pending) // batch + 1), label="kill after batch")
        self.kill_after(self.start(*self.volume_args(volume)), k, data)

    @precondition(lambda self: not self.done and self.pending)
    @rule(data=st.data())
    def run_and_pause(self, data: st.DataObject) -> None:
        assert self.gate is not None
        how = data.draw(st.sampled_from(["between batches", "in a backoff"]), label="pause")
        k, held = self.draw_hold(data, self.batch)
        TALLY[f"pauses {how}"] += 1
        self.gate.hold([held], "block" if how == "between batches" else "fail")
        run = self.start()
        pause: Cli | None = None
        try:
            got = run.wait_for("batch", k) if k else run.wait_for("run")
            assert got is not None, f"no batch {k} before the held row {held}"
            if how == "in a backoff":
                assert run.wait_for("retry") is not None, f"row {held} was not held back"
            pause = Cli("pause", str(self.pipeline), cwd=self.dir, timeout_s=STEP_TIMEOUT_S)
            if how == "between batches":
                wait_for_pause_request(self.dest, PIPELINE, pause.proc)
                wait_until_pause_seen(self.dest, lambda: run.proc.poll() is None)
        except BaseException:
            for cli in (run, pause):
                if cli is not None:
                    print(cli.describe(cli.kill()))
            raise
        finally:
            self.gate.release()
        assert pause is not None
        prc = pause.finish()
        said = " ".join(e.get("text", "") for e in pause.events)
        assert prc == 0 and "stopped (status: paused)" in said, pause.describe(prc)
        self.finish(run, {3})

    @precondition(lambda self: not self.done)
    @rule(workers=st.integers(1, 4), batch=st.integers(3, 60))
    def resume_with_other_volume(self, workers: int, batch: int) -> None:
        self.finish(self.start(*self.volume_args((workers, batch))), {0})

    @rule(data=st.data())
    def insert_source_rows(self, data: st.DataObject) -> None:
        """New rows while no runner is alive: the ledger says exactly where each chunk is."""
        new = self.draw_new_ids(data, self.chunks())
        if not new:
            return
        _insert(self.source, [_new_row(i) for i in new])
        chunks = self.chunks()
        for i in new:
            chunk = next((c for c in chunks if c.holds(i)), None)
            owed = chunk is None or (
                chunk.status != "done" and (chunk.watermark is None or i > chunk.watermark)
            )
            self.classify(i, owed, "between runs", chunk)

    @precondition(lambda self: not self.done and self.pending)
    @rule(data=st.data())
    def insert_while_running(self, data: st.DataObject) -> None:
        """New rows while a runner copies; then it finishes, or is killed a few batches later.

        The run is held at a drawn row R (as in run_and_pause) until the rows are in, so it is
        still copying when they land, and the insert comes after its k-th batch. A row
        inserted now may be passed over by a batch planned before it was committed: at most
        two per chunk are (the one being written and the one read ahead), each covering the
        next `batch` rows present before the insert. So after the watermark read just after
        the insert, the next 2 * `batch` earlier rows of each chunk are a zone where a new row
        may be copied or passed over (which one happened is read from the destination
        afterwards); a new row beyond it, in a chunk not done, is owed like any other."""
        assert self.gate is not None
        volume = data.draw(st.none() | st.tuples(st.integers(1, 3), st.integers(3, 50)))
        batch = self.batch if volume is None else volume[1]
        k, held = self.draw_hold(data, batch)
        kill_after = data.draw(st.none() | st.integers(0, 3), label="then kill after batches")
        before = {r[0] for r in table_rows(self.source)}
        self.gate.hold([held], "block")
        run = self.start(*self.volume_args(volume))
        try:
            got = run.wait_for("batch", k) if k else run.wait_for("stream")
            assert got is not None, f"no batch {k} before the held row {held}"
            new = self.draw_new_ids(data, self.chunks())
            if new:
                _insert(self.source, [_new_row(i) for i in new])
            chunks = self.chunks()  # read after the insert committed
        except BaseException:
            print(run.describe(run.kill()))
            raise
        finally:
            self.gate.release()
        if kill_after is not None and run.wait_for("batch", k + 1 + kill_after) is not None:
            run.kill()
        self.finish(run, {0, -signal.SIGKILL} if kill_after is not None else {0})
        zones = {c.index: self.zone(c, before, batch) for c in chunks}
        dest_ids = {r[0] for r in table_rows(self.dest)}
        after = self.chunks()
        for i in new:
            then = next(c for c in chunks if c.holds(i))
            now = next(c for c in after if c.holds(i))
            zone = zones[then.index]
            if then.status == "done" or zone is None or i <= zone:
                # Passed over by a batch planned before the insert, or copied after all.
                owed = i in dest_ids or not (now.committed(i) or now.status == "done")
                self.classify(i, owed, "during a run, in the zone", then)
            else:
                self.classify(i, True, "during a run, beyond the zone", then)

    def draw_hold(self, data: st.DataObject, batch: int) -> tuple[int, int]:
        """A row R the run must still write, and a k: the batches of R's chunk before R's batch
        commit first, so k batch events come for certain (none before a plan exists)."""
        held = data.draw(st.sampled_from(self.pending), label="held row")
        chunk = next((c for c in self.chunks() if c.holds(held)), None)
        ahead = 0 if chunk is None else sum(1 for i in self.pending if chunk.holds(i) and i < held)
        return data.draw(st.integers(0, ahead // batch), label="after batch"), held

    @staticmethod
    def zone(chunk: Chunk, present: set[int], batch: int) -> int | None:
        """The last id of the zone described in insert_while_running (None: the whole rest
        of the chunk)."""
        start = chunk.watermark if chunk.watermark is not None else chunk.lo
        ahead = sorted(i for i in present if chunk.holds(i) and (start is None or i > start))
        return ahead[2 * batch - 1] if len(ahead) >= 2 * batch else None

    def draw_new_ids(self, data: st.DataObject, chunks: list[Chunk]) -> list[int]:
        """Unused ids above the maximum and inside the range, often next to a watermark."""
        ids = {row[0] for row in table_rows(self.source)}
        top = max(ids)
        unused = sorted(set(range(1, top)) - ids)
        marks = [c.watermark for c in chunks if c.watermark is not None]
        near = [i for i in unused if any(abs(i - w) <= 3 for w in marks)]
        new: set[int] = set()
        for _ in range(data.draw(st.integers(0, 3), label="rows above the maximum")):
            new.add(top + data.draw(st.integers(1, 4)))
        for _ in range(data.draw(st.integers(0, 4), label="rows inside the range")):
            pool = (
                near if near and data.draw(st.booleans(), label="next to a watermark") else unused
            )
            if pool:
                new.add(data.draw(st.sampled_from(pool)))
        return sorted(new)

    def classify(self, i: int, owed: bool, when: str, chunk: Chunk | None) -> None:
        if not owed:
            self.skipped.add(i)
        fate = "owed" if owed else "skipped by design"
        TALLY[f"rows inserted {when}: {fate}"] += 1
        note(f"id {i} inserted {when}: {fate} ({chunk})")

    @precondition(lambda self: self.done)
    @rule(data=st.data())
    def start_over(self, data: st.DataObject) -> None:
        """Once done: sometimes `run` first (it must say the run already completed and write
        nothing), then `run --fresh`, to the end or killed after its k-th batch."""
        if data.draw(st.booleans(), label="plain run first"):
            self.finish(self.start(), {0})
        rows = sum(table_rows(self.source).values())
        k = data.draw(st.none() | st.integers(1, rows // self.batch + 2), label="kill after batch")
        run = self.start("--fresh")
        # A kill comes after a batch, so after the fresh plan has replaced the old one.
        self.skipped.clear()
        self.plan = None
        self.seen = {}
        if k is None:
            self.finish(run, {0})
        else:
            self.kill_after(run, k, data)

    # --- running the CLI --------------------------------------------------------------------

    @staticmethod
    def volume_args(volume: tuple[int, int] | None) -> tuple[str, ...]:
        if volume is None:
            return ()
        return ("--workers", str(volume[0]), "--batch-size", str(volume[1]))

    def start(self, *extra: str) -> Cli:
        self.before = self.ledger_rows()
        self.was_done = self.done
        self.had_plan = bool(self.chunks())
        lease = self.run_row()
        self.lease_left = lease is not None and lease[1] is not None
        args = ("run", str(self.pipeline), "--progress", "jsonl", *extra)
        return Cli(*args, cwd=self.dir, timeout_s=STEP_TIMEOUT_S)

    def kill_after(self, run: Cli, k: int, data: st.DataObject) -> None:
        delay_ms = data.draw(st.sampled_from([0, 0, 1, 3]), label="kill delay ms")
        if run.wait_for("batch", k) is not None:
            time.sleep(delay_ms / 1000)  # where the kill lands: fault timing, not synchronisation
            run.kill()
        self.finish(run, {0, -signal.SIGKILL})

    def finish(self, run: Cli, allowed: set[int]) -> None:
        """Reap the run and check what it said against the ledger."""
        finished = run.proc.stdout is None or run.proc.stdout.closed
        rc = run.proc.returncode if finished else run.finish()
        note(f"{' '.join(run.args[2:]) or 'run'}: exit {rc}, {len(run.events)} events")
        TALLY["steps running the CLI"] += 1
        TALLY[
            {
                0: "runs that exited 0",
                3: "runs paused (exit 3)",
                4: "runs stopped by the verify phase (exit 4)",
            }.get(rc, "runs killed")
        ] += 1
        if 0 in allowed:
            # A run that reaches its verify phase compares the whole source: a row skipped by
            # design (inserted behind a watermark) is a difference, and stops it before
            # finalize. The check below makes sure such a row really is missing.
            allowed = allowed | {4}
        assert rc in allowed, run.describe(rc)
        assert "Traceback" not in run.stderr, run.stderr
        wait_until_quiet(self.dest)
        fresh = "--fresh" in run.args
        took_over = [m for m in run.messages() if "took over the lease" in m]
        if self.lease_left:
            assert took_over, f"the run after a kill did not say it took over: {run.events[:4]}"
        else:
            assert not took_over, f"took over a lease nobody held: {took_over}"
        started = [e for e in run.events if e.get("kind") == "run"]
        if self.was_done and not fresh:
            assert not started and rc == 0, f"a completed run ran again: {run.events[:4]}"
            assert any("already completed" in (e.get("text") or "") for e in run.events)
        elif started:
            resumed = started[0]["data"]["resumed"]
            assert resumed == (self.had_plan and not fresh), started[0]
        reported = sum(e.get("rows", 0) for e in run.events if e.get("kind") == "batch")
        written = self.ledger_rows() - (0 if fresh else self.before)
        if rc == -signal.SIGKILL:
            # A batch may commit and die before its event is written; never the other way.
            assert reported <= written, f"reported {reported} rows, the ledger has {written}"
        else:
            assert reported == written, f"reported {reported} rows, the ledger has {written}"
        status = self.run_row()
        if rc == 0:
            assert status == ("done", None), status
        elif rc == 3:
            assert status == ("paused", None), status
        elif rc == 4:
            assert status is not None and status[0] == "failed", status
            source, dest = table_rows(self.source), table_rows(self.dest)
            assert source != dest, "the verify phase stopped a run whose copy is complete"
            assert set(dest) <= set(source), "the verify phase found rows the source lacks"

    # --- the invariant ----------------------------------------------------------------------

    @invariant()
    def prefix_consistent(self) -> None:
        """See the module docstring: the destination is the source restricted to the
        committed ranges, minus the rows skipped by design; the ledger counts agree; the plan
        is stable and complete; watermarks only advance; a done chunk or run lacks nothing."""
        if not hasattr(self, "dest"):
            return
        source, dest = table_rows(self.source), table_rows(self.dest)
        chunks = self.chunks()
        self.check_plan(chunks)

        def committed(i: int) -> bool:
            return any(c.committed(i) for c in chunks)

        want = Counter(
            {r: n for r, n in source.items() if committed(r[0]) and r[0] not in self.skipped}
        )
        if dest != want:
            missing, extra = want - dest, dest - want
            per_id = Counter(r[0] for r in dest.elements())
            raise AssertionError(
                "the destination is not the source restricted to the committed ranges: "
                f"missing ids {sorted(r[0] for r in missing)[:20]}, unexpected ids "
                f"{sorted(r[0] for r in extra)[:20]}, doubled ids "
                f"{sorted(i for i, n in per_id.items() if n > 1)[:20]}; chunks {chunks}"
            )
        for c in chunks:
            inside = sum(n for r, n in dest.items() if c.committed(r[0]))
            assert c.rows_written == inside, f"{c}: {inside} rows in its committed range"
        source_ids = {r[0] for r in source}
        dest_ids = {r[0] for r in dest}
        owed = source_ids - self.skipped
        for c in chunks:
            if c.status == "done":
                lost = sorted(i for i in owed if c.holds(i) and i not in dest_ids)
                assert not lost, f"{c} is done but lacks the owed ids {lost[:20]}"
        status = self.run_row()
        self.done = status is not None and status[0] == "done"
        if self.done:
            assert chunks and all(c.status == "done" for c in chunks), chunks
            assert dest_ids == owed, (
                f"done, but missing {sorted(owed - dest_ids)[:20]}, "
                f"unexpected {sorted(dest_ids - owed)[:20]}"
            )
        self.pending = sorted(owed - dest_ids)

    def check_plan(self, chunks: list[Chunk]) -> None:
        if not chunks:
            assert self.plan is None, f"the plan {self.plan} vanished"
            return
        plan = [(c.lo, c.hi) for c in chunks]
        assert self.plan is None or plan == self.plan, f"the plan changed: {self.plan} -> {plan}"
        if self.plan is None:
            TALLY[f"plans of {len(plan)} chunk(s)"] += 1
        self.plan = plan
        assert plan[0][0] is None and plan[-1][1] is None, f"the plan leaves ids out: {plan}"
        for (_, hi), (lo, _) in itertools.pairwise(plan):
            assert hi == lo, f"the plan's chunks do not meet: {plan}"
        for c in chunks:
            assert c.watermark is None or c.holds(c.watermark), f"watermark outside: {c}"
            before = self.seen.get(c.index)
            if before is not None:
                assert before.watermark is None or (
                    c.watermark is not None and c.watermark >= before.watermark
                ), f"the watermark went back: {before} -> {c}"
                assert c.rows_written >= before.rows_written, f"rows went back: {before} -> {c}"
                assert before.status != "done" or c.status == "done", f"undone: {c}"
            self.seen[c.index] = c


def _run_machine(source_family: str, tmp_path: Path, config: settings, replay: int | None) -> None:
    def factory() -> Migration:
        return Migration(source_family, tmp_path)

    if replay is not None:
        factory = seed(replay)(factory)
    TALLY.clear()
    started = time.monotonic()
    try:
        run_state_machine_as_test(factory, settings=config)
    finally:
        done = ", ".join(f"{n} {what}" for what, n in sorted(TALLY.items()))
        print(f"stateful {source_family}: {time.monotonic() - started:.0f} s; {done}")


def _phases() -> tuple[Phase, ...]:
    base = (Phase.explicit, Phase.reuse, Phase.generate)
    return (*base, Phase.shrink) if os.environ.get("MILEPOST_STATEFUL_SHRINK") else base


def test_prefix_consistent_under_kills_pauses_and_inserts(tmp_path: Path) -> None:
    """The `make test` budget: a few short examples, the same ones every time."""
    config = settings(
        max_examples=4,
        stateful_step_count=6,
        deadline=None,
        derandomize=True,
        database=None,
        phases=_phases(),
        suppress_health_check=SLOW_IS_FINE,
        print_blob=True,
    )
    _run_machine("postgresql", tmp_path, config, None)


@pytest.mark.torture
@pytest.mark.parametrize("source_family", ["postgresql", "mysql"])
def test_torture_prefix_consistent_under_kills_pauses_and_inserts(
    tmp_path: Path, source_family: str
) -> None:
    replay = os.environ.get("MILEPOST_STATEFUL_SEED")
    chosen = int(replay) if replay else random.SystemRandom().randrange(2**32)
    print(f"stateful {source_family}: seed {chosen} (replay with MILEPOST_STATEFUL_SEED={chosen})")
    config = settings(
        max_examples=int(os.environ.get("MILEPOST_STATEFUL_EXAMPLES", "8")),
        stateful_step_count=int(os.environ.get("MILEPOST_STATEFUL_STEPS", "20")),
        deadline=None,
        database=None,
        phases=_phases(),
        suppress_health_check=SLOW_IS_FINE,
        print_blob=True,
    )
    _run_machine(source_family, tmp_path, config, chosen)
