"""Database faults mid-copy: killed backends, a restarted or crashed server, a server that stays
down, and an error that is not transient.

Each fault is real: pg_terminate_backend or KILL CONNECTION of the product's own connections on
the shared servers (scoped to the test's throwaway database), and restarts, crashes and outages
of a private PostgreSQL that the test started itself. Every test checks both that the fault
happened (the kill helper killed something, the run reported a retry, the server's start time
moved) and what it cost: the destination table (no primary key, so a doubled row would stay)
equals the source row by row, and the ledger's per-chunk rows and batch counts are exactly what
the source needs, so no batch was written or counted twice.

A fault always follows something the child did: its k-th committed batch, read from its
JSON-lines events, or (when it prints plain text) the k-th commit into the destination table,
from a LISTEN on a trigger's NOTIFY; then a few random milliseconds, so a kill lands inside the
next batch. Never a sleep in place of synchronisation. The torture test (`make torture`) does
the same many times over, at random batches, on random sides.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Database
from faults import (
    TABLE,
    BackendKiller,
    Cli,
    CommitSignals,
    WebhookReceiver,
    assert_ledger_exact,
    assert_same_rows,
    cli_json,
    count_rows,
    create_destination,
    create_source,
    database,
    make_rows,
    seeded,
    update_pipeline,
    write_pipeline,
)
from servers import IN_CI, PrivatePostgres, free_port, postgres_unavailable_reason

ROWS = 20_000
BATCH = 500
DROP_ROWS = 6_000  # enough batches to drop the table in the middle of
KILL_AFTER = 5  # batches committed before the fault, so the chunk has something to keep
# Quick retries for killed connections: the server is up, only the connection went.
QUICK_RETRY = {"max_attempts": 8, "initial_delay_s": 0.05, "max_delay_s": 0.5}
# A restart takes a few hundred milliseconds (seconds on a busy machine); these retries wait
# about 25 s in all, and only as long as the server is down.
RESTART_RETRY = {"max_attempts": 20, "initial_delay_s": 0.2, "max_delay_s": 2.0}
# Give up fast on a server that stays down.
GIVE_UP_RETRY = {"max_attempts": 3, "initial_delay_s": 0.05, "max_delay_s": 0.2}

PASSWORD = "Pw-n0t-for-logs-7731"  # the shared PostgreSQL trusts 127.0.0.1 and ignores it
TOKEN = "tok-n0t-for-logs-5519"  # a webhook path often carries a token: never shown either


# --- a private PostgreSQL, shared by this module's tests -----------------------------------------


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivatePostgres]:
    """One private PostgreSQL for the module (like servers.private_postgres, whose skip rules
    it follows): starting one costs about a second, and a test only needs it running, with a
    database of its own."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"private PostgreSQL unavailable under CI=true: {reason}")
        pytest.skip(f"private PostgreSQL unavailable: {reason}")
    with PrivatePostgres() as server:
        yield server


@pytest.fixture
def private_pg(private_server: PrivatePostgres) -> PrivatePostgres:
    """The module's private server, running (a failed test may have left it stopped)."""
    if not private_server.running:
        private_server.start()
    return private_server


def private_db(server: PrivatePostgres, stem: str) -> Database:
    return Database("postgresql", server.create_database(f"{stem}_{secrets.token_hex(4)}"))


# --- what a run reported ------------------------------------------------------------------------


def kinds(run: Cli, kind: str) -> list[dict[str, Any]]:
    return [e for e in run.events if e.get("kind") == kind]


def reconnects(run: Cli) -> list[dict[str, Any]]:
    """The `message` events a worker sends after reconnecting: {chunk, rows_committed}."""
    return [e for e in kinds(run, "message") if "rows_committed" in (e.get("data") or {})]


