"""Checkpoints in real runs, end to end: triggers, restore, rollback, clearing, integrity,
encryption, every kind of store, and the checks a resume makes before it trusts the ledger.

What a user does is done here through the real CLI (`checkpoints list/show/create/restore/
clear/keygen`, `rollback`, `run --strict`, `pause`), and every outcome is checked on the data:
the destination rows, the ledger (`status --json`) and the stored documents.

Runs that only prepare a situation (a run paused after its k-th batch, a run that completed)
happen in this process through `Runner`, which is the code the CLI runs, because a child
process cannot be stopped at an exact batch without help. The in-process runs also make
`every_records` exact: the event listener mirrors the runner's own counter (`Due`) and, when a
checkpoint is due, holds the worker that committed the batch until the checkpoint thread has
written it. So each automatic checkpoint stands exactly on the batch that made it due, and none
is merged into the next by a busy thread: the count and the rows of each are known in advance.

Nothing here sleeps to synchronise: a child is followed by its JSON-lines events or its exit;
a running child is held at a chosen row by a trigger on the destination (`gates.RowGate`), and
the server is asked (polling, with a deadline) until its worker waits there; an in-process run
is held by its listener. The one wait on the clock (the age warning) waits for the
precondition under test, a checkpoint older than `max_age_hours`, to become true.

Marked `torture` (run by `make torture`): the same restore and rollback on more engine pairs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from conftest import Database
from faults import (
    TABLE,
    Cli,
    assert_same_rows,
    chunk_records,
    cli_json,
    count_rows,
    create_destination,
    create_source,
    database,
    ledger_rows,
    make_rows,
    seeded,
    update_pipeline,
    write_pipeline,
)
from gates import RowGate, wait_for_pause_request, wait_until_pause_seen
from milepost.checkpoints import (
    ChainCodec,
    CheckpointKeyError,
    generate_key,
    key_from_doc,
    key_id,
)
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.checkpoints.triggers import Due
from milepost.cli import _listed as listed_entry
from milepost.config import build_pipeline, load_pipeline
from milepost.errors import MilepostError
from milepost.events import Event
from milepost.rewind import rollback
from milepost.runner import Runner
from milepost.status import pipeline_status
from test_checkpoint_stores import s3_bucket, s3_endpoint, s3_options  # noqa: F401

ROWS = 1_500
BATCH = 50
CHECKPOINT_ID = re.compile(r"^\d{8}T\d{6}(\.\d{3})?Z-[0-9a-f]+$")
# Rows of the destination that the source never had: what a rollback must give back.
DISTINCTIVE = [
    (10_000_000 + i, f"kept by rollback {i}", i, None, None, "pre-existing") for i in range(7)
]


# --- helpers -----------------------------------------------------------------------------------


def job_file(
    directory: Path,
    name: str,
    source_db: Database,
    dest_db: Database,
    *,
    checkpoints: dict[str, Any] | None = None,
    stream: dict[str, Any] | None = None,
    batch_size: int = BATCH,
    **top: Any,
) -> Path:
    """A pipeline file copying `items` with one worker, so batches come in cursor order."""
    path = write_pipeline(directory, name, source_db, dest_db, batch_size=batch_size, workers=1)
    changes: dict[str, Any] = dict(top)
    if checkpoints is not None:
        changes["checkpoints"] = checkpoints
    if stream is not None:
        changes["streams"] = [{"table": TABLE, **stream}]
    return update_pipeline(path, **changes) if changes else path


def milepost(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A short CLI command, run to its end."""
    return subprocess.run(
        [sys.executable, "-m", "milepost", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        timeout=120,
    )


def said(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


def listed(pipeline: Path) -> list[dict[str, Any]]:
    """`milepost checkpoints list PIPELINE --json`, oldest first."""
    return cli_json("checkpoints", "list", str(pipeline), "--json", cwd=pipeline.parent)


def status(pipeline: Path) -> dict[str, Any]:
    """`milepost status PIPELINE --json`."""
    return cli_json("status", str(pipeline), "--json", cwd=pipeline.parent)


def stored(pipeline: Path) -> list[dict[str, Any]]:
    """What `checkpoints list --json` prints, read in this process: for checks between the
    commands under test, where another interpreter start would only cost time."""
    keeper = CheckpointKeeper(load_pipeline(pipeline))
    try:
        return [listed_entry(e) for e in keeper.list()]
    finally:
        keeper.close()


def ledger_status(pipeline: Path) -> dict[str, Any]:
    """What `status --json` prints, read in this process (see `stored`)."""
    return pipeline_status(load_pipeline(pipeline))


def shown(pipeline: Path, checkpoint_id: str) -> dict[str, Any]:
    """The whole document, as `checkpoints show --json` prints it."""
    return cli_json(
        "checkpoints", "show", str(pipeline), checkpoint_id, "--json", cwd=pipeline.parent
    )


def refused(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 2 with one paragraph on stderr that says each of `needles`, and no traceback."""
    assert done.returncode == 2, said(done)
    assert "Traceback" not in done.stderr and "unexpected error" not in done.stderr, said(done)
    for needle in needles:
        assert needle in done.stderr, f"{needle!r} not said: {said(done)}"


def ids_in(db: Database) -> list[int]:
    return sorted(int(r[0]) for r in db.sql(f"SELECT id FROM {TABLE}"))


def backup_tables(db: Database) -> list[str]:
    """The `_milepost_backup_<hex>` tables in a database (not the `_milepost_backups` record)."""
    query = {
        "postgresql": "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema()",
        "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    }[db.family]
    names = [str(r[0]) for r in db.sql(query)]
    return sorted(n for n in names if n.startswith("_milepost_backup_"))


def backups_recorded(db: Database) -> list[tuple[Any, ...]]:
    return db.sql(
        "SELECT checkpoint_id, table_name, backup_name, rows_saved FROM _milepost_backups"
    )


def documents(store: Path) -> list[Path]:
    return sorted(store.rglob("*.ckpt"))


def fill(db: Database, rows: list[tuple[Any, ...]]) -> None:
    mark = "?" if db.family == "sqlite" else "%s"
    for row in rows:
        db.sql(f"INSERT INTO {TABLE} VALUES ({', '.join([mark] * 6)})", row)


def wait_until_held(dest: Database, run: Cli, timeout_s: float = 60.0) -> None:
    """Until the run's worker waits at the gate (`gates.RowGate` in `block` mode): from then
    on nothing commits, so what the destination holds stays put."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'milepost-destination' AND wait_event = 'advisory'"
    )
    deadline = time.monotonic() + timeout_s
    while not dest.sql(query)[0][0]:
        assert run.proc.poll() is None, run.describe(run.finish())
        assert time.monotonic() < deadline, "the run never reached the held row"
        time.sleep(0.01)  # polling for the worker to queue at the gate, with a deadline


@dataclass
class Outcome:
    """What an in-process run said, and how it ended."""

    events: list[Event] = field(default_factory=list)
    error: MilepostError | None = None
    problems: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def checkpoints(self, kind: str | None = None) -> list[str]:
        """Ids of the checkpoints taken, in order (of one kind, if given)."""
        return [
            e.data["id"] for e in self.of("checkpoint") if kind is None or e.data["kind"] == kind
        ]

    @property
    def run_id(self) -> str:
        return str(self.of("run")[0].data["run_id"])

    @property
    def rows(self) -> int:
        return sum(e.rows for e in self.of("batch"))

    def messages(self) -> list[str]:
        return [e.text or "" for e in self.of("message")]


def run_here(path: Path, *, stop_after_batches: int | None = None, fresh: bool = False) -> Outcome:
    """Run the pipeline in this process, pausing it after its k-th batch if asked; each
    automatic checkpoint is waited for on the batch that made it due (see the module doc)."""
    pipeline = load_pipeline(path)
    assert pipeline.workers == 1, "the mirror of the runner's counter needs batches in order"
    mirror = Due(pipeline.checkpoints)
    written = threading.Semaphore(0)
    outcome = Outcome()
    runner: Runner

    def on_event(event: Event) -> None:
        outcome.events.append(event)
        if event.kind == "checkpoint" and event.data["kind"] == "automatic":
            written.release()
        elif event.kind == "message" and "checkpoint (automatic) not written" in (event.text or ""):
            outcome.problems.append(event.text or "")
            written.release()
        elif event.kind == "batch":
            if mirror.add(event.rows) and not written.acquire(timeout=60):
                outcome.problems.append(f"no automatic checkpoint after {event}")
            if stop_after_batches is not None and len(outcome.of("batch")) == stop_after_batches:
                runner.request_stop("paused by the test")

    runner = Runner(pipeline, fresh=fresh, on_event=on_event, origin=str(path))
    try:
        runner.run()
    except MilepostError as exc:
        outcome.error = exc
    assert not outcome.problems, outcome.problems
    return outcome


def paused_here(path: Path, batches: int) -> Outcome:
    outcome = run_here(path, stop_after_batches=batches)
    assert outcome.error is not None and outcome.error.exit_code == 3, outcome.error
    return outcome


def finished_here(path: Path, *, fresh: bool = False) -> Outcome:
    outcome = run_here(path, fresh=fresh)
    assert outcome.error is None, outcome.error
    return outcome


def due_points(batch_rows: list[int], every_records: int) -> list[int]:
    """The rows done at each batch after which `every_records` makes a checkpoint due: the
    runner's rule (count committed rows; at N or more, one is due and what is past N counts
    towards the next) replayed over the batches the run reported."""
    points, counted, done = [], 0, 0
    for rows in batch_rows:
        done += rows
        counted += rows
        if counted >= every_records:
            points.append(done)
            counted %= every_records
    return points


def rows_of_checkpoint(document: dict[str, Any], ids: list[int]) -> list[int]:
    """The source ids a checkpoint says are written: in each chunk, those in (lo, watermark]."""
    (stream,) = document["streams"]
    kept = []
    for chunk in stream["chunks"]:
        watermark = key_from_doc(chunk["watermark"])
        if watermark is None:
            continue
        lo = key_from_doc(chunk["lo"])
        kept += [i for i in ids if (lo is None or (i,) > lo) and (i,) <= watermark]
    return sorted(kept)


@dataclass
class Job:
    source: Database
    dest: Database
    ids: list[int]
    seed: int


@pytest.fixture
def sqlite_job(tmp_path: Path) -> Job:
    """A SQLite source of ROWS rows and a SQLite destination without a primary key."""
    with database("sqlite", tmp_path, "src") as source, database("sqlite", tmp_path, "dst") as dest:
        _, seed = seeded("checkpoints")
        rows = make_rows(ROWS, seed)
        create_source(source, rows)
        create_destination(dest)
        return Job(source, dest, [r[0] for r in rows], seed)


@pytest.fixture
def pg_job(tmp_path: Path) -> Iterator[Job]:
    """The same on PostgreSQL: source and destination each a throwaway database."""
    with (
        database("postgresql", tmp_path, "src") as source,
        database("postgresql", tmp_path, "dst") as dest,
    ):
        _, seed = seeded("checkpoints")
        rows = make_rows(ROWS, seed)
        create_source(source, rows)
        create_destination(dest)
        yield Job(source, dest, [r[0] for r in rows], seed)


EVERY_150 = {
    "every_records": 150,
    "every_seconds": None,
    "keep_after_success": True,
    "retention": {"keep_last": 1000},
}


# --- 1. triggers ---------------------------------------------------------------------------------


def test_every_records_takes_one_automatic_checkpoint_per_due_batch_and_phases_are_kept(
    tmp_path: Path, sqlite_job: Job
) -> None:
    path = job_file(tmp_path, "triggers", sqlite_job.source, sqlite_job.dest, checkpoints=EVERY_150)
    run = finished_here(path)

    batch_rows = [e.rows for e in run.of("batch")]
    assert sum(batch_rows) == ROWS
    due = due_points(batch_rows, 150)
    # One checkpoint per 150 rows copied: none lost to rounding up at each one.
    assert len(due) == ROWS // 150, due
    automatic = run.checkpoints("automatic")
    assert len(automatic) == len(due), (automatic, due)

    docs = listed(path)
    assert [d["id"] for d in docs] == run.checkpoints(), "listed is not what the run took"
    assert {d["run_id"] for d in docs} == {run.run_id}
    auto_docs = [d for d in docs if d["kind"] == "automatic"]
    assert [d["id"] for d in auto_docs] == automatic
    # Taken after the batch that made it due, on that batch's boundary, not later.
    assert [d["rows_done"] for d in auto_docs] == due
    phases = [(d["reason"], d["rows_done"]) for d in docs if d["kind"] == "phase"]
    assert phases == [
        ("schema phase done", 0),
        ("copy phase done", ROWS),
        ("verify phase done", ROWS),
        ("run complete", ROWS),
    ]
    assert [d["status"] for d in docs] == ["superseded"] * (len(docs) - 1) + ["active"]

    trail = milepost("checkpoints", "show", str(path), automatic[0], cwd=tmp_path)
    assert trail.returncode == 0, said(trail)
    for change in ("created -> validated", "validated -> active", "active -> superseded"):
        assert change in trail.stdout, trail.stdout
    assert_same_rows(sqlite_job.source, sqlite_job.dest, "after a run with checkpoints")


def test_a_running_run_answers_create_refuses_restore_and_pauses_with_a_checkpoint(
    tmp_path: Path, pg_job: Job
) -> None:
    """`checkpoints create` against a running run, `restore` refused beside it, `milepost
    pause` leaving a `pause` checkpoint, `create` on the idle run, and the default
    keep_after_success: false clearing them all once the run completes."""
    source, dest = pg_job.source, pg_job.dest
    path = job_file(tmp_path, "running", source, dest)
    gate = RowGate(dest)
    try:
        gate.hold([pg_job.ids[800]], "block")  # the run cannot pass row 801 while held
        run = Cli.run(path)
        assert run.wait_for("batch", 3) is not None, run.describe(run.finish())
        run_id = next(e for e in run.events if e["kind"] == "run")["data"]["run_id"]
        wait_until_held(dest, run)
        held = count_rows(dest)  # nothing commits while the gate holds: this stays
        assert 0 < held <= 800

        made = milepost(
            "checkpoints", "create", str(path), "--reason", "before lunch", cwd=tmp_path
        )
        assert made.returncode == 0, said(made)
        manual = made.stdout.strip()
        assert CHECKPOINT_ID.match(manual), said(made)

        beside = milepost("checkpoints", "restore", str(path), manual, cwd=tmp_path)
        refused(beside, "is being run by", f"pid {run.pid} ")
        assert count_rows(dest) == held and ledger_rows(dest, "running") == held

        pause = Cli("pause", str(path), cwd=tmp_path, timeout_s=120)
        wait_for_pause_request(dest, "running", pause.proc)
        wait_until_pause_seen(dest, lambda: run.proc.poll() is None)
        gate.release()
        rc = run.finish()
        assert rc == 3, run.describe(rc)
        assert pause.finish() == 0, pause.describe(0)
    finally:
        gate.close()

    taken = [(e["data"]["kind"], e["data"]["id"]) for e in run.events if e["kind"] == "checkpoint"]
    assert ("manual", manual) in taken, taken
    assert taken[-1][0] == "pause", taken
    docs = {d["id"]: d for d in listed(path)}
    assert (docs[manual]["kind"], docs[manual]["reason"]) == ("manual", "before lunch")
    assert (docs[manual]["run_id"], docs[manual]["rows_done"]) == (run_id, held)
    paused = docs[taken[-1][1]]
    now = status(path)
    assert (now["status"], paused["status"], docs[manual]["status"]) == (
        "paused",
        "active",
        "superseded",
    )
    assert paused["rows_done"] == now["rows_written"] == count_rows(dest) > held

    idle = milepost("checkpoints", "create", str(path), "--reason", "idle one", cwd=tmp_path)
    assert idle.returncode == 0, said(idle)
    idle_id = idle.stdout.strip()
    assert CHECKPOINT_ID.match(idle_id), said(idle)
    last = stored(path)[-1]
    assert (last["id"], last["kind"], last["reason"], last["status"]) == (
        idle_id,
        "manual",
        "idle one",
        "active",
    )
    assert (last["run_id"], last["rows_done"]) == (run_id, count_rows(dest))

    rerun = Cli.run(path)
    rc = rerun.finish()
    assert rc == 0, rerun.describe(rc)
    assert_same_rows(source, dest, f"after create, pause and a rerun (seed {pg_job.seed})")
    assert stored(path) == [], "keep_after_success: false left checkpoints behind"
    assert documents(tmp_path / ".milepost") == []


@pytest.mark.parametrize("dest_family", ["sqlite", "postgresql"])
def test_create_for_a_pipeline_that_never_ran_says_so_and_writes_nothing(
    tmp_path: Path, dest_family: str
) -> None:
    with (
        database("sqlite", tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        create_source(source, make_rows(10, 1))
        path = job_file(tmp_path, "unborn", source, dest)
        done = milepost("checkpoints", "create", str(path), "--reason", "too early", cwd=tmp_path)
        refused(done, "Pipeline 'unborn' has not run yet", "milepost run")
        assert done.stdout == ""
        if dest.path is not None:
            assert not dest.path.exists(), "an empty destination database file was left behind"
        else:
            assert ledger_rows(dest, "unborn") == 0 and not backup_tables(dest)
            assert not dest.sql("SELECT 1 FROM pg_tables WHERE tablename LIKE '\\_milepost%'")
        assert documents(tmp_path / ".milepost") == []


def test_a_refused_row_leaves_a_failure_checkpoint_and_the_run_resumes_once_fixed(
    tmp_path: Path, pg_job: Job
) -> None:
    source, dest = pg_job.source, pg_job.dest
    bad = pg_job.ids[710]
    dest.sql(f"ALTER TABLE {TABLE} ADD CONSTRAINT no_bad_row CHECK (id <> {bad})")
    path = job_file(tmp_path, "refusing", source, dest, on_row_error="fail")

    run = Cli.run(path)
    rc = run.finish()
    assert rc == 1, run.describe(rc)
    assert str(bad) in run.stderr and "Traceback" not in run.stderr, run.stderr
    last = listed(path)[-1]
    assert (last["kind"], last["status"]) == ("failure", "active"), last
    assert str(bad) in last["reason"], last
    # The failure checkpoint records exactly the committed rows: the chunks before the bad
    # row's, and the whole batches of its chunk before the batch that holds it.
    (chunk,) = [
        c
        for c in chunk_records(dest, "refusing")
        if (c.lo is None or (bad,) > c.lo) and (c.hi is None or (bad,) <= c.hi)
    ]
    in_chunk = [i for i in pg_job.ids if (chunk.lo is None or (i,) > chunk.lo) and i < bad]
    committed = sum(1 for i in pg_job.ids if chunk.lo is not None and (i,) <= chunk.lo)
    committed += len(in_chunk) - len(in_chunk) % BATCH
    assert last["rows_done"] == committed == count_rows(dest) == ledger_rows(dest, "refusing")
    assert ids_in(dest) == pg_job.ids[:committed]

    dest.sql(f"ALTER TABLE {TABLE} DROP CONSTRAINT no_bad_row")
    rerun = Cli.run(path)
    rc = rerun.finish()
    assert rc == 0, rerun.describe(rc)
    assert_same_rows(source, dest, "after a refused row was allowed and the run resumed")


# --- 2. restore ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_family", "dest_family", "ending"),
    [
        ("postgresql", "postgresql", "paused"),
        ("mysql", "sqlite", "finished"),
        pytest.param("postgresql", "mysql", "paused", marks=pytest.mark.torture),
        pytest.param("sqlite", "postgresql", "finished", marks=pytest.mark.torture),
    ],
)
def test_restore_rewinds_to_a_mid_run_checkpoint_and_the_next_run_ends_identical(
    tmp_path: Path, source_family: str, dest_family: str, ending: str
) -> None:
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        _, seed = seeded("restore")
        rows = make_rows(ROWS, seed)
        ids = [r[0] for r in rows]
        create_source(source, rows)
        create_destination(dest)
        path = job_file(tmp_path, "rewinding", source, dest, checkpoints=EVERY_150)
        run = paused_here(path, 24) if ending == "paused" else finished_here(path)
        written = count_rows(dest)
        assert written == run.rows and 0 < written <= ROWS
        assert (written == ROWS) == (ending == "finished"), written

        target = run.checkpoints("automatic")[2]
        document = shown(path, target)
        at = document["position"]["rows_done"]
        assert document["kind"] == "automatic" and 0 < at < written, document["position"]

        done = milepost("checkpoints", "restore", str(path), target, cwd=tmp_path)
        assert done.returncode == 0, said(done)
        assert f"{written - at:,} destination rows written after it removed" in done.stdout
        now = status(path)
        assert (now["status"], now["phase"], now["rows_written"]) == ("paused", "copy", at), now
        assert count_rows(dest) == at == ledger_rows(dest, "rewinding")
        assert ids_in(dest) == rows_of_checkpoint(document, ids) == ids[:at]

        trail = milepost("checkpoints", "show", str(path), target, cwd=tmp_path)
        assert "restored" in trail.stdout and f"{written - at} destination rows" in trail.stdout
        statuses = {d["id"]: d["status"] for d in stored(path)}
        assert statuses[target] == "active"
        assert list(statuses.values()).count("active") == 1, statuses

        # Restore only goes back: a later checkpoint now records rows that are not there.
        later = run.checkpoints("automatic")[-1]
        assert later != target
        forward = milepost("checkpoints", "restore", str(path), later, cwd=tmp_path)
        refused(forward, "would move the run forward")
        assert count_rows(dest) == at == status(path)["rows_written"]

        rerun = Cli.run(path)
        rc = rerun.finish()
        assert rc == 0, rerun.describe(rc)
        started = next(e for e in rerun.events if e["kind"] == "run")
        assert started["data"] == {"run_id": run.run_id, "resumed": True}, started
        copied = sum(e.get("rows", 0) for e in rerun.events if e["kind"] == "batch")
        assert copied == ROWS - at, "the rerun did not continue from the checkpoint"
        assert_same_rows(source, dest, f"{ending}, restored and run again (seed {seed})")


def test_restore_refuses_a_checkpoint_of_an_earlier_run_and_changes_nothing(
    tmp_path: Path, sqlite_job: Job
) -> None:
    source, dest = sqlite_job.source, sqlite_job.dest
    path = job_file(tmp_path, "earlier", source, dest, checkpoints={"keep_after_success": True})
    first = finished_here(path)
    second = finished_here(path, fresh=True)
    assert first.run_id != second.run_id
    old = first.checkpoints("phase")[0]
    before = ledger_status(path)

    done = milepost("checkpoints", "restore", str(path), old, cwd=tmp_path)
    refused(done, f"belongs to run {first.run_id}", f"ledger is at run {second.run_id}")
    assert_same_rows(source, dest, "after a refused restore")
    assert ledger_status(path) == before, "a refused restore changed the ledger"


# --- 3. rollback ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dest_family",
    [
        "postgresql",
        pytest.param("mysql", marks=pytest.mark.torture),
        pytest.param("sqlite", marks=pytest.mark.torture),
    ],
)
def test_rollback_puts_back_what_write_replace_emptied(tmp_path: Path, dest_family: str) -> None:
    with (
        database("postgresql", tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        _, seed = seeded("rollback")
        create_source(source, make_rows(300, seed))
        create_destination(dest)
        fill(dest, DISTINCTIVE)
        before = sorted(dest.sql(f"SELECT id, name FROM {TABLE}"))
        path = job_file(
            tmp_path,
            "replacing",
            source,
            dest,
            stream={"write": "replace"},
            checkpoints={"keep_after_success": True},
        )
        run = Cli.run(path)
        rc = run.finish()
        assert rc == 0, run.describe(rc)
        assert_same_rows(source, dest, "after write: replace")
        kinds = [
            (e["data"]["kind"], e["data"]["id"]) for e in run.events if e["kind"] == "checkpoint"
        ]
        risky = [cid for kind, cid in kinds if kind == "before_risky"]
        assert len(risky) == 1, kinds
        assert any(f"rollback --to {risky[0]}" in m for m in run.messages()), run.messages()
        ((cid, table, backup, saved),) = backups_recorded(dest)
        assert (cid, table, saved) == (risky[0], TABLE, len(DISTINCTIVE))
        assert backup_tables(dest) == [backup]

        phase = next(cid for kind, cid in kinds if kind == "phase")
        wrong = milepost("rollback", str(path), "--to", phase, cwd=tmp_path)
        refused(wrong, phase, "has no backup to roll back to", "before_risky")
        assert_same_rows(source, dest, "after a refused rollback")

        done = milepost("rollback", str(path), "--to", risky[0], cwd=tmp_path)
        assert done.returncode == 0, said(done)
        assert sorted(dest.sql(f"SELECT id, name FROM {TABLE}")) == before
        now = status(path)
        # The ledger as the checkpoint found it: this pipeline had copied nothing yet.
        assert (now["status"], now["phase"], now["rows_written"], now["streams"]) == (
            "paused",
            "new",
            0,
            [],
        ), now
        trail = milepost("checkpoints", "show", str(path), risky[0], cwd=tmp_path)
        assert "rolled_back" in trail.stdout, trail.stdout

        again = Cli.run(path)
        rc = again.finish()
        assert rc == 0, again.describe(rc)
        assert_same_rows(source, dest, "after a rollback and another run")


# --- 4. keep_after_success and clear -------------------------------------------------------------


def test_a_completed_run_leaves_no_checkpoints_and_no_backups_by_default(
    tmp_path: Path, sqlite_job: Job
) -> None:
    source, dest = sqlite_job.source, sqlite_job.dest
    fill(dest, DISTINCTIVE)
    path = job_file(
        tmp_path,
        "tidy",
        source,
        dest,
        stream={"write": "replace"},
        checkpoints={"every_records": 400, "every_seconds": None},
    )
    run = Cli.run(path)
    rc = run.finish()
    assert rc == 0, run.describe(rc)
    kinds = [e["data"]["kind"] for e in run.events if e["kind"] == "checkpoint"]
    assert "before_risky" in kinds and "automatic" in kinds and "phase" in kinds, kinds
    assert any("1 backup(s)" in m for m in run.messages()), run.messages()
    assert listed(path) == []
    assert documents(tmp_path / ".milepost") == []
    assert backups_recorded(dest) == [] and backup_tables(dest) == []
    assert_same_rows(source, dest, "after a tidy run")


def test_clear_removes_finished_runs_and_all_removes_every_pipeline_in_the_store(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared-store"
    settings = {"store": str(shared), "keep_after_success": True}
    with (
        database("sqlite", tmp_path, "src") as source,
        database("sqlite", tmp_path, "a") as dest_a,
        database("sqlite", tmp_path, "b") as dest_b,
    ):
        _, seed = seeded("clear")
        create_source(source, make_rows(600, seed))
        create_destination(dest_a)
        fill(dest_a, DISTINCTIVE)
        a = job_file(
            tmp_path, "alpha", source, dest_a, stream={"write": "replace"}, checkpoints=settings
        )
        b = job_file(tmp_path, "beta", source, dest_b, checkpoints=settings)
        finished_here(a)
        paused = paused_here(b, 3)
        beta_docs = stored(b)
        assert len(stored(a)) >= 3 and len(beta_docs) >= 2
        assert len(backup_tables(dest_a)) == 1

        kept = milepost("checkpoints", "clear", str(b), cwd=tmp_path)
        assert kept.returncode == 0, said(kept)
        assert f"kept the {len(beta_docs)} of run {paused.run_id}, which has not finished" in (
            kept.stdout
        ), said(kept)
        assert stored(b) == beta_docs

        gone = milepost("checkpoints", "clear", str(a), cwd=tmp_path)
        assert gone.returncode == 0, said(gone)
        assert "and 1 backup table(s)" in gone.stdout, said(gone)
        assert stored(a) == [] and stored(b) == beta_docs
        assert backup_tables(dest_a) == [] and backups_recorded(dest_a) == []

        finished_here(a, fresh=True)  # alpha has checkpoints (and a backup) again
        alpha_docs = stored(a)
        assert alpha_docs
        every = milepost("checkpoints", "clear", str(b), "--all", cwd=tmp_path)
        assert every.returncode == 0, said(every)
        removed = len(alpha_docs) + len(beta_docs)
        assert f"Removed {removed} checkpoint(s)" in every.stdout, said(every)
        assert listed(a) == [] and stored(b) == []
        assert documents(shared) == []
        # --all reaches beta's destination only; alpha's backup goes with alpha's next clear.
        assert len(backup_tables(dest_a)) == 1
        orphan = milepost("checkpoints", "clear", str(a), cwd=tmp_path)
        assert "Removed 0 checkpoint(s) and 1 backup table(s)" in orphan.stdout, said(orphan)
        assert backup_tables(dest_a) == []


# --- 5. integrity and encryption -----------------------------------------------------------------


def test_a_damaged_checkpoint_is_reported_refused_and_passed_over_on_resume(
    tmp_path: Path, sqlite_job: Job
) -> None:
    source, dest = sqlite_job.source, sqlite_job.dest
    path = job_file(tmp_path, "damaged", source, dest, checkpoints=EVERY_150)
    run = paused_here(path, 10)
    files = documents(tmp_path / ".milepost" / "checkpoints")
    assert [f.name.removesuffix(".ckpt") for f in files] == run.checkpoints()
    newest, cut = files[-1], files[-2]
    newest_id, cut_id = newest.stem, cut.stem
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) - 10])

    shown_list = milepost("checkpoints", "list", str(path), cwd=tmp_path)
    assert shown_list.returncode == 0, said(shown_list)
    lines = {line.split()[0]: line for line in shown_list.stdout.splitlines() if line.strip()}
    assert "unreadable" in lines[newest_id] and "integrity check" in lines[newest_id], lines
    assert "unreadable" in lines[cut_id] and "cut short" in lines[cut_id], lines
    assert f"{len(whole) - 10} of its {len(whole)} bytes" in lines[cut_id], lines
    as_json = {d["id"]: d for d in listed(path)}
    assert as_json[newest_id]["status"] == "unreadable" and as_json[newest_id]["problem"]

    before = (ledger_status(path), count_rows(dest))
    for command in ("show", "restore"):
        done = milepost("checkpoints", command, str(path), newest_id, cwd=tmp_path)
        refused(done, f"Checkpoint {newest_id}", "integrity check")
    assert (ledger_status(path), count_rows(dest)) == before, "a refused restore changed something"

    rerun = Cli.run(path)
    rc = rerun.finish()
    assert rc == 0, rerun.describe(rc)
    passed = [m for m in rerun.messages() if "is unreadable and is passed over" in m]
    assert any(newest_id in m for m in passed) and any(cut_id in m for m in passed), passed
    assert_same_rows(source, dest, "after resuming past damaged checkpoints")


def test_encrypted_checkpoints_need_their_key_and_no_secret_is_stored_or_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: Database
) -> None:
    password = "pw-Tr0ub4dor-never-stored"
    keys = []
    for _ in range(2):
        made = milepost("checkpoints", "keygen", cwd=tmp_path)
        assert made.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", made.stdout), said(made)
        keys.append(made.stdout.strip())
    key, wrong = keys
    assert key != wrong
    secrets_ = [password, key, wrong]

    _, seed = seeded("encryption")
    create_source(pg, make_rows(400, seed))
    with database("sqlite", tmp_path, "dst") as dest:
        path = job_file(
            tmp_path,
            "sealed",
            pg,
            dest,
            source={"url": pg.url, "password": password},  # trust auth: accepted, unused
            checkpoints={
                "keep_after_success": True,
                "compress": False,  # so that no plaintext can hide in a compressed frame
                "encrypt": {"key_env": "MILEPOST_CHECKPOINT_KEY"},
            },
        )
        monkeypatch.setenv("MILEPOST_CHECKPOINT_KEY", key)
        run = Cli.run(path)
        rc = run.finish()
        assert rc == 0, run.describe(rc)
        outputs = [run.stderr, "\n".join(str(e) for e in run.events)]

        docs = listed(path)
        assert len(docs) >= 3 and all(d["status"] != "unreadable" for d in docs), docs
        files = documents(tmp_path / ".milepost")
        assert len(files) == len(docs)
        database_name = pg.url.rsplit("/", 1)[1].encode()
        for file in files:
            data = file.read_bytes()
            for secret in (password.encode(), key.encode(), bytes.fromhex(key)):
                assert secret not in data, f"a secret is stored in {file.name}"
            # Plaintext of the document (its config snapshot) is not there to read.
            assert database_name not in data and b'"streams"' not in data, file.name
            with pytest.raises(CheckpointKeyError, match="no key is configured"):
                ChainCodec(compress=False).decode(data, pipeline="sealed", checkpoint_id=file.stem)
            opened = ChainCodec(compress=False, key=bytes.fromhex(key)).decode(
                data, pipeline="sealed", checkpoint_id=file.stem
            )
            plaintext = yaml.safe_dump(opened.to_document())
            assert password not in plaintext and key not in plaintext, "secret in the snapshot"
            assert database_name.decode() in plaintext  # the snapshot is there, only masked

        monkeypatch.setenv("MILEPOST_CHECKPOINT_KEY", wrong)
        mislisted = milepost("checkpoints", "list", str(path), cwd=tmp_path)
        assert mislisted.returncode == 0, said(mislisted)
        assert "Traceback" not in mislisted.stderr
        lines = [line for line in mislisted.stdout.splitlines() if line.strip()]
        assert len(lines) == len(docs), lines
        for line in lines:
            assert "unreadable" in line and "encrypted with another key" in line, line
            assert f"the configured key's id is {key_id(bytes.fromhex(wrong))}" in line, line
        outputs += [mislisted.stdout, mislisted.stderr]

        monkeypatch.delenv("MILEPOST_CHECKPOINT_KEY")
        keyless = milepost("checkpoints", "list", str(path), cwd=tmp_path)
        refused(keyless, "MILEPOST_CHECKPOINT_KEY")
        outputs += [keyless.stdout, keyless.stderr]
        for text in outputs:
            for secret in secrets_:
                assert secret not in text, "a secret was shown"


def test_clear_under_a_wrong_key_keeps_the_unfinished_runs_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_job: Job
) -> None:
    """A wrong key makes every document unreadable, but their envelopes still say whose they
    are: `clear` must not take the unfinished run's restore points for nobody's. A damaged
    document, whose envelope fails its checks, may go."""
    key, wrong = generate_key(), generate_key()
    settings = {**EVERY_150, "encrypt": {"key_env": "MILEPOST_CHECKPOINT_KEY"}}
    path = job_file(tmp_path, "locked", sqlite_job.source, sqlite_job.dest, checkpoints=settings)
    monkeypatch.setenv("MILEPOST_CHECKPOINT_KEY", key)
    run = paused_here(path, 8)
    files = documents(tmp_path / ".milepost")
    assert len(files) >= 3
    damaged = files[0]
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))

    monkeypatch.setenv("MILEPOST_CHECKPOINT_KEY", wrong)
    done = milepost("checkpoints", "clear", str(path), cwd=tmp_path)
    assert done.returncode == 0, said(done)
    kept = len(files) - 1
    assert "Removed 1 checkpoint(s)" in done.stdout, said(done)
    assert f"kept the {kept} of run {run.run_id}, which has not finished" in done.stdout
    monkeypatch.setenv("MILEPOST_CHECKPOINT_KEY", key)
    assert [d["id"] for d in stored(path)] == [f.stem for f in files[1:]]
    assert all(d["status"] != "unreadable" for d in stored(path))


