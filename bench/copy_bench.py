"""Copy benchmark: milepost against each engine's own bulk pipe, on the same machine, in one run.

Run it with `make bench`, i.e. `.venv/bin/python bench/copy_bench.py [--rows N] [--repeat K]`.

The machine it runs on is small and shared, so absolute times mean little; every
milepost figure is therefore reported as a ratio against the raw pipe of the same
pair of engines, measured in the same run with the samples interleaved (pipe,
milepost, pipe, milepost, ...) so that background noise hits both alike. Each
figure is the median of K repeats.

What it measures (see DESIGN.md, "Performance", for why these are the yardsticks):

- PostgreSQL -> PostgreSQL: `COPY ... TO STDOUT (FORMAT binary) | COPY ... FROM STDIN`
  against `milepost run` with 1 and 2 workers;
- SQLite -> PostgreSQL: `sqlite3 -csv | COPY (FORMAT csv)` against milepost;
- MariaDB -> PostgreSQL: `mariadb --batch --quick | COPY (FORMAT text)` against milepost;
- where milepost creates other column types than the source's (MariaDB DATETIME becomes
  timestamp, not timestamptz, for one), the pipe also runs into a table of milepost's
  types, and that pipe is the reference: parsing into different types (jsonb against
  text was a fifth of the pipe's time) would otherwise skew the ratio;
- milepost's peak RSS and CPU time (from `/usr/bin/time`), on a table of N rows and one
  of N/10 rows: a copier that streams bounded batches must not grow with the table;
- resume latency: a run is SIGKILLed half-way, and the time from starting the next run
  to its first committed batch is taken from its `--progress jsonl` output.

Every run is checked: the destination row count must equal the source's (the script
stops otherwise), and a cheap content fingerprint (sums over every column) is compared
and reported, so a fast but wrong pipe or copier cannot go unnoticed.

Databases and files it leaves behind on purpose: the sources are cached, because
building them takes minutes; they are rebuilt only when their row counts do not match
--rows (or their DATA_VERSION tag, bumped when the generated data changes, differs).
They are the database `milepost_bench_src` in PostgreSQL and in MariaDB, and
`bench/work/milepost_bench_src.db` (bench/work/ is gitignored and also holds the
pipeline files and logs). The destination database `milepost_bench_dst` is dropped at
the end. To reclaim everything: `DROP DATABASE milepost_bench_src` on both servers and
`rm -r bench/work`.

The milepost measured is a copy of src/milepost taken when the script starts
(bench/work/src-snapshot, put first on PYTHONPATH), so that edits landing in src/
during a run cannot mix two versions into one table.

Results go to bench/results/copy.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results" / "copy.md"
MILEPOST = Path(sys.executable).parent / "milepost"

SRC_DB = "milepost_bench_src"
DST_DB = "milepost_bench_dst"
SQLITE_SRC = WORK / f"{SRC_DB}.db"
SNAPSHOT = WORK / "src-snapshot"
TABLE = "orders"
SMALL_TABLE = "orders_small"
# Bumped whenever the generated data changes, so that a cached source of the right size
# but of an older shape is rebuilt too.
DATA_VERSION = 2
DATA_TAG = f"milepost-bench data v{DATA_VERSION}"

PG = "psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres"
MARIADB = "mariadb -h 127.0.0.1 -P 3306 -u root --default-character-set=utf8mb4"
PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"
MYSQL_URL = "mysql://root@127.0.0.1:3306/{db}"

PG_COLUMNS = """
    id bigint PRIMARY KEY,
    customer_id int,
    quantity int,
    status text,
    note text,
    amount numeric(12,2),
    created_at timestamptz,
    payload jsonb