def check_copy(
    run: Cli,
    rc: int,
    source: Database,
    dest: Database,
    ids: list[int],
    context: str,
    *,
    crashed: bool = False,
    batch_size: int = BATCH,
) -> int:
    """Exit 0; the rows, the ledger and the run's own account all agree. Returns the batches.

    `crashed`: the destination server crashed, and may have lost the last commits it had
    acknowledged (PostgreSQL batches commit asynchronously); those batches are copied, and
    reported, again."""
    assert rc == 0, f"{context}: {run.describe(rc)}"
    assert assert_same_rows(source, dest, context) == len(ids)
    batches = assert_ledger_exact(dest, run_name(run), ids, batch_size, context)
    reported = len(kinds(run, "batch"))
    assert reported == batches or (crashed and reported > batches), (
        f"{context}: the run reported {reported} committed batches, the ledger has {batches}"
    )
    finished = kinds(run, "finished")
    assert finished and finished[-1].get("rows_done") == len(ids), (
        f"{context}: the run's own count is off: {finished}"
    )
    check_reconnects(run, context, crashed=crashed)
    return batches


def check_reconnects(run: Cli, context: str, *, crashed: bool = False) -> None:
    """A reconnected worker goes on after exactly what its chunk had committed: the rows of
    that chunk's batches reported before (a batch whose COMMIT went through as the connection
    died is reported just before), never from the start of the table. After a crash of the
    destination it may be less: acknowledged commits the crash took back."""
    done: dict[int, int] = {}
    for event in run.events:
        data = event.get("data") or {}
        if event.get("kind") == "batch":
            done[data["chunk"]] = done.get(data["chunk"], 0) + event.get("rows", 0)
        elif "rows_committed" in data:
            chunk, committed = data["chunk"], data["rows_committed"]
            seen = done.get(chunk, 0)
            assert committed == seen or (crashed and committed < seen), (
                f"{context}: chunk {chunk} reconnected after {committed} committed rows, but "
                f"{seen} were reported committed before: {event['text']}"
            )
            done[chunk] = committed


def run_name(run: Cli) -> str:
    return Path(run.args[1]).stem


def with_password(url: str) -> str:
    """The same PostgreSQL URL with a password the trusting server ignores."""
    assert "://postgres@" in url, url
    return url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)


# --- 1, 2: killed connections --------------------------------------------------------------------

# (source, destination, whose connections are killed). PostgreSQL connections die by
# pg_terminate_backend, MariaDB ones by KILL CONNECTION; the kill is of the side named.
KILLS = [
    ("postgresql", "postgresql", "destination"),
    ("postgresql", "postgresql", "source"),
    ("mysql", "postgresql", "destination"),
    ("mysql", "postgresql", "source"),
    ("postgresql", "mysql", "source"),
    ("postgresql", "mysql", "destination"),
]


@pytest.mark.parametrize(
    ("source_family", "dest_family", "role"), KILLS, ids=[f"{s}->{d}:{r}" for s, d, r in KILLS]
)
def test_killed_connections_mid_batch_reconnect_and_continue(
    tmp_path: Path, source_family: str, dest_family: str, role: str
) -> None:
    """One worker, so the kill lands in the chunk it is copying: after reconnecting it goes on
    from that chunk's committed rows, not from the start of the table."""
    label = f"{source_family}->{dest_family}, {role} connections killed"
    rng, seed = seeded(label)
    context = f"{label} (seed {seed})"
    rows = make_rows(ROWS, seed)
    ids = [r[0] for r in rows]
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        create_source(source, rows)
        create_destination(dest)
        pipeline = write_pipeline(tmp_path, "dbkill", source, dest, batch_size=BATCH, workers=1)
        update_pipeline(pipeline, retry=QUICK_RETRY)

        with BackendKiller(source if role == "source" else dest) as killer:
            run = Cli.run(pipeline)
            assert run.wait_for("batch", KILL_AFTER), f"{context}: {run.describe(run.finish())}"
            time.sleep(rng.uniform(0, 0.01))  # where in the next batch the kill lands
            killed = killer.kill(role)
            rc = run.finish()

        assert rc == 0, f"{context}: {run.describe(rc)}"
        assert killed >= 1, f"{context}: no {role} connection was there to kill"
        retried = [e for e in kinds(run, "retry") if e.get("stream") == TABLE]
        assert retried, f"{context}: no worker retried: {run.describe(rc)}"
        assert {"attempt", "wait_s", "reason"} <= set(retried[0]["data"])
        back = reconnects(run)
        assert back, f"{context}: the worker never said it reconnected: {run.describe(rc)}"
        # One worker: the kill came while chunk 0 was copying, after KILL_AFTER of its batches
        # (unless this process fell far behind the child's events: then in a later chunk).
        first = back[0]["data"]
        least = KILL_AFTER * BATCH if first["chunk"] == 0 else 1
        assert first["rows_committed"] >= least, (
            f"{context}: the chunk restarted from the start of the table: {back[0]}"
        )
        check_copy(run, rc, source, dest, ids, context)
        print(f"{context}: killed {killed}; {len(retried)} retries; {back[0]['text']}")


