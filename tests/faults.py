"""Fault injection helpers: a table worth killing a copy over, the real CLI as a child process
driven by its JSON-lines events, and a row-by-row comparison of source and destination.

Every wait here is on something the child does (a blocking readline of its next event, or
its exit), never on the clock. The only sleeps are a few random milliseconds *after* an event
and before a kill, to vary where in the next batch the kill lands: fault timing, not
synchronisation. A watchdog kills a child that hangs, so a bug shows as a failed test rather
than a stuck suite.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import yaml

from conftest import Database, make_database, mysql_connection

TABLE = "items"
COLUMNS = ["id", "name", "qty", "price", "created_at", "note"]

# Non-ASCII, quotes, COPY's escape characters and look-alikes of NULL: whatever a
# transfer path could mangle, double or drop.
NAMES = [
    "Zoë",
    "Björn Åström",
    "Dmitri Шостакович",
    "東京タワー",
    "Eun-ji 은지",
    "Fatima فاطمة",
    "rocket 🚀",
    "O'Brien",
    'say "hi"',
    "back\\slash",
    "plain",
]
NOTES = [
    None,
    None,
    "",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "back\\slash \\N \\. end",
    "ünïcødé ✓ 🎉",
    "NULL",
    "\\N",
    "a rather longer note " * 8,
]

SOURCE_DDL = {
    "postgresql": "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(80) NOT NULL, "
    "qty BIGINT, price NUMERIC(12, 2), created_at TIMESTAMP(6), note TEXT)",
    "mysql": "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(80) NOT NULL, "
    "qty BIGINT, price DECIMAL(12, 2), created_at DATETIME(6) NULL, note TEXT)",
    "sqlite": "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(80) NOT NULL, "
    "qty BIGINT, price NUMERIC(12, 2), created_at DATETIME, note TEXT)",
}
# The destination has NO primary key and no unique index: a row written twice stays twice.
DEST_DDL = {
    "postgresql": "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(80) NOT NULL, "
    "qty BIGINT, price NUMERIC(12, 2), created_at TIMESTAMP(6), note TEXT)",
    "mysql": "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(80) NOT NULL, "
    "qty BIGINT, price DECIMAL(12, 2), created_at DATETIME(6) NULL, note TEXT)",
    "sqlite": "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(80) NOT NULL, "
    "qty BIGINT, price NUMERIC(12, 2), created_at DATETIME, note TEXT)",
}


# --- randomness that can be replayed ---------------------------------------------------------


def seeded(label: str) -> tuple[random.Random, int]:
    """A random generator and its seed (MILEPOST_FAULT_SEED replays a failure).

    The seed is printed, so pytest shows it with the captured output of a failed test.
    """
    seed = int(os.environ.get("MILEPOST_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"{label}: seed {seed} (replay with MILEPOST_FAULT_SEED={seed})")
    return random.Random(seed), seed


# --- the data --------------------------------------------------------------------------------


def make_rows(count: int, seed: int) -> list[tuple[Any, ...]]:
    """`count` rows with gaps in the ids, NULLs in every nullable column, non-ASCII text."""
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(1, count * 3), count))
    epoch = dt.datetime(2001, 2, 3, 4, 5, 6)
    rows = []
    for i in ids:
        qty = None if rng.random() < 0.1 else rng.randint(-(10**12), 10**12)
        cents = rng.randint(-(10**12) + 1, 10**12 - 1)
        price = None if rng.random() < 0.1 else Decimal(cents).scaleb(-2)
        created = (
            None
            if rng.random() < 0.05
            else epoch
            + dt.timedelta(seconds=rng.randint(0, 10**9), microseconds=rng.randint(0, 999_999))
        )
        rows.append((i, f"{rng.choice(NAMES)} {i}", qty, price, created, rng.choice(NOTES)))
    return rows


def create_source(db: Database, rows: list[tuple[Any, ...]]) -> None:
    db.sql(SOURCE_DDL[db.family])
    if db.family == "postgresql":
        with psycopg.connect(db.url) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(f"ANALYZE {TABLE}")
    elif db.family == "mysql":
        with (
            contextlib.closing(mysql_connection(db.url, autocommit=False)) as conn,
            conn.cursor() as cur,
        ):
            insert = f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s)"
            for start in range(0, len(rows), 5000):
                cur.executemany(insert, rows[start : start + 5000])
            conn.commit()
    else:
        import sqlite3

        conn = sqlite3.connect(db.path)
        with conn:
            conn.executemany(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (i, name, qty, None if p is None else str(p), _iso(ts), note)
                    for i, name, qty, p, ts, note in rows
                ],
            )
        conn.close()


def create_destination(db: Database) -> None:
    """Pre-create the destination table without a primary key; milepost writes into it."""
    db.sql(DEST_DDL[db.family])


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(" ", timespec="microseconds")


@contextlib.contextmanager
def database(family: str, tmp_path: Path, stem: str) -> Iterator[Database]:
    """A throwaway database of any family, for tests parametrized over engine pairs."""
    yield from make_database(family, tmp_path, stem)


# --- row-by-row comparison -------------------------------------------------------------------


def canonical(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """One row as engine-independent values; drivers differ in representation, not content."""
    id_, name, qty, price, created, note = row
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created)
    return (
        int(id_),
        name,
        None if qty is None else int(qty),
        # SQLite's NUMERIC affinity hands back 12.5 or 100 for 12.50 and 100.00.
        None if price is None else Decimal(str(price)).normalize(),
        None if created is None else created.replace(tzinfo=None),
        note,
    )


def table_rows(db: Database, table: str = TABLE) -> Counter[tuple[Any, ...]]:
    """Every row of the table, canonical, as a multiset: a doubled row counts twice."""
    return Counter(canonical(r) for r in db.sql(f"SELECT {', '.join(COLUMNS)} FROM {table}"))


def assert_same_rows(source: Database, dest: Database, context: str) -> int:
    """The destination holds exactly the source's rows: none missing, none doubled, none
    changed. Returns the number of rows."""
    want, got = table_rows(source), table_rows(dest)
    if want == got:
        return sum(got.values())
    missing, extra = want - got, got - want
    per_id = Counter(row[0] for row in got.elements())
    doubled = sorted(i for i, n in per_id.items() if n > 1)
    changed = sorted({r[0] for r in missing} & {r[0] for r in extra})
    raise AssertionError(
        f"{context}: the destination differs from the source row by row: "
        f"{sum(want.values())} source rows, {sum(got.values())} destination rows; "
        f"{sum(missing.values())} missing (ids {sorted(r[0] for r in missing)[:20]}), "
        f"{sum(extra.values())} unexpected (ids {sorted(r[0] for r in extra)[:20]}), "
        f"doubled ids {doubled[:20]}, changed ids {changed[:20]}; "
        f"first missing {sorted(missing, key=lambda r: r[0])[:2]}, "
        f"first unexpected {sorted(extra, key=lambda r: r[0])[:2]}"
    )


def ledger_rows(dest: Database, pipeline: str) -> int:
    """Rows the ledger says were written for the pipeline (0 before there is a ledger)."""
    exists = {
        "postgresql": "SELECT to_regclass('_milepost_chunks') IS NOT NULL",
        "mysql": "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name = '_milepost_chunks'",
        "sqlite": "SELECT count(*) FROM sqlite_master WHERE name = '_milepost_chunks'",
    }[dest.family]
    if not dest.sql(exists)[0][0]:
        return 0
    mark = "?" if dest.family == "sqlite" else "%s"
    rows = dest.sql(
        f"SELECT COALESCE(SUM(rows_written), 0) FROM _milepost_chunks WHERE pipeline = {mark}",
        (pipeline,),
    )
    return int(rows[0][0])


def count_rows(db: Database, table: str = TABLE) -> int:
    return int(db.sql(f"SELECT count(*) FROM {table}")[0][0])


# --- the pipeline file -----------------------------------------------------------------------


def write_pipeline(
    directory: Path,
    name: str,
    source: Database,
    dest: Database,
    *,
    batch_size: int = 500,
    workers: int = 1,
) -> Path:
    path = directory / f"{name}.yml"
    doc = {
        "name": name,
        "source": {"url": source.url},
        "destination": {"url": dest.url},
        "streams": [{"table": TABLE}],
        "batch_size": batch_size,
        "workers": workers,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


# --- the real CLI as a child process ---------------------------------------------------------

Event = dict[str, Any]


class Cli:
    """One real `python -m milepost ...` process. Its stdout is read event by event (JSON
    lines); its stderr is collected by a thread so the child never blocks on it."""

    def __init__(self, *args: str, cwd: Path, timeout_s: float = 240.0) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milepost", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            cwd=cwd,
        )
        self.pid = self.proc.pid
        self.events: list[Event] = []
        self.arrivals: list[float] = []  # when each event was read (time.monotonic)
        self.hung = False
        self._stderr: list[str] = []
        self._stderr_closed = False
        self._stderr_changed = threading.Condition()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()
        self._watchdog = threading.Timer(timeout_s, self._kill_hung)
        self._watchdog.daemon = True
        self._watchdog.start()

    @classmethod
    def run(cls, pipeline: Path, *extra: str, cwd: Path | None = None) -> Cli:
        """`milepost run PIPELINE --progress jsonl [extra...]`."""
        return cls("run", str(pipeline), "--progress", "jsonl", *extra, cwd=cwd or pipeline.parent)

    # --- reading what the child says ---

    def next_event(self) -> Event | None:
        """The child's next event (blocking), or None once it closed its stdout."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            return None
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = {"kind": "text", "text": line.rstrip("\n")}
        self.events.append(event)
        self.arrivals.append(time.monotonic())
        return event

    def wait_for(self, kind: str, nth: int = 1, text: str | None = None) -> Event | None:
        """Read events until the `nth` event of `kind` (with `text`, if given) in this run;
        None if the child closes its stdout first."""

        def wanted(event: Event) -> bool:
            return event.get("kind") == kind and (text is None or event.get("text") == text)

        matches = [e for e in self.events if wanted(e)]
        if len(matches) >= nth:
            return matches[nth - 1]
        seen = len(matches)
        while (event := self.next_event()) is not None:
            if wanted(event):
                seen += 1
                if seen == nth:
                    return event
        return None

    def wait_for_stderr(self, text: str) -> bool:
        """Block until a line containing `text` appears on stderr; False if stderr closes first."""
        with self._stderr_changed:
            while not any(text in line for line in self._stderr):
                if self._stderr_closed:
                    return False
                self._stderr_changed.wait()
            return True

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._stderr_changed:
                self._stderr.append(line)
                self._stderr_changed.notify_all()
        with self._stderr_changed:
            self._stderr_closed = True
            self._stderr_changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._stderr_changed:
            return "".join(self._stderr)

    def messages(self) -> list[str]:
        return [e.get("text", "") for e in self.events if e.get("kind") == "message"]

    # --- ending it ---

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> int:
        """SIGKILL the process and reap it (a reaped process is gone; its pid is free)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        """Read every remaining event, reap the child, and return its exit code."""
        while self.next_event() is not None:
            pass
        rc = self.proc.wait()
        self._watchdog.cancel()
        self._stderr_reader.join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        if self.hung:
            raise AssertionError(f"milepost {' '.join(self.args)} hung; stderr:\n{self.stderr}")
        return rc

    def _kill_hung(self) -> None:
        self.hung = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def describe(self, rc: int) -> str:
        return f"exit {rc}; events {self.events[-5:]}; stderr:\n{self.stderr}"


def cli_json(*args: str, cwd: Path) -> Any:
    """Run a short CLI command that prints one JSON document (e.g. `status --json`)."""
    done = subprocess.run(
        [sys.executable, "-m", "milepost", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        timeout=120,
    )
    assert done.returncode == 0, f"milepost {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return json.loads(done.stdout)


# --- kill, rerun, repeat ---------------------------------------------------------------------


@dataclass
class KillLog:
    """What a kill-and-resume loop did, for assertions and for the failure message."""

    kills: int = 0
    runs: int = 0
    where: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.runs} runs, {self.kills} kills: " + "; ".join(self.where)


@dataclass(frozen=True)
class Trigger:
    """Kill after the `nth` event of `kind` (with `text`), then `max_delay_s` at most."""

    kind: str
    nth: int = 1
    text: str | None = None
    max_delay_s: float = 0.03

    def __str__(self) -> str:
        return f"{self.kind} {self.text or '#' + str(self.nth)}"


def _choose_trigger(rng: random.Random, room: int, pace_s: float | None, fresh: bool) -> Trigger:
    """Usually the k-th committed batch of this run; sometimes the schema phase of a fresh
    run, the start of the copy phase, or just before the first batch.

    After a batch the delay stays within about two batches' time (the pace seen so far), so
    the kill lands inside the next batch or its ledger write rather than many batches on.
    """
    near = 0.03 if pace_s is None else min(0.03, 2 * pace_s)
    if fresh and rng.random() < 0.25:
        return Trigger("phase", text="schema")
    if rng.random() < 0.2:
        early = [
            Trigger("run", max_delay_s=near),
            Trigger("phase", text="copy", max_delay_s=near),
            Trigger("stream", max_delay_s=near),
        ]
        return rng.choice(early)
    return Trigger("batch", rng.randint(1, room), max_delay_s=near)


def _pace(run: Cli) -> float | None:
    """Seconds between committed batches in this run, on average; None if unknown."""
    times = [t for e, t in zip(run.events, run.arrivals, strict=True) if e.get("kind") == "batch"]
    if len(times) < 2:
        return None
    return (times[-1] - times[0]) / (len(times) - 1)


def kill_and_resume(
    pipeline: Path,
    dest: Database,
    rng: random.Random,
    kills: int,
    *,
    rows: int,
    batch_size: int,
    max_batches: int,
    context: str,
    aim_at_the_end: bool = False,
) -> KillLog:
    """SIGKILL the real `milepost run` at least `kills` times at random events, rerunning it
    after each, until a run exits 0.

    The k of "after the k-th batch" is drawn so that enough of the copy stays for the kills
    still to come (from what the ledger says is committed), so every kill happens. Once they
    have, with `aim_at_the_end` one more kill aims just after the last batch (the finalize
    phase, or the moment the run records that it is done).
    """
    log = KillLog()
    name = pipeline.stem
    pace_s: float | None = None
    killed: Cli | None = None  # the run killed last, if the previous run was killed
    while True:
        log.runs += 1
        assert log.runs <= kills + 10, f"{context}: no end in sight after {log}"
        committed = ledger_rows(dest, name)
        trigger = None
        if log.kills < kills:
            left = (rows - committed) // batch_size
            room = max(1, min(max_batches, left // (kills - log.kills + 1)))
            trigger = _choose_trigger(rng, room, pace_s, fresh=log.runs == 1)
        elif aim_at_the_end:
            aim_at_the_end = False
            trigger = Trigger("stream_done", max_delay_s=0.005)
        run = Cli.run(pipeline)
        if trigger is not None and run.wait_for(trigger.kind, trigger.nth, trigger.text):
            delay_ms = round(rng.uniform(0, trigger.max_delay_s) * 1000, 1)
            time.sleep(delay_ms / 1000)  # where the kill lands, not synchronisation
            rc = run.kill()
            pace_s = _pace(run) or pace_s
            assert rc in (0, -signal.SIGKILL), f"{context}: {run.describe(rc)}"
            _check_takeover(run, killed, f"{context} after {log}")
            what = f"{trigger} +{delay_ms} ms ({committed} rows before)"
            if rc == -signal.SIGKILL:
                log.kills += 1
                log.where.append(f"killed after {what}")
                killed = run
                continue
            log.where.append(f"finished before the kill after {what}")
            return log
        rc = run.finish()
        assert rc == 0, f"{context}: after {log}: {run.describe(rc)}"
        _check_takeover(run, killed, f"{context} after {log}")
        log.where.append("ran to completion")
        return log


def _check_takeover(run: Cli, previous: Cli | None, context: str) -> None:
    """A run after a kill takes the dead runner's lease at once, and says so: unless the kill
    came so late that the dead runner had finished and released its lease already."""
    if previous is None or any(e.get("kind") == "finished" for e in previous.events):
        return
    assert any("took over" in m for m in run.messages()), (
        f"{context}: the run after a kill did not report taking over the lease: "
        f"{run.events[:5]}; the killed run's last events: {previous.events[-3:]}"
    )


# === database faults: killed backends, restarted servers, alerts (tests/test_db_faults.py) ===
# Appended as one section; its imports stay here so the section reads on its own.

import http.server  # noqa: E402
import math  # noqa: E402

from sqlalchemy.engine import make_url  # noqa: E402

from milepost.keyset import decode_key  # noqa: E402
from servers import kill_mysql_threads  # noqa: E402


def update_pipeline(path: Path, **changes: Any) -> Path:
    """Set top-level keys of a pipeline file written by `write_pipeline` (e.g. `retry`,
    `alert_webhook`); a value of None removes the key."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@dataclass(frozen=True)