"""

# Server-side generation: deterministic in g, some NULL notes, non-ASCII text, and now
# and then a tab, a newline and a backslash, which every text format has to escape.
PG_FILL = """
INSERT INTO {table}
SELECT g,
  1 + (g::bigint * 7919) % 100000,
  1 + g % 20,
  (ARRAY['new','paid','shipped','delivered','cancelled','refunded'])[1 + g % 6],
  CASE WHEN g % 7 = 0 THEN NULL
       WHEN g % 7 = 1 THEN 'Grüße aus Köln, Bestellung ' || g
       WHEN g % 7 = 2 THEN '注文番号 ' || g || ' — 配送済み'
       WHEN g % 997 = 3 THEN E'tab\\there, newline\\nand a back\\\\slash ' || g
       ELSE 'note ' || g END,
  round(((g * 2654435761) % 10000000) / 100.0, 2),
  timestamptz '2021-01-01 00:00:00+00' + g * interval '15.123456 seconds',
  jsonb_build_object(
    'sku', 'SKU-' || lpad((g % 50000)::text, 6, '0'),
    'channel', (ARRAY['web','app','store','phone'])[1 + g % 4],
    'city', (ARRAY['Zürich','São Paulo','東京','Oslo','Kraków'])[1 + g % 5],
    'gift', g % 9 = 0,
    'ref', md5(g::text) || left(md5((g + 1)::text), 8))
FROM generate_series(1, {rows}) g
"""

MARIADB_TABLE = f"""
CREATE TABLE {TABLE} (
    id BIGINT PRIMARY KEY,
    customer_id INT,
    quantity INT,
    status TEXT,
    note TEXT,
    amount DECIMAL(12,2),
    created_at DATETIME(6),
    payload JSON
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COMMENT='{DATA_TAG}'
"""

SQLITE_TABLE = f"""
CREATE TABLE {TABLE} (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER,
    quantity INTEGER,
    status TEXT,
    note TEXT,
    amount NUMERIC(12,2),
    created_at TIMESTAMPTZ,
    payload JSON
)
"""

# Sums over every column. Casts make it work whatever types milepost chose for the
# destination (numeric or float, timestamptz or text, jsonb, json or text).
FINGERPRINT = """
SELECT count(*), count(note), sum(length(note)), sum(length(status)),
       sum(customer_id::bigint), sum(quantity::bigint), sum(amount::numeric),
       sum(extract(epoch FROM created_at::timestamptz)), sum(length(payload::text))
FROM {table}
"""
PAYLOAD_BYTES = f"SELECT avg(octet_length(payload::text)) FROM {SMALL_TABLE}"

TARGETS = {
    "pg": ("PostgreSQL → PostgreSQL", 0.8, "raw binary COPY pipe"),
    "sqlite": ("SQLite → PostgreSQL", 0.7, "`sqlite3 -csv | COPY`"),
    "mariadb": ("MariaDB → PostgreSQL", 0.6, "`mariadb --batch | COPY`"),
}

# The yardsticks: each engine's own bulk export piped into COPY, no Python in between.
_SRC_PG = f"{PG} -d {SRC_DB}"
_DST_PG = f"{PG} -d {DST_DB}"
PIPES = {
    "pg": f"{_SRC_PG} -c 'COPY (SELECT * FROM {TABLE}) TO STDOUT (FORMAT binary)' | "
    f"{_DST_PG} -c 'COPY {TABLE} FROM STDIN (FORMAT binary)'",
    "sqlite": f"sqlite3 -csv {shlex.quote(str(SQLITE_SRC))} 'SELECT * FROM {TABLE}' | "
    f"{_DST_PG} -c 'COPY {TABLE} FROM STDIN (FORMAT csv)'",
    # --batch escapes \t \n \\ exactly as COPY's text format expects; only NULL differs.
    "mariadb": f"{MARIADB} --batch --skip-column-names --quick {SRC_DB} "
    f"-e 'SELECT * FROM {TABLE}' | PGTZ=UTC {_DST_PG} "
    f"-c \"COPY {TABLE} FROM STDIN (FORMAT text, NULL 'NULL')\"",
}
SOURCES = {
    "pg": PG_URL.format(db=SRC_DB),
    "sqlite": f"sqlite:///{SQLITE_SRC}",
    "mariadb": MYSQL_URL.format(db=SRC_DB),
}

RSS_TARGET_MB = 250
RESUME_TARGET_S = 2.0


def log(message: str) -> None:
    """Progress on stderr, so a long run in the background can be followed in its log."""
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# --- talking to the servers ------------------------------------------------------------


@contextmanager
def pg(db: str = "postgres") -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection: DDL such as CREATE DATABASE refuses a transaction."""
    conn = psycopg.connect(PG_URL.format(db=db), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def pg_value(db: str, query: str) -> Any:
    with pg(db) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


@contextmanager
def mariadb(db: str | None = None) -> Iterator[Any]:
    conn = pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=db, charset="utf8mb4"
    )
    try:
        yield conn
    finally:
        conn.close()


def mariadb_value(query: str, db: str | None = None) -> Any:
    with mariadb(db) as conn, conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
        return row[0] if row else None


def shell(command: str, *, stdout: Any = subprocess.DEVNULL) -> None:
    """Run a shell pipeline; pipefail, so a failing first stage is not hidden by the last."""
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], stdout=stdout, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {command}\n{done.stderr.strip()}")