# --- 3: a private PostgreSQL restarted or crashed mid-copy ----------------------------------------


def start_time(server: PrivatePostgres) -> Any:
    return Database("postgresql", server.url).sql("SELECT pg_postmaster_start_time()")[0][0]


@pytest.mark.parametrize("how", ["restart-fast", "crash-immediate"])
@pytest.mark.parametrize("side", ["destination", "source"])
def test_private_postgres_restarted_mid_copy(
    tmp_path: Path, private_pg: PrivatePostgres, pg: Database, side: str, how: str
) -> None:
    """`pg_ctl restart -m fast`, or `stop -m immediate` (a crash: WAL recovery on start) and
    start, of the source or destination server while two workers copy. The run rides it out
    within its retries."""
    label = f"private PostgreSQL as {side}, {how}"
    rng, seed = seeded(label)
    context = f"{label} (seed {seed})"
    rows = make_rows(ROWS, seed)
    ids = [r[0] for r in rows]
    private = private_db(private_pg, "mp_private")
    source, dest = (private, pg) if side == "source" else (pg, private)
    create_source(source, rows)
    create_destination(dest)
    pipeline = write_pipeline(tmp_path, "restart", source, dest, batch_size=BATCH, workers=2)
    update_pipeline(pipeline, retry=RESTART_RETRY)
    before = start_time(private_pg)

    run = Cli.run(pipeline)
    assert run.wait_for("batch", KILL_AFTER), f"{context}: {run.describe(run.finish())}"
    time.sleep(rng.uniform(0, 0.02))  # where in the next batch the fault lands
    if how == "restart-fast":
        private_pg.restart("fast")
    else:
        private_pg.stop("immediate")
        private_pg.start()
    rc = run.finish()

    assert rc == 0, f"{context}: {run.describe(rc)}"
    assert start_time(private_pg) > before, f"{context}: the server did not restart"
    assert kinds(run, "retry"), f"{context}: nothing was retried: {run.describe(rc)}"
    assert reconnects(run) or kinds(run, "run")[1:], (
        f"{context}: nothing reconnected: {[e for e in run.events if e['kind'] != 'batch']}"
    )
    crashed = side == "destination" and how == "crash-immediate"
    check_copy(run, rc, source, dest, ids, context, crashed=crashed)
    print(f"{context}: {len(kinds(run, 'retry'))} retries; {[e['text'] for e in reconnects(run)]}")


def test_done_survives_a_destination_crash_right_after_exit_0(
    tmp_path: Path, private_pg: PrivatePostgres, pg: Database
) -> None:
    """Once `run` exits 0 the copy is durable: a crash of the destination server (immediate
    shutdown: no checkpoint, no WAL flush) right afterwards takes nothing back. Batches commit
    asynchronously; the commit that records `done` must wait for the WAL, and so for them."""
    context = "destination crash right after exit 0"
    rows = make_rows(ROWS, 8)
    ids = [r[0] for r in rows]
    create_source(pg, rows)
    dest = private_db(private_pg, "mp_done")
    create_destination(dest)
    pipeline = write_pipeline(tmp_path, "done", pg, dest, batch_size=BATCH, workers=2)
    run = Cli.run(pipeline)
    rc = run.finish()
    assert rc == 0, f"{context}: {run.describe(rc)}"
    # At once: without the flush, 5 crashes out of 5 here took back the last batches.
    before = start_time(private_pg)
    private_pg.stop("immediate")
    private_pg.start()
    assert start_time(private_pg) > before, f"{context}: the server did not restart"

    status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
    assert (status["status"], status["phase"]) == ("done", "done"), f"{context}: {status}"
    assert assert_same_rows(pg, dest, context) == ROWS
    assert_ledger_exact(dest, "done", ids, BATCH, context)