class ChunkRecord:
    chunk: int
    lo: Any
    hi: Any
    rows_written: int
    batches: int
    status: str


def chunk_records(dest: Database, pipeline: str) -> list[ChunkRecord]:
    mark = "?" if dest.family == "sqlite" else "%s"
    rows = dest.sql(
        "SELECT chunk, lo, hi, rows_written, batches, status FROM _milepost_chunks "
        f"WHERE pipeline = {mark} ORDER BY stream, chunk",
        (pipeline,),
    )
    return [
        ChunkRecord(int(c), decode_key(lo), decode_key(hi), int(w), int(b), s)
        for c, lo, hi, w, b, s in rows
    ]


def assert_ledger_exact(
    dest: Database, pipeline: str, ids: list[int], batch_size: int, context: str
) -> int:
    """Every chunk of the (single-stream, integer-cursor) pipeline is done, its rows_written is
    exactly the number of source ids in (lo, hi], and its batch count is exactly what full
    batches of `batch_size` take: a batch counted twice, or one redone after it committed,
    would show in one or the other. Returns the total number of batches."""
    chunks = chunk_records(dest, pipeline)
    assert chunks, f"{context}: the ledger records no chunks"
    problems = []
    for c in chunks:
        lo = None if c.lo is None else c.lo[0]
        hi = None if c.hi is None else c.hi[0]
        want = sum(1 for i in ids if (lo is None or i > lo) and (hi is None or i <= hi))
        batches = math.ceil(want / batch_size)
        # A chunk with no rows, or ending exactly on a batch boundary, may take one more
        # (empty) batch to learn that it is done.
        allowed = {batches, batches + 1} if want % batch_size == 0 else {batches}
        if c.status != "done" or c.rows_written != want or c.batches not in allowed:
            problems.append(
                f"chunk {c.chunk} ({lo}, {hi}]: status {c.status}, {c.rows_written} rows in "
                f"{c.batches} batches; expected done, {want} rows in {sorted(allowed)} batches"
            )
    assert not problems, f"{context}: the ledger is not exact: " + "; ".join(problems)
    return sum(c.batches for c in chunks)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (a free port) that records the JSON bodies POSTed to it,
    for alert webhooks. `posted` is set on each POST, so a test waits on it, not on the clock.
    Use as a context manager."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.raw: list[bytes] = []
        self.paths: list[str] = []
        self.posted = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.raw.append(body)
                receiver.paths.append(self.path)
                try:
                    receiver.bodies.append(json.loads(body))
                except ValueError:
                    receiver.bodies.append(None)
                self.send_response(204)
                self.end_headers()
                receiver.posted.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # pytest shows the test's own output; the access log is noise

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