def pg_count(db: str, table: str) -> int | None:
    """Rows in a table, or None when the database or the table is missing."""
    try:
        return int(pg_value(db, f"SELECT count(*) FROM {table}"))
    except psycopg.Error:
        return None


# --- the sources (cached) ----------------------------------------------------------------


def build_sources(rows: int) -> None:
    """Build whatever source does not already hold the right rows of the current shape.

    MariaDB and SQLite are loaded from the PostgreSQL source, so they are rebuilt
    whenever it is.
    """
    small = rows // 10
    rebuilt = not pg_cached(rows, small)
    if rebuilt:
        build_postgres(rows, small)
    else:
        log(f"PostgreSQL source cached ({rows:,} and {small:,} rows)")
    if rebuilt or not mariadb_cached(rows):
        build_mariadb()
    else:
        log("MariaDB source cached")
    if rebuilt or not sqlite_cached(rows):
        build_sqlite()
    else:
        log("SQLite source cached")


def pg_cached(rows: int, small: int) -> bool:
    if pg_count(SRC_DB, TABLE) != rows or pg_count(SRC_DB, SMALL_TABLE) != small:
        return False
    return pg_value(SRC_DB, f"SELECT obj_description('{TABLE}'::regclass)") == DATA_TAG


def build_postgres(rows: int, small: int) -> None:
    log(f"building PostgreSQL {SRC_DB}.{TABLE} with {rows:,} rows (generate_series)")
    with pg() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SRC_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SRC_DB}")
    with pg(SRC_DB) as conn:
        for table, n in ((TABLE, rows), (SMALL_TABLE, small)):
            conn.execute(f"CREATE TABLE {table} ({PG_COLUMNS})")
            conn.execute(PG_FILL.format(table=table, rows=n))
            conn.execute(f"COMMENT ON TABLE {table} IS '{DATA_TAG}'")
            # Frozen and analyzed: the timed reads then set no hint bits, and milepost
            # plans its chunks from a real row estimate.
            conn.execute(f"VACUUM (FREEZE, ANALYZE) {table}")


def mariadb_cached(rows: int) -> bool:
    try:
        count = mariadb_value(f"SELECT count(*) FROM {TABLE}", SRC_DB)
        tag = mariadb_value(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA = '{SRC_DB}' AND TABLE_NAME = '{TABLE}'"
        )
    except pymysql.MySQLError:
        return False
    return count == rows and tag == DATA_TAG


def build_mariadb() -> None:
    """PostgreSQL's COPY text format is what LOAD DATA reads by default (\\N, \\t, \\\\)."""
    log(f"loading MariaDB {SRC_DB}.{TABLE} from a TSV export")
    tsv = WORK / "orders.tsv"
    export = (
        "COPY (SELECT id, customer_id, quantity, status, note, amount, "
        "created_at AT TIME ZONE 'UTC', payload FROM orders ORDER BY id) TO STDOUT"
    )
    with tsv.open("w") as out:
        shell(f"{PG} -d {SRC_DB} -c {shlex.quote(export)}", stdout=out)
    with mariadb() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {SRC_DB}")
        cur.execute(f"CREATE DATABASE {SRC_DB} CHARACTER SET utf8mb4")
        cur.execute(f"USE {SRC_DB}")
        cur.execute(MARIADB_TABLE)
    load = (
        "SET SESSION unique_checks = 0; SET SESSION time_zone = '+00:00'; "
        f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE {TABLE} CHARACTER SET utf8mb4; "
        f"ANALYZE TABLE {TABLE};"
    )
    shell(f"{MARIADB} --local-infile=1 {SRC_DB} -e {shlex.quote(load)}")
    tsv.unlink()


def sqlite_cached(rows: int) -> bool:
    if not SQLITE_SRC.exists():
        return False
    try:
        with sqlite3.connect(SQLITE_SRC) as conn:
            count = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error:
        return False
    return count == rows and version == DATA_VERSION