# --- 4, 5: a server that stays down: retries run out, the run pauses and raises the alarm ---------


def stop_mid_copy(run: Cli, signals: CommitSignals, server: PrivatePostgres, context: str) -> None:
    """Once KILL_AFTER batches have committed on the private destination, stop it for good."""
    assert signals.wait(KILL_AFTER), f"{context}: no commits seen: {run.describe(run.finish())}"
    signals.close()
    server.stop("fast")


@pytest.mark.parametrize("progress", ["plain", "jsonl"])
def test_destination_down_retries_run_out_alert_then_resume(
    tmp_path: Path, private_pg: PrivatePostgres, pg: Database, progress: str
) -> None:
    """The private destination is stopped mid-copy and stays down: three attempts, then exit 3,
    an ALERT line and one webhook POST. Nothing secret in any of it. The destination could not
    record `paused` while down, so `status` says `interrupted` (the holder is gone mid-copy);
    once the server is back, `run` finishes the copy."""
    context = f"destination down, progress {progress}"
    rows = make_rows(ROWS, 4)
    ids = [r[0] for r in rows]
    dest = private_db(private_pg, "mp_down")
    create_source(pg, rows)
    create_destination(dest)
    signals = CommitSignals(dest)
    source = Database("postgresql", with_password(pg.url))
    with WebhookReceiver() as receiver:
        pipeline = write_pipeline(tmp_path, "dbdown", source, dest, batch_size=BATCH, workers=1)
        update_pipeline(
            pipeline, retry=GIVE_UP_RETRY, alert_webhook=receiver.url(f"/alerts?token={TOKEN}")
        )
        run = Cli("run", str(pipeline), "--progress", progress, cwd=tmp_path)
        stop_mid_copy(run, signals, private_pg, context)
        rc = run.finish()
        assert rc == 3, f"{context}: {run.describe(rc)}"
        assert receiver.posted.wait(10), f"{context}: no webhook POST: {run.describe(rc)}"

    stdout = "\n".join(str(e) for e in run.events)
    resume = f"To resume: milepost run {pipeline}"
    gave_up = "gave up after 3 attempts"
    if progress == "plain":
        # Lines for people, on stderr: the retries, the alert, and the final error.
        assert run.stderr.count("attempt ") >= 2, f"{context}: no retries shown: {run.stderr}"
        assert "ALERT: pipeline 'dbdown' paused: " in run.stderr, run.stderr
        assert resume in run.stderr, run.stderr
    else:
        # Events for programs, on stdout (the ALERT line is one of them); stderr has the
        # final error.
        retried = kinds(run, "retry")
        assert [e["data"]["attempt"] for e in retried] == [2, 3], f"{context}: {retried}"
        alerts = kinds(run, "alert")
        assert len(alerts) == 1 and alerts[0]["stream"] == TABLE, f"{context}: {alerts}"
        assert alerts[0]["text"].startswith("ALERT: pipeline 'dbdown' paused: "), alerts
        assert alerts[0]["text"].endswith(resume), alerts
    assert re.search(rf"milepost: Stream '{TABLE}', chunk \d+: {gave_up}", run.stderr), run.stderr

    assert len(receiver.bodies) == 1, f"{context}: {receiver.raw}"
    body = receiver.bodies[0]
    assert receiver.paths == [f"/alerts?token={TOKEN}"]
    assert body["pipeline"] == "dbdown" and body["status"] == "paused", body
    assert body["stream"] == TABLE and body["run_id"], body
    assert gave_up in body["error"] and "connection" in body["error"], body
    assert body["resume"] == f"milepost run {pipeline}", body
    for secret in (PASSWORD, TOKEN):
        for where, text in (("stderr", run.stderr), ("stdout", stdout)):
            assert secret not in text, f"{context}: a secret on {where}: {text}"
    assert PASSWORD not in receiver.raw[0].decode(), receiver.raw

    private_pg.start()
    status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
    committed = count_rows(dest)
    # What the product does: the ledger lives in the destination, which was down when the run
    # gave up, so `paused` could not be written; the dead holder shows as `interrupted`.
    assert status["status"] == "interrupted", f"{context}: {status}"
    assert status["phase"] == "copy" and status["lease"] is None, status
    assert status["rows_written"] == committed, f"{context}: ledger {status}, table {committed}"
    assert KILL_AFTER * BATCH <= committed < ROWS, f"{context}: {committed} rows committed"
    assert PASSWORD not in str(status)

    again = Cli.run(pipeline)
    rc = again.finish()
    assert rc == 0, f"{context}, resumed: {again.describe(rc)}"
    assert "resuming" in kinds(again, "run")[0]["text"], again.events[:3]
    assert assert_same_rows(source, dest, f"{context}, resumed") == ROWS
    assert_ledger_exact(dest, "dbdown", ids, BATCH, f"{context}, resumed")