# --- 6. stores -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "s3"])
def test_a_run_keeps_its_checkpoints_in_any_store_and_lists_them(
    tmp_path: Path, sqlite_job: Job, kind: str, request: pytest.FixtureRequest
) -> None:
    options: dict[str, Any] = {}
    if kind == "sqlite":
        store = f"sqlite:///{tmp_path / 'kept' / 'checkpoints.db'}"
        (tmp_path / "kept").mkdir()
    elif kind == "postgresql":
        store = request.getfixturevalue("pg").url
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = s3_bucket(endpoint)
        store, options = f"s3://{bucket}/milepost", s3_options(endpoint)
    settings: dict[str, Any] = {"store": store, "keep_after_success": True}
    if options:
        settings["store_options"] = options
    path = job_file(tmp_path, "stored", sqlite_job.source, sqlite_job.dest, checkpoints=settings)

    run = Cli.run(path)
    rc = run.finish()
    assert rc == 0, run.describe(rc)
    taken = [e["data"]["id"] for e in run.events if e["kind"] == "checkpoint"]
    docs = listed(path)
    # schema, copy and verify phases done, and the run complete
    assert [d["id"] for d in docs] == taken and len(taken) == 4, (docs, taken)
    assert [d["kind"] for d in docs] == ["phase"] * 4
    assert not (tmp_path / ".milepost").exists(), "checkpoints went to the default directory"
    if kind == "s3":
        client = boto3.client(
            "s3",
            endpoint_url=options["endpoint_url"],
            aws_access_key_id=options["key"],
            aws_secret_access_key=options["secret"],
            region_name="us-east-1",
        )
        objects = client.list_objects_v2(Bucket=bucket, Prefix="milepost/stored/")
        assert sorted(o["Key"] for o in objects.get("Contents", [])) == [
            f"milepost/stored/{cid}.ckpt" for cid in taken
        ]
        body = client.get_object(Bucket=bucket, Key=f"milepost/stored/{taken[0]}.ckpt")["Body"]
        opened = ChainCodec().decode(body.read(), pipeline="stored", checkpoint_id=taken[0])
        snapshot = yaml.safe_dump(opened.to_document())
        assert options["secret"] not in snapshot and options["key"] not in snapshot
        assert options["endpoint_url"] in snapshot  # the store options are there, masked
    assert_same_rows(sqlite_job.source, sqlite_job.dest, f"with checkpoints in {kind}")