def build_sqlite() -> None:
    """Streamed from a server-side cursor into one executemany; renamed into place when done."""
    log(f"loading SQLite {SQLITE_SRC.relative_to(REPO)}")
    partial = SQLITE_SRC.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    select = (
        "SELECT id, customer_id, quantity, status, note, amount::text, created_at::text, "
        "payload::text FROM orders ORDER BY id"
    )
    with pg(SRC_DB) as src, src.transaction(), src.cursor(name="bench_export") as cur:
        src.execute("SET TIME ZONE 'UTC'")
        cur.itersize = 20_000
        cur.execute(select)
        dst = sqlite3.connect(partial)
        try:
            dst.execute("PRAGMA journal_mode = OFF")
            dst.execute("PRAGMA synchronous = OFF")
            dst.execute(SQLITE_TABLE)
            dst.execute(f"PRAGMA user_version = {DATA_VERSION}")
            dst.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", cur)
            dst.commit()
        finally:
            dst.close()
    partial.replace(SQLITE_SRC)


# --- the destination ------------------------------------------------------------------


def fresh_destination(precreate: str | None = None, columns: str = PG_COLUMNS) -> None:
    """A new empty database per sample; a checkpoint first, so no sample pays for another's WAL."""
    with pg() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DST_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DST_DB}")
        conn.execute("CHECKPOINT")
    if precreate:
        with pg(DST_DB) as conn:
            conn.execute(f"CREATE TABLE {precreate} ({columns})")


def drop_destination() -> None:
    with pg() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DST_DB} WITH (FORCE)")


def fingerprint(db: str, table: str) -> tuple[Any, ...]:
    with pg(db) as conn:
        row = conn.execute(FINGERPRINT.format(table=table)).fetchone()
        return tuple(row) if row else ()


def check_copy(table: str, expected: tuple[Any, ...], label: str) -> bool:
    """Stop on a wrong row count; report (not stop on) a content difference."""
    got = fingerprint(DST_DB, table)
    if got[0] != expected[0]:
        raise SystemExit(
            f"{label}: the destination holds {got[0]:,} rows, the source {expected[0]:,}"
        )
    if got != expected:
        log(f"WARNING {label}: content fingerprint differs: {got} != {expected}")
        return False
    return True


def column_types(db: str, table: str) -> str:
    """`name type, ...` as PostgreSQL spells them, to show what milepost created."""
    with pg(db) as conn:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [table],
        ).fetchall()
    return ", ".join(f"{name} {typ}" for name, typ in rows)


def milepost_columns(pair: str) -> str | None:
    """The column types milepost creates for this pair, when they differ from the source's.

    Parsing into jsonb costs COPY more than into text, so a pipe into the source's types
    can do more work than milepost does; a second pipe into milepost's own types keeps
    the comparison like for like. Found with a 1,000-row run, since mappings change.
    """
    yml = write_pipeline(f"bench_{pair}_types", SOURCES[pair], TABLE, 1, where="id <= 1000")
    fresh_destination()
    shell(f"{MILEPOST} run {yml} --progress none")
    created = column_types(DST_DB, TABLE)
    if created == column_types(SRC_DB, TABLE):
        return None
    return f"{created}, PRIMARY KEY (id)"


def transfer_path() -> str:
    return str(pg_value(DST_DB, "SELECT string_agg(transfer, ',') FROM _milepost_streams"))


# --- the cases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One thing timed: a raw shell pipe, or a milepost pipeline file."""

    key: str
    pair: str  # "pg", "sqlite", "mariadb"
    label: str
    table: str  # the destination table it fills
    pipe: str | None = None
    columns: str = PG_COLUMNS  # a pipe's destination table, created before it runs
    pipeline: Path | None = None
    workers: int = 1


@dataclass
class Sample:
    """One timed run. CPU is milepost's own (user + sys): steadier than wall time when
    the machine is shared, and it shows how much of a core the copier itself needs."""

    seconds: float
    rss_mb: float | None = None
    cpu_s: float | None = None
    content_ok: bool = True


@dataclass
class Outcome:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    path: str = ""
    types: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def rss(self) -> list[float]:
        return [s.rss_mb for s in self.samples if s.rss_mb is not None]

    @property
    def cpu(self) -> list[float]:
        return [s.cpu_s for s in self.samples if s.cpu_s is not None]