def test_source_down_retries_run_out_status_paused(
    tmp_path: Path, private_pg: PrivatePostgres, pg: Database
) -> None:
    """The other half of the status question: when the *source* stays down, the destination
    still answers, so the ledger records `paused` with the reason; `run` resumes later."""
    context = "source down"
    rows = make_rows(ROWS, 5)
    ids = [r[0] for r in rows]
    source = private_db(private_pg, "mp_down_src")
    create_source(source, rows)
    create_destination(pg)
    with WebhookReceiver() as receiver:
        pipeline = write_pipeline(tmp_path, "srcdown", source, pg, batch_size=BATCH, workers=1)
        update_pipeline(pipeline, retry=GIVE_UP_RETRY, alert_webhook=receiver.url())
        run = Cli.run(pipeline)
        assert run.wait_for("batch", KILL_AFTER), f"{context}: {run.describe(run.finish())}"
        private_pg.stop("fast")
        rc = run.finish()
        assert rc == 3, f"{context}: {run.describe(rc)}"
        assert receiver.posted.wait(10) and len(receiver.bodies) == 1, receiver.raw
    assert len(kinds(run, "retry")) == 2 and len(kinds(run, "alert")) == 1, run.events[-5:]

    status = cli_json("status", str(pipeline), "--json", cwd=tmp_path)
    assert status["status"] == "paused", f"{context}: {status}"
    assert "gave up after 3 attempts" in (status["message"] or ""), status
    assert status["rows_written"] == count_rows(pg) >= KILL_AFTER * BATCH, status

    private_pg.start()
    again = Cli.run(pipeline)
    rc = again.finish()
    assert rc == 0, f"{context}, resumed: {again.describe(rc)}"
    assert assert_same_rows(source, pg, f"{context}, resumed") == ROWS
    assert_ledger_exact(pg, "srcdown", ids, BATCH, f"{context}, resumed")


def test_alert_webhook_down_costs_a_message_only(
    tmp_path: Path, private_pg: PrivatePostgres, pg: Database
) -> None:
    """A webhook receiver that is not there: the run still pauses with exit 3 and the ALERT
    line, says the webhook did not take it, and the data resumes as ever."""
    context = "webhook down"
    rows = make_rows(ROWS, 6)
    ids = [r[0] for r in rows]
    dest = private_db(private_pg, "mp_hookdown")
    create_source(pg, rows)
    create_destination(dest)
    signals = CommitSignals(dest)
    port = free_port()  # nothing listens here
    pipeline = write_pipeline(tmp_path, "hookdown", pg, dest, batch_size=BATCH, workers=1)
    update_pipeline(
        pipeline, retry=GIVE_UP_RETRY, alert_webhook=f"http://127.0.0.1:{port}/h?token={TOKEN}"
    )
    run = Cli("run", str(pipeline), "--progress", "plain", cwd=tmp_path)
    stop_mid_copy(run, signals, private_pg, context)
    rc = run.finish()

    assert rc == 3, f"{context}: {run.describe(rc)}"
    assert "ALERT: pipeline 'hookdown' paused: " in run.stderr, run.stderr
    assert (
        f"The alert webhook http://127.0.0.1:{port}/… did not take the alert: ConnectError."
        in run.stderr
    ), run.stderr
    assert TOKEN not in run.stderr, run.stderr

    private_pg.start()
    again = Cli.run(pipeline)
    rc = again.finish()
    assert rc == 0, f"{context}, resumed: {again.describe(rc)}"
    assert assert_same_rows(pg, dest, f"{context}, resumed") == ROWS
    assert_ledger_exact(dest, "hookdown", ids, BATCH, f"{context}, resumed")