# --- 7. safe resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("drift", ["truncated", "trimmed", "thinned"])
def test_a_drifted_source_is_refused_with_strict_and_copied_again_without(
    tmp_path: Path, drift: str
) -> None:
    with (
        database("postgresql", tmp_path, "src") as source,
        database("sqlite", tmp_path, "dst") as dest,
    ):
        _, seed = seeded("drift")
        rows = make_rows(ROWS, seed)
        ids = [r[0] for r in rows]
        create_source(source, rows)
        create_destination(dest)
        path = job_file(tmp_path, "drifting", source, dest)
        # "thinned" needs more than recovery.DRIFT_MIN_ROWS copied to be judged by count.
        run = paused_here(path, 10 if drift != "thinned" else 24)
        copied = count_rows(dest)
        assert copied == run.rows and ids_in(dest) == ids[:copied]
        if drift == "truncated":
            source.sql(f"TRUNCATE {TABLE}")
            seen = f"its source is empty now, but {copied} rows were copied"
        elif drift == "trimmed":
            source.sql(f"DELETE FROM {TABLE} WHERE id <= %s", (ids[99],))
            seen = f"its smallest cursor is now ({ids[100]}), was ({ids[0]})"
        else:  # the smallest row stays, most of the others go; the statistics know it
            source.sql(f"DELETE FROM {TABLE} WHERE id > %s AND id < %s", (ids[0], ids[1200]))
            source.sql(f"ANALYZE {TABLE}")
            seen = f"its source holds {ROWS - 1199:,} rows, but {copied:,} were already copied"
        progress = [(s["stream"], s["rows_written"]) for s in ledger_status(path)["streams"]]

        strict = Cli.run(path, "--strict")
        rc = strict.finish()
        assert rc == 2, strict.describe(rc)
        assert "Stream 'items'" in strict.stderr and seen in strict.stderr, strict.stderr
        assert "Traceback" not in strict.stderr
        assert count_rows(dest) == copied and ids_in(dest) == ids[:copied]
        assert [
            (s["stream"], s["rows_written"]) for s in ledger_status(path)["streams"]
        ] == progress

        lenient = Cli.run(path)
        rc = lenient.finish()
        assert rc == 0, lenient.describe(rc)
        warned = [m for m in lenient.messages() if m.startswith("warning: stream 'items'")]
        assert len(warned) == 1 and seen in warned[0], lenient.messages()
        assert warned[0].endswith("copying it again from the start"), warned
        assert not [m for m in lenient.messages() if "progress being resumed" in m]
        assert_same_rows(source, dest, f"after the source was {drift} (seed {seed})")