def write_pipeline(
    name: str, source_url: str, table: str, workers: int, where: str | None = None
) -> Path:
    """A pipeline file with default batch size, as a user would write it, but with the
    verify phase off: this benchmark times the copy against the raw pipe, which checks
    nothing; what verifying costs is bench/verify_bench.py's to measure."""
    path = WORK / f"{name}.yml"
    stream: dict[str, Any] = {"table": table}
    if where:
        stream["where"] = where
    doc = {
        "name": name,
        "source": {"url": source_url},
        "destination": {"url": PG_URL.format(db=DST_DB)},
        "streams": [stream],
        "batch_size": 10_000,
        "workers": workers,
        "verify": {"mode": "off"},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
    return path


def build_cases(workers: list[int], same_types: dict[str, str | None]) -> list[Case]:
    """Per pair: the pipe, the pipe into milepost's types if they differ, milepost per worker."""
    cases = []
    for pair in ("pg", "sqlite", "mariadb"):
        columns = same_types.get(pair)
        label = "raw pipe, into the source's types" if columns else "raw pipe"
        cases.append(Case(f"{pair}-pipe", pair, label, TABLE, pipe=PIPES[pair]))
        if columns:
            label = "raw pipe, into milepost's types"
            cases.append(Case(f"{pair}-pipe-same", pair, label, TABLE, PIPES[pair], columns))
        for w in workers:
            yml = write_pipeline(f"bench_{pair}_w{w}", SOURCES[pair], TABLE, w)
            label = f"milepost, {w} worker{'s' if w > 1 else ''}"
            cases.append(Case(f"{pair}-w{w}", pair, label, TABLE, pipeline=yml, workers=w))
    small = write_pipeline("bench_pg_small_w1", SOURCES["pg"], SMALL_TABLE, 1)
    cases.append(Case("pg-small", "pg", "milepost, N/10 rows", SMALL_TABLE, pipeline=small))
    return cases


def run_case(case: Case) -> Sample:
    """Wall time of the transfer alone; for milepost also its peak RSS and CPU time.

    /usr/bin/time reports the one process it waits for, so the figures are milepost's
    own, not a maximum over every child this script has started.
    """
    if case.pipe:
        start = time.perf_counter()
        shell(case.pipe)
        return Sample(time.perf_counter() - start)
    assert case.pipeline is not None
    stats = WORK / "time.txt"
    command = (
        f"/usr/bin/time -f '%M %U %S' -o {stats} {MILEPOST} run {case.pipeline} --progress none"
    )
    start = time.perf_counter()
    shell(command)
    seconds = time.perf_counter() - start
    rss_kb, user, system = stats.read_text().split()[-3:]
    return Sample(seconds, int(rss_kb) / 1024, float(user) + float(system))


def measure(cases: list[Case], repeat: int, expected: dict[str, tuple[Any, ...]]) -> list[Outcome]:
    """All cases once per round, K rounds: drift on a shared machine hits every case alike."""
    outcomes = {c.key: Outcome(c) for c in cases}
    for round_ in range(1, repeat + 1):
        for case in cases:
            fresh_destination(case.table if case.pipe else None, case.columns)
            sample = run_case(case)
            label = f"{case.key} round {round_}"
            sample.content_ok = check_copy(case.table, expected[case.table], label)
            outcome = outcomes[case.key]
            outcome.samples.append(sample)
            if case.pipeline and not outcome.path:
                outcome.path = transfer_path()
                outcome.types = column_types(DST_DB, case.table)
            shown = ""
            if sample.rss_mb is not None:
                shown = f", peak RSS {sample.rss_mb:.0f} MB, CPU {sample.cpu_s:.1f} s"
            log(f"round {round_}/{repeat} {case.key}: {sample.seconds:.2f} s{shown}")
    return list(outcomes.values())


# --- resume latency -------------------------------------------------------------------


@dataclass
class ResumeSample:
    first_batch_cold_s: float
    rows_at_kill: int
    first_batch_resume_s: float
    content_ok: bool


def first_batch(proc: subprocess.Popen[str], start: float, stop_at: int | None) -> float:
    """Seconds from `start` to the first batch event; with stop_at, read on until that many rows."""
    first = None
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("kind") != "batch":
            continue
        if first is None:
            first = time.perf_counter() - start
            if stop_at is None:
                return first
        if stop_at is not None and event.get("rows_done", 0) >= stop_at:
            return first
    raise SystemExit(f"milepost exited ({proc.wait()}) before committing a batch")


def start_milepost(pipeline: Path, log_file: Path) -> tuple[subprocess.Popen[str], float]:
    with log_file.open("a") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(MILEPOST), "run", str(pipeline), "--progress", "jsonl"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            bufsize=1,
        )
    return proc, start