# --- 6: an error that is not transient is not retried ---------------------------------------------


@pytest.mark.parametrize("dest_family", ["postgresql", "mysql"])
def test_destination_table_dropped_mid_run_fails_without_retrying(
    tmp_path: Path, pg: Database, dest_family: str
) -> None:
    """Someone drops the destination table mid-copy (the DROP waits for the batch in flight).
    Retrying cannot bring it back: exit 1 at once, naming the table, no retry and no alert.
    The next run refuses to resume into a table that is gone (exit 2); --fresh starts over."""
    context = f"postgresql->{dest_family}, destination table dropped"
    rows = make_rows(DROP_ROWS, 7)
    with database(dest_family, tmp_path, "dst") as dest:
        create_source(pg, rows)
        create_destination(dest)
        pipeline = write_pipeline(tmp_path, "dropped", pg, dest, batch_size=BATCH, workers=1)
        update_pipeline(pipeline, retry=QUICK_RETRY)
        run = Cli.run(pipeline)
        assert run.wait_for("batch", 3), f"{context}: {run.describe(run.finish())}"
        dest.sql(f"DROP TABLE {TABLE}")
        rc = run.finish()

        assert rc == 1, f"{context}: {run.describe(rc)}"
        assert len(kinds(run, "batch")) < DROP_ROWS // BATCH, f"{context}: the copy had finished"
        assert not kinds(run, "retry"), f"{context}: retried: {kinds(run, 'retry')}"
        assert not kinds(run, "alert"), f"{context}: {kinds(run, 'alert')}"
        assert "could not be written" in run.stderr and TABLE in run.stderr, run.stderr

        refused = Cli.run(pipeline)
        rc = refused.finish()
        assert rc == 2 and "no longer exists" in refused.stderr, refused.describe(rc)

        fresh = Cli.run(pipeline, "--fresh")
        rc = fresh.finish()
        assert rc == 0, f"{context}, --fresh: {fresh.describe(rc)}"
        assert assert_same_rows(pg, dest, f"{context}, --fresh") == DROP_ROWS


# --- 7: torture: many kills at random moments -----------------------------------------------------

TORTURE_PAIRS = [
    ("postgresql", "postgresql"),
    ("mysql", "postgresql"),
    ("postgresql", "mysql"),
]
TORTURE_ROWS = 30_000
TORTURE_BATCH = 250  # ~120 batches a copy, in 6 chunks
TORTURE_RETRY = {"max_attempts": 10, "initial_delay_s": 0.05, "max_delay_s": 0.5}