def test_resuming_old_progress_warns_about_its_age(tmp_path: Path, sqlite_job: Job) -> None:
    max_age_hours = 0.0001  # 0.36 s
    path = job_file(
        tmp_path,
        "aging",
        sqlite_job.source,
        sqlite_job.dest,
        checkpoints={"retention": {"max_age_hours": max_age_hours}},
    )
    run = paused_here(path, 3)
    newest = stored(path)[-1]
    assert (newest["id"], newest["kind"]) == (run.checkpoints()[-1], "pause")
    # The precondition under test, not synchronisation: the progress being resumed is older
    # than max_age_hours (by half as much again, so clock granularity cannot matter).
    saved = dt.datetime.fromisoformat(newest["created_at"]).timestamp()
    while time.time() - saved < max_age_hours * 3600 * 1.5:
        time.sleep(0.05)

    rerun = Cli.run(path)
    rc = rerun.finish()
    assert rc == 0, rerun.describe(rc)
    aged = [m for m in rerun.messages() if "the progress being resumed was saved" in m]
    assert len(aged) == 1 and aged[0].startswith("warning: "), rerun.messages()
    assert f"max_age_hours ({max_age_hours:g})" in aged[0], aged
    assert_same_rows(sqlite_job.source, sqlite_job.dest, "after an old resume")