def measure_resume(pipeline: Path, rows: int, expected: tuple[Any, ...]) -> ResumeSample:
    """SIGKILL at half the rows (no chance to clean up), then time the restart's first batch."""
    fresh_destination()
    log_file = WORK / "resume.log"
    proc, start = start_milepost(pipeline, log_file)
    try:
        cold = first_batch(proc, start, stop_at=rows // 2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    at_kill = pg_count(DST_DB, TABLE) or 0
    proc, start = start_milepost(pipeline, log_file)
    resume = first_batch(proc, start, stop_at=None)
    assert proc.stdout is not None
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"the resumed run failed with exit code {proc.returncode}; see {log_file}")
    ok = check_copy(TABLE, expected, "resume")
    return ResumeSample(cold, at_kill, resume, ok)


# --- the report -------------------------------------------------------------------------


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True
    ).stdout.strip()


def snapshot_code() -> str:
    """Copy src/milepost aside; every milepost sample then runs that copy (PYTHONPATH).

    Other engineers edit and commit src/ while this runs. Without a snapshot, the
    samples of one table would silently come from different code. Returns its name.
    """
    shutil.rmtree(SNAPSHOT, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "src" / "milepost", SNAPSHOT / "milepost", ignore=ignore)
    digest = hashlib.sha256()
    for path in sorted((SNAPSHOT / "milepost").rglob("*.py")):
        digest.update(path.relative_to(SNAPSHOT).as_posix().encode() + path.read_bytes())
    head = git("rev-parse", "--short", "HEAD")
    dirty = " plus uncommitted changes" if git("status", "--porcelain", "--", "src") else ""
    return f"src/ of commit {head}{dirty} (sha256 of its .py files: {digest.hexdigest()[:12]})"


def check_snapshot_imported() -> None:
    """The editable install must not win over PYTHONPATH, or the snapshot would be a lie."""
    probe = [str(MILEPOST.parent / "python"), "-c", "import milepost; print(milepost.__file__)"]
    where = Path(subprocess.run(probe, capture_output=True, text=True).stdout.strip())
    if not where.is_relative_to(SNAPSHOT):
        raise SystemExit(f"milepost would be imported from {where}, not from {SNAPSHOT}")


def environment(load: tuple[float, float, float], code: str) -> dict[str, str]:
    """What a reader needs to judge the figures: where, when, on what."""
    return {
        "code": code,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "load": " / ".join(f"{x:.2f}" for x in load),
        "postgres": str(pg_value("postgres", "SHOW server_version")),
        "mariadb": str(mariadb_value("SELECT version()")),
        "sqlite": sqlite3.sqlite_version,
        "pg_size": f"{pg_value(SRC_DB, f'SELECT pg_total_relation_size({TABLE!r})') / 1e6:.0f} MB",
        "payload": f"{pg_value(SRC_DB, PAYLOAD_BYTES):.0f}",
        "types": column_types(SRC_DB, TABLE),
    }