def _tortured_copy(
    tmp_path: Path,
    source: Database,
    source_killer: BackendKiller,
    dest_family: str,
    ids: list[int],
    rng: random.Random,
    kills: int,
    tally: Counter[str],
    label: str,
) -> None:
    """One copy into a fresh destination, its connections killed `kills` times."""
    workers = rng.choice([1, 2])
    plan = [
        (k, rng.choice(["source", "destination"])) for k in sorted(rng.sample(range(2, 100), kills))
    ]
    context = f"{label}, {workers} worker(s), kills after batches {plan}"
    with database(dest_family, tmp_path, "dst") as dest, BackendKiller(dest) as dest_killer:
        create_destination(dest)
        name = f"torture{tally['runs']}"
        pipeline = write_pipeline(
            tmp_path, name, source, dest, batch_size=TORTURE_BATCH, workers=workers
        )
        update_pipeline(pipeline, retry=TORTURE_RETRY)
        run = Cli.run(pipeline)
        for k, role in plan:
            killer = source_killer if role == "source" else dest_killer
            while True:
                assert run.wait_for("batch", k), f"{context}: {run.describe(run.finish())}"
                time.sleep(rng.uniform(0, 0.015))  # where in the next batch the kill lands
                killed = killer.kill(role)
                if killed:
                    break
                # Every such connection is down already (the workers are still reconnecting
                # after the last kill): aim at the next batch instead.
                tally["kills deferred"] += 1
                k += 1
            family = source.family if role == "source" else dest_family
            tally[f"backends {family}"] += killed
            tally[f"kills {role}"] += 1
        rc = run.finish()
        assert kinds(run, "retry"), f"{context}: nothing was retried: {run.describe(rc)}"
        check_copy(run, rc, source, dest, ids, context, batch_size=TORTURE_BATCH)
    tally["runs"] += 1
    tally["rows"] += len(ids)
    tally["retries"] += len(kinds(run, "retry"))
    tally["reconnects"] += len(reconnects(run))
    tally["reentries"] += sum(bool(e["data"].get("resumed")) for e in kinds(run, "run"))


@pytest.mark.torture
def test_torture_killed_backends_lose_and_double_nothing(tmp_path: Path) -> None:
    """Copies from PostgreSQL and MariaDB, each with several kills of the source's or the
    destination's connections (chosen at random) after random batches, a few random
    milliseconds in. Every copy must end with exit 0, every row exactly once, an exact ledger
    and an exact account of its own. MILEPOST_TORTURE_DB_RUNS copies per pair (default 10),
    MILEPOST_TORTURE_DB_KILLS kills per copy (default 4)."""
    runs_per_pair = int(os.environ.get("MILEPOST_TORTURE_DB_RUNS") or 10)
    kills_per_run = int(os.environ.get("MILEPOST_TORTURE_DB_KILLS") or 4)
    rng, seed = seeded("db-fault torture")
    tally: Counter[str] = Counter()
    started = time.monotonic()
    for source_family, dest_family in TORTURE_PAIRS:
        pair = f"{source_family}->{dest_family}"
        rows = make_rows(TORTURE_ROWS, rng.randrange(2**32))
        ids = [r[0] for r in rows]
        with database(source_family, tmp_path, "src") as source, BackendKiller(source) as killer:
            create_source(source, rows)
            for n in range(runs_per_pair):
                label = f"{pair} copy {n + 1} of {runs_per_pair} (seed {seed})"
                _tortured_copy(
                    tmp_path, source, killer, dest_family, ids, rng, kills_per_run, tally, label
                )
                tally[f"runs {pair}"] += 1
    elapsed = time.monotonic() - started
    kills = tally["kills source"] + tally["kills destination"]
    backends = tally["backends postgresql"] + tally["backends mysql"]
    pairs = ", ".join(f"{tally[f'runs {s}->{d}']} {s}->{d}" for s, d in TORTURE_PAIRS)
    print(
        f"\ndb-fault torture: {tally['runs']} copies ({pairs}); {kills} kills "
        f"({tally['kills source']} of source, {tally['kills destination']} of destination "
        f"connections), {backends} backends killed ({tally['backends postgresql']} PostgreSQL, "
        f"{tally['backends mysql']} MariaDB); {tally['retries']} retries, "
        f"{tally['reconnects']} chunk reconnects, {tally['reentries']} run re-entries, "
        f"{tally['kills deferred']} kills deferred a batch (nothing to kill yet); "
        f"{tally['rows']:,} rows copied: 0 lost, 0 duplicated, ledger exact; "
        f"{elapsed:.1f} s (seed {seed})"
    )
    assert kills == len(TORTURE_PAIRS) * runs_per_pair * kills_per_run, tally