def test_rollback_also_empties_what_the_risky_step_filled_without_a_backup(
    tmp_path: Path, lite: Database
) -> None:
    """Only tables that held rows are backed up; a table the replacing run filled from
    empty must be empty again after the rollback, or the run it resumes doubles it."""
    source = tmp_path / "two.db"
    with contextlib.closing(sqlite3.connect(source)) as conn, conn:
        for table in ("kept", "filled"):
            conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)")
            conn.executemany(
                f"INSERT INTO {table} VALUES (?, ?)", [(i, f"{table} {i}") for i in range(1, 51)]
            )
    lite.sql("CREATE TABLE kept (id INTEGER PRIMARY KEY, v TEXT)")
    lite.sql("INSERT INTO kept VALUES (1000, 'there before')")
    pipeline = build_pipeline(
        {
            "name": "two",
            "source": {"url": f"sqlite:///{source}"},
            "destination": {"url": lite.url},
            "streams": [{"table": t, "write": "replace"} for t in ("kept", "filled")],
            "checkpoints": {"keep_after_success": True},
        }
    )
    taken: list[str] = []
    Runner(
        pipeline,
        on_event=lambda e: (
            taken.append(e.data["id"])
            if e.kind == "checkpoint" and e.data.get("kind") == "before_risky"
            else None
        ),
    ).run()
    assert lite.sql("SELECT count(*) FROM filled") == [(50,)]
    (risky,) = taken

    done = rollback(pipeline, risky)
    assert done.tables_restored == ["kept"]
    assert lite.sql("SELECT id, v FROM kept") == [(1000, "there before")]
    assert lite.sql("SELECT count(*) FROM filled") == [(0,)]