def fmt_range(values: list[float], unit: str = "s", digits: int = 1) -> str:
    """Median, and min-max so that noise is visible next to the figure."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def fmt_ratio(ratio: float, target: float) -> str:
    """Two decimals, or three where two would round a miss up to the target (0.797 -> 0.80)."""
    misleading = (round(ratio, 2) >= target) != (ratio >= target)
    return f"{ratio:.3f}" if misleading else f"{ratio:.2f}"


def pair_table(pair: str, outcomes: list[Outcome]) -> list[str]:
    """One pair's table. Ratios are against the like-for-like pipe: the one into the
    column types milepost created, when those differ from the source's."""
    title, target, pipe_name = TARGETS[pair]
    mine = [o for o in outcomes if o.case.pair == pair and o.case.table == TABLE]
    pipes = [o for o in mine if o.case.pipe]
    judge = pipes[-1]
    lines = [
        f"### {title}",
        "",
        f"Target: milepost ≥ {target}x the throughput of the {pipe_name}; "
        f"peak RSS < {RSS_TARGET_MB} MB.",
        "",
        "| path | time, median (min-max) | ratio pipe/milepost | target | peak RSS, median (max) "
        "| milepost CPU, median | content |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in pipes:
        mark = "reference" if o is judge else ""
        lines.append(
            f"| {o.case.label} | {fmt_range([s.seconds for s in o.samples])} | {mark} | | | | "
            f"{content(o)} |"
        )
    for o in mine:
        if o.case.pipe:
            continue
        ratio = judge.median_s / o.median_s
        verdict = "✅" if ratio >= target else "❌"
        shown = f"**{fmt_ratio(ratio, target)}x**"
        if len(pipes) > 1:
            other = fmt_ratio(pipes[0].median_s / o.median_s, target)
            shown += f" ({other}x vs the pipe into the source's types)"
        rss = f"{statistics.median(o.rss):.0f} MB ({max(o.rss):.0f})"
        cpu = f"{statistics.median(o.cpu):.1f} s"
        lines.append(
            f"| {o.case.label} | {fmt_range([s.seconds for s in o.samples])} | "
            f"{shown} | ≥ {target}x {verdict} | {rss} | {cpu} | {content(o)} |"
        )
    lines += ["", f"Raw pipe: `{judge.case.pipe}`."]
    if len(pipes) > 1:
        lines[-1] += (
            " It runs twice: into a table of the PostgreSQL source's types, and into one of "
            f"the types milepost created, `{judge.case.columns}` (the reference: the same "
            "parsing work at the destination as milepost's)."
        )
    lines.append("")
    for o in mine:
        if o.case.pipeline:
            lines.append(f"- {o.case.label}: transfer path `{o.path}`; created `{o.types}`")
    return [*lines, ""]


def content(o: Outcome) -> str:
    bad = sum(not s.content_ok for s in o.samples)
    return "same as source" if not bad else f"**differs in {bad}/{len(o.samples)} runs**"


def rss_section(outcomes: list[Outcome], rows: int) -> list[str]:
    by_key = {o.case.key: o for o in outcomes}
    big, small = by_key["pg-w1"], by_key["pg-small"]
    big_mb, small_mb = max(big.rss), max(small.rss)
    same = abs(big_mb - small_mb) <= max(10.0, 0.1 * small_mb)
    verdict = "✅" if same and big_mb < RSS_TARGET_MB else "❌"
    return [
        "### Peak RSS against table size (PostgreSQL → PostgreSQL, 1 worker)",
        "",
        f"Target: < {RSS_TARGET_MB} MB, and the same at N/10 rows and N rows.",
        "",
        "| rows | time, median | peak RSS, median (max) |",
        "| --- | --- | --- |",
        f"| {rows // 10:,} | {fmt_range([s.seconds for s in small.samples])} | "
        f"{statistics.median(small.rss):.0f} MB ({small_mb:.0f}) |",
        f"| {rows:,} | {fmt_range([s.seconds for s in big.samples])} | "
        f"{statistics.median(big.rss):.0f} MB ({big_mb:.0f}) |",
        "",
        f"Difference of the maxima: {big_mb - small_mb:+.0f} MB {verdict} "
        "(counted as the same within 10 MB or 10%).",
        "",
    ]


def resume_section(samples: list[ResumeSample]) -> list[str]:
    resume = [s.first_batch_resume_s for s in samples]
    cold = [s.first_batch_cold_s for s in samples]
    verdict = "✅" if max(resume) < RESUME_TARGET_S else "❌"
    killed = ", ".join(f"{s.rows_at_kill:,}" for s in samples)
    ok = "same as source" if all(s.content_ok for s in samples) else "**differs**"
    return [
        "### Resume latency (PostgreSQL → PostgreSQL, 1 worker)",
        "",
        f"Target: first committed batch < {RESUME_TARGET_S:.0f} s after the restart.",
        "",
        "A run with `--progress jsonl` is SIGKILLed once half the rows are committed; the "
        "same command is started again and timed from process start to its first "
        '`"kind": "batch"` line.',
        "",
        "| | seconds to first batch, median (min-max) |",
        "| --- | --- |",
        f"| first start, empty destination | {fmt_range(cold, digits=2)} |",
        f"| restart after SIGKILL | {fmt_range(resume, digits=2)} {verdict} |",
        "",
        f"Rows committed when killed: {killed}. After the resumed run finished, the "
        f"destination was {ok} (row count and fingerprint).",
        "",
    ]


def samples_section(outcomes: list[Outcome]) -> list[str]:
    lines = ["### Every sample, in seconds (rounds in order)", ""]
    for o in outcomes:
        shown = ", ".join(f"{s.seconds:.2f}" for s in o.samples)
        lines.append(f"- `{o.case.key}`: {shown}")
    return [*lines, ""]


def write_report(
    command: str,
    env: dict[str, str],
    rows: int,
    repeat: int,
    outcomes: list[Outcome],
    resumes: list[ResumeSample],
) -> None:
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Copy benchmark",
        "",
        f"Produced by `{command}` (`make bench` runs it with the defaults), on {env['date']}.",
        "",
        f"Code measured: {env['code']}, copied aside when the run started.",
        "",
        f"- Machine: `nproc` = {env['nproc']}, shared with other work; load average 1/5/15 min "
        f"at the start {env['load']}, at the end {end_load}. Only ratios measured in this run "
        "are meaningful.",
        f"- Servers: PostgreSQL {env['postgres']}, MariaDB {env['mariadb']}, "
        f"SQLite {env['sqlite']}; all local.",
        f"- Table: `{TABLE}`, {rows:,} rows ({env['pg_size']} in PostgreSQL with its "
        "primary key): id bigint key, customer_id, quantity, status, note (NULLs, non-ASCII, "
        "tabs, newlines, backslashes), amount numeric(12,2), created_at timestamptz, "
        f"payload jsonb (~{env['payload']} bytes as text).",
        f"- Each figure is the median of {repeat} rounds; one round runs every case once, in "
        "the order listed, each into a freshly created database after a CHECKPOINT.",
        "- milepost runs are `milepost run <pipeline.yml> --progress none` with the default "
        "batch_size (10,000), timed as a whole process (start-up, schema, ledger and all); "
        "its destination table is the one milepost creates (its types are listed under each "
        "pair). Each raw pipe writes into a pre-created table of the PostgreSQL source's types: "
        f"`{env['types']}`. CPU is the milepost process's user + sys time, servers excluded.",
        "- Ratio = raw pipe time / milepost time: 1.00 is as fast as the pipe.",
        "- Every run's destination row count is checked against the source (the script stops "
        "otherwise); content = sums over every column compared with the source.",
        "",
    ]
    for pair in ("pg", "sqlite", "mariadb"):
        lines += pair_table(pair, outcomes)
    lines += rss_section(outcomes, rows)
    lines += resume_section(resumes)
    lines += samples_section(outcomes)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines).rstrip() + "\n")