class CommitSignals:
    """A notification each time a transaction that wrote into a PostgreSQL table commits: a
    statement trigger calls pg_notify, delivered at COMMIT to our LISTENing connection. This
    follows a copy batch by batch without reading the child's stdout (when it prints plain
    text rather than events), and without polling."""

    def __init__(self, db: Database, table: str = TABLE) -> None:
        channel = f"mp_test_commits_{table}"
        db.sql(
            f"CREATE FUNCTION {channel}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END$$"
        )
        db.sql(
            f"CREATE TRIGGER {channel} AFTER INSERT ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {channel}()"
        )
        # Not "milepost-…": BackendKiller must never take this one.
        self.conn = psycopg.connect(db.url, autocommit=True, application_name="fault-listener")
        self.conn.execute(f"LISTEN {channel}")
        self.seen = 0

    def wait(self, n: int, timeout_s: float = 120.0) -> bool:
        """Block until `n` commits have been seen in all; False if `timeout_s` passes first."""
        if self.seen < n:
            for _ in self.conn.notifies(timeout=timeout_s, stop_after=n - self.seen):
                self.seen += 1
        return self.seen >= n

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.close()


class BackendKiller:
    """Kill milepost's connections to one database as an administrator would: on PostgreSQL
    pg_terminate_backend of the backends whose application_name is `milepost-{role}` (the
    heartbeat is a destination connection too), on MariaDB KILL CONNECTION of every session
    on the database (a test's source and destination are different databases, so those are
    the role's sessions).

    Unlike servers.terminate_postgres_backends and kill_mysql_connections, the admin
    connection is opened beforehand: opening one takes tens of milliseconds (MariaDB's
    handshake most), in which a fast copy commits several batches. With it ready, the kill
    lands where the test aimed it."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dbname = make_url(db.url).database or ""
        if db.family == "postgresql":
            admin = make_url(db.url).set(database="postgres").render_as_string(hide_password=False)
            # Not "milepost…", so it never matches the prefix it kills by.
            self.conn: Any = psycopg.connect(
                admin, autocommit=True, application_name="fault-injector"
            )
        elif db.family == "mysql":
            u = make_url(db.url)
            self.conn = mysql_connection(u.set(database=None).render_as_string(False))
        else:
            raise ValueError(f"no connections to kill on {db.family}")

    def kill(self, role: str, wait_s: float = 10.0) -> int:
        """Kill them; return how many, once they have left the server's session list."""
        if self.db.family == "postgresql":
            rows = self.conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
                (self.dbname, f"milepost-{role}"),
            ).fetchall()
            killed = [pid for pid, done in rows if done]
            listed = "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)"
            args: Any = (killed,)
        else:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT ID FROM information_schema.PROCESSLIST "
                    "WHERE DB = %s AND ID <> CONNECTION_ID()",
                    (self.dbname,),
                )
                killed = kill_mysql_threads(cur, [int(r[0]) for r in cur.fetchall()])
            marks = ", ".join(["%s"] * len(killed))
            listed = f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({marks})"
            args = tuple(killed)
        deadline = time.monotonic() + wait_s
        while killed and self._query(listed, args):
            assert time.monotonic() < deadline, f"killed sessions on {self.dbname} linger"
            time.sleep(0.005)  # polling for the sessions to be gone, with a deadline
        return len(killed)

    def _query(self, sql: str, args: Any) -> list[Any]:
        if self.db.family == "postgresql":
            return self.conn.execute(sql, args).fetchall()
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    def __enter__(self) -> BackendKiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_to_crash(pipeline: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """`milepost run` in a child process, SIGKILLed at the crash point `crash_at`
    (milepost/crash.py) when given; returncode -9 then."""
    env = {k: v for k, v in os.environ.items() if k != "MILEPOST_CRASH_AT"}
    if crash_at:
        env["MILEPOST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "milepost", "run", str(pipeline), "--progress", "plain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=pipeline.parent,
    )