# --- main --------------------------------------------------------------------------------


def command_line() -> str:
    """The command as typed from the repository root, for the report."""
    python = Path(sys.executable)
    shown = python.relative_to(REPO) if python.is_relative_to(REPO) else python
    return shlex.join([str(shown), *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the source table")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()  # before this script adds its own load
    code = snapshot_code()
    os.environ["PYTHONPATH"] = str(SNAPSHOT)  # inherited by every milepost process
    check_snapshot_imported()
    build_sources(args.rows)
    env = environment(load, code)
    expected = {t: fingerprint(SRC_DB, t) for t in (TABLE, SMALL_TABLE)}
    try:
        same_types = {pair: milepost_columns(pair) for pair in PIPES}
        cases = build_cases([1, 2], same_types)
        outcomes = measure(cases, args.repeat, expected)
        resume_pipeline = next(c.pipeline for c in cases if c.key == "pg-w1")
        assert resume_pipeline is not None
        resumes = []
        for round_ in range(1, args.repeat + 1):
            sample = measure_resume(resume_pipeline, args.rows, expected[TABLE])
            log(f"resume {round_}/{args.repeat}: first batch {sample.first_batch_resume_s:.2f} s")
            resumes.append(sample)
    finally:
        drop_destination()
    write_report(command_line(), env, args.rows, args.repeat, outcomes, resumes)
    log(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
