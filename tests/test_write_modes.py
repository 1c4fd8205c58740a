"""Write modes on real servers: upsert by each engine's native form, and replace.

Every upsert test starts from a destination that already holds rows: some with the source's
keys and stale values, some of its own (keys the source does not have, some of them between
the source's keys, inside the ranges verification compares). Afterwards the source's rows
must be there exactly once with the source's values, the destination's own rows untouched,
and the run's verify phase must have passed (exit 0).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from conftest import Database, mysql_connection
from faults import (
    SOURCE_DDL,
    TABLE,
    Cli,
    assert_ledger_exact,
    canonical,
    chunk_records,
    cli_json,
    create_destination,
    create_source,
    database,
    kill_and_resume,
    ledger_rows,
    make_rows,
    seeded,
    table_rows,
    update_pipeline,
    write_pipeline,
)
from milepost import connectors
from milepost.urls import parse_database_url
from milepost.write_modes import write_rows
from test_checkpoints_run import paused_here

ENGINES = ["postgresql", "mysql", "sqlite"]
PAIRS = [(s, d) for s in ENGINES for d in ENGINES]
PAIR_IDS = [f"{s}->{d}" for s, d in PAIRS]


def milepost(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
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


def mark(db: Database) -> str:
    return "?" if db.family == "sqlite" else "%s"


def insert(db: Database, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Rows into a table, on one connection and in one transaction."""
    if not rows:
        return
    statement = f"INSERT INTO {table} VALUES ({', '.join([mark(db)] * len(rows[0]))})"
    if db.family == "postgresql":
        with psycopg.connect(db.url) as conn, conn.cursor() as cur:
            cur.executemany(statement, rows)
    elif db.family == "mysql":
        with contextlib.closing(mysql_connection(db.url, autocommit=False)) as conn:
            with conn.cursor() as cur:
                cur.executemany(statement, rows)
            conn.commit()
    else:  # kept as text there, as milepost and faults.py write them
        with contextlib.closing(sqlite3.connect(db.path)) as conn, conn:
            conn.executemany(statement, [tuple(_as_sqlite(v) for v in r) for r in rows])


def _as_sqlite(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat(" ", timespec="microseconds")
    return str(value) if isinstance(value, Decimal) else value


def stale_and_own(source_rows: list[tuple[Any, ...]], every: int) -> tuple[list, list]:
    """Stale copies of every `every`-th source row (same id, other values), and rows of the
    destination's own: ids in the gaps between the source's, and beyond them."""
    ids = {r[0] for r in source_rows}
    stale = [(r[0], f"stale {r[0]}", -1, None, None, "old") for r in source_rows[::every]]
    gaps = [i for i in range(1, max(ids)) if i not in ids][:6]
    own = [(i, f"own {i}", i, None, None, "theirs") for i in [*gaps, 10_000_000, 10_000_001]]
    return stale, own


def upsert_pipeline(
    directory: Path, source: Database, dest: Database, batch_size: int, **stream: Any
) -> Path:
    path = write_pipeline(directory, "upserting", source, dest, batch_size=batch_size)
    return update_pipeline(path, streams=[{"table": TABLE, "write": "upsert", **stream}])


def run_to_end(path: Path) -> Cli:
    run = Cli.run(path)
    rc = run.finish()
    assert rc == 0, run.describe(rc)
    return run


# --- write_rows: the function HTTP and Python sources land their rows with ----------------


@pytest.fixture(params=ENGINES)
def dest_conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Database, Any]]:
    with database(request.param, tmp_path, "dst") as db:
        db.sql("CREATE TABLE t (id INTEGER PRIMARY KEY, label VARCHAR(20), qty INTEGER)")
        conn = connectors.connect(parse_database_url(db.url, key="url"), "destination")
        try:
            yield db, conn
        finally:
            conn.close()


def test_write_rows_appends_and_upserts_with_the_last_of_equal_keys_winning(
    dest_conn: tuple[Database, Any],
) -> None:
    db, conn = dest_conn
    cols = ["id", "label", "qty"]
    with conn.transaction():
        assert write_rows(conn, "t", cols, [(1, "a", 1), (2, "b", 2)], "append") == 2
    batch = [(2, "b2", 20), (3, "c", 3), (3, "c2", 30), (2, "b3", 22), (3, "c3", None)]
    with conn.transaction():
        # Five tuples given, five counted: MySQL's 2-per-update never leaks into the count.
        assert write_rows(conn, "t", cols, batch, "upsert", ["id"]) == 5
    # Two writes in one transaction: the second sees only its own rows (PostgreSQL's
    # staging table is emptied by each merge).
    with conn.transaction():
        assert write_rows(conn, "t", cols, [(4, "d", 4)], "upsert", ["id"]) == 1
        assert write_rows(conn, "t", cols, [(1, "a2", 10)], "upsert", ["id"]) == 1
    # Only key columns: nothing to update, the row stays as it is.
    with conn.transaction():
        assert write_rows(conn, "t", ["id"], [(1,), (5,)], "upsert", ["id"]) == 2
    assert sorted(db.sql("SELECT id, label, qty FROM t")) == [
        (1, "a2", 10),
        (2, "b3", 22),
        (3, "c3", None),
        (4, "d", 4),
        (5, None, None),
    ]
    duplicate = (psycopg.errors.UniqueViolation, pymysql.err.IntegrityError, sqlite3.IntegrityError)
    with pytest.raises(duplicate), conn.transaction():  # append does not update
        write_rows(conn, "t", cols, [(1, "x", 0)], "append")
    assert db.sql("SELECT label FROM t WHERE id = 1") == [("a2",)]


# --- upsert through `milepost run` ---------------------------------------------------------


@pytest.mark.parametrize(("source_family", "dest_family"), PAIRS, ids=PAIR_IDS)
def test_upsert_updates_stale_rows_keeps_the_destinations_own_and_verifies(
    tmp_path: Path, source_family: str, dest_family: str
) -> None:
    _, seed = seeded(f"upsert {source_family}->{dest_family}")
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        rows = make_rows(60, seed)
        create_source(source, rows)
        dest.sql(SOURCE_DDL[dest.family])  # with the primary key the upsert matches by
        stale, own = stale_and_own(rows, 3)
        insert(dest, TABLE, stale + own)
        path = upsert_pipeline(tmp_path, source, dest, batch_size=7)

        run_to_end(path)  # exit 0: the verify phase found no difference
        mine = Counter(canonical(r) for r in own)
        assert table_rows(dest) == table_rows(source) + mine
        assert ledger_rows(dest, "upserting") == len(rows)

        # Verification still finds a real difference, and a repair upserts it away without
        # touching the destination's own rows.
        victim = rows[len(rows) // 2][0]
        dest.sql(f"UPDATE {TABLE} SET name = 'tampered' WHERE id = {victim}")
        found = milepost("verify", str(path), cwd=tmp_path)
        assert found.returncode == 4, said(found)
        fixed = milepost("verify", str(path), "--repair", cwd=tmp_path)
        assert fixed.returncode == 0, said(fixed)
        assert table_rows(dest) == table_rows(source) + mine


def events_source(db: Database, rows: list[tuple[int, str, int]]) -> None:
    db.sql("CREATE TABLE events (id INTEGER PRIMARY KEY, code VARCHAR(20) NOT NULL, val INTEGER)")
    values = ", ".join(f"({i}, '{code}', {val})" for i, code, val in rows)
    db.sql(f"INSERT INTO events VALUES {values}")


@pytest.mark.parametrize(("source_family", "dest_family"), PAIRS, ids=PAIR_IDS)
def test_upsert_by_a_declared_key_keeps_the_last_row_of_each_key_in_cursor_order(
    tmp_path: Path, source_family: str, dest_family: str
) -> None:
    # Three consecutive ids share a code (equal keys inside one batch of 5) and the codes
    # come round again every 15 ids (equal keys in other batches). 250 rows would be three
    # chunks copied side by side; a key that repeats keeps them in one, in cursor order.
    rows = [(i, f"c{(i // 3) % 5}", i * 10) for i in range(1, 251)]
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        events_source(source, rows)
        path = write_pipeline(tmp_path, "keyed", source, dest, batch_size=5, workers=2)
        update_pipeline(path, streams=[{"table": "events", "write": "upsert", "key": ["code"]}])

        run_to_end(path)  # its verify phase compares the last row of each code
        last = {code: (i, code, val) for i, code, val in rows}  # later ids overwrite
        assert sorted(dest.sql("SELECT id, code, val FROM events")) == sorted(last.values())
        assert ledger_rows(dest, "keyed") == len(rows)
        assert len(chunk_records(dest, "keyed")) == 1
        # The table milepost created has a unique index on the declared key.
        engine = sa.create_engine(_sa_url(dest))
        try:
            insp = sa.inspect(engine)
            uniques = [u["column_names"] for u in insp.get_unique_constraints("events")]
            uniques += [i["column_names"] for i in insp.get_indexes("events") if i.get("unique")]
        finally:
            engine.dispose()
        assert ["code"] in uniques, uniques


@pytest.mark.parametrize("dest_family", ENGINES)
def test_upsert_sets_a_refused_row_aside_and_upserts_the_rest_of_its_batch(
    tmp_path: Path, lite: Database, dest_family: str
) -> None:
    rows = [(i, f"c{i}", i * 10) for i in range(1, 41)]
    events_source(lite, rows)
    with database(dest_family, tmp_path, "dst") as dest:
        dest.sql(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, code VARCHAR(20) NOT NULL, "
            "val BIGINT, CONSTRAINT no_130 CHECK (val <> 130))"
        )
        insert(dest, "events", [(i, "stale", 0) for i in range(10, 16)])
        path = write_pipeline(tmp_path, "refusing", lite, dest, batch_size=8)
        update_pipeline(path, streams=[{"table": "events", "write": "upsert"}], on_row_error="skip")
        run_to_end(path)
        # The row-by-row retry of the refused batch upserted too: no stale row is left
        # but the refused one's, and nothing failed as a duplicate.
        want = [r for r in rows if r[0] != 13] + [(13, "stale", 0)]
        assert sorted(dest.sql("SELECT id, code, val FROM events")) == sorted(want)
        assert dest.sql("SELECT count(*) FROM _milepost_rejected_rows") == [(1,)]
        assert ledger_rows(dest, "refusing") == len(rows) - 1


def _sa_url(db: Database) -> str:
    if db.family == "mysql":
        return db.url.replace("mysql://", "mysql+pymysql://", 1)
    if db.family == "postgresql":
        return db.url.replace("postgresql://", "postgresql+psycopg://", 1)
    return db.url


KILL_PAIRS = [("postgresql", "postgresql"), ("mysql", "sqlite"), ("sqlite", "mysql")]


@pytest.mark.parametrize(
    ("source_family", "dest_family"), KILL_PAIRS, ids=[f"{s}->{d}" for s, d in KILL_PAIRS]
)
def test_upsert_killed_and_resumed_counts_every_row_once(
    tmp_path: Path, source_family: str, dest_family: str
) -> None:
    label = f"upsert kill {source_family}->{dest_family}"
    rng, seed = seeded(label)
    count, batch = 3_000, 100
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        rows = make_rows(count, seed)
        create_source(source, rows)
        dest.sql(SOURCE_DDL[dest.family])
        stale, own = stale_and_own(rows, 2)
        insert(dest, TABLE, stale + own)
        path = upsert_pipeline(tmp_path, source, dest, batch_size=batch)
        log = kill_and_resume(
            path, dest, rng, 1, rows=count, batch_size=batch, max_batches=12, context=label
        )
        assert log.kills >= 1, log
        assert table_rows(dest) == table_rows(source) + Counter(canonical(r) for r in own)
        assert_ledger_exact(dest, "upserting", [r[0] for r in rows], batch, f"{label} {log}")


@pytest.mark.parametrize("dest_family", ["sqlite", "postgresql"])
def test_restoring_an_upsert_run_keeps_the_rows_and_the_rerun_ends_identical(
    tmp_path: Path, lite: Database, dest_family: str
) -> None:
    rows = make_rows(200, 11)
    create_source(lite, rows)
    with database(dest_family, tmp_path, "dst") as dest:
        dest.sql(SOURCE_DDL[dest.family])
        stale, own = stale_and_own(rows, 4)
        insert(dest, TABLE, stale + own)
        path = upsert_pipeline(tmp_path, lite, dest, batch_size=20)
        update_pipeline(
            path,
            checkpoints={"every_records": 60, "every_seconds": None, "keep_after_success": True},
        )
        # In this process, paused after 5 batches, each automatic checkpoint waited for.
        paused = paused_here(path, 5)
        target = paused.checkpoints("automatic")[0]
        at = cli_json("checkpoints", "show", str(path), target, "--json", cwd=tmp_path)["position"][
            "rows_done"
        ]
        assert 0 < at < paused.rows < len(rows)
        after = table_rows(dest)

        done = milepost("checkpoints", "restore", str(path), target, cwd=tmp_path)
        assert done.returncode == 0, said(done)
        # The ledger went back; no row was deleted, the destination's own ones least of all.
        assert ledger_rows(dest, "upserting") == at
        assert table_rows(dest) == after
        rerun = run_to_end(path)
        assert sum(e.get("rows", 0) for e in rerun.events if e["kind"] == "batch") == len(rows) - at
        assert table_rows(dest) == table_rows(lite) + Counter(canonical(r) for r in own)
        assert ledger_rows(dest, "upserting") == len(rows)


# --- refused before anything is written -------------------------------------------------------


def test_upsert_without_any_key_is_refused_naming_the_stream(
    tmp_path: Path, lite: Database
) -> None:
    source = lite
    source.sql("CREATE TABLE items (id INTEGER NOT NULL UNIQUE, name TEXT)")
    insert(source, TABLE, [(1, "a"), (2, "b")])
    with database("postgresql", tmp_path, "dst") as dest:
        path = write_pipeline(tmp_path, "keyless", source, dest)
        update_pipeline(path, streams=[{"table": TABLE, "write": "upsert", "cursor": ["id"]}])
        done = milepost("run", str(path), "--progress", "none", cwd=tmp_path)
        assert done.returncode == 2, said(done)
        assert "Traceback" not in done.stderr
        assert "Stream 'items'" in done.stderr and "write: upsert needs a key" in done.stderr
        assert "name `key:`" in done.stderr
        assert dest.sql(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ) == [(0,)]

        update_pipeline(
            path, streams=[{"table": TABLE, "write": "upsert", "cursor": ["id"], "key": ["nope"]}]
        )
        done = milepost("run", str(path), "--progress", "none", cwd=tmp_path)
        assert done.returncode == 2, said(done)
        assert "key column 'nope'" in done.stderr, said(done)


@pytest.mark.parametrize("dest_family", ENGINES)
def test_upsert_into_a_table_without_a_unique_key_is_refused_and_nothing_written(
    tmp_path: Path, lite: Database, dest_family: str
) -> None:
    rows = make_rows(20, 7)
    create_source(lite, rows)
    with database(dest_family, tmp_path, "dst") as dest:
        create_destination(dest)  # no primary key, no unique index
        insert(dest, TABLE, rows[:3])
        before = table_rows(dest)
        path = upsert_pipeline(tmp_path, lite, dest, batch_size=5)
        done = milepost("run", str(path), "--progress", "none", cwd=tmp_path)
        assert done.returncode == 2, said(done)
        assert "Traceback" not in done.stderr
        for needle in ("Stream 'items'", "(id)", "no primary key or unique index"):
            assert needle in done.stderr, said(done)
        assert table_rows(dest) == before
        assert ledger_tables(dest) == []

        # A unique index on exactly the key is enough.
        dest.sql(f"CREATE UNIQUE INDEX items_id ON {TABLE} (id)")
        run_to_end(path)
        assert table_rows(dest) == table_rows(lite)


def ledger_tables(db: Database) -> list[str]:
    query = {
        "postgresql": "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema()",
        "mysql": "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()",
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    }[db.family]
    return sorted(str(r[0]) for r in db.sql(query) if str(r[0]).startswith("_milepost"))


# --- replace: risky, so backed up first --------------------------------------------------------


@pytest.mark.parametrize("dest_family", ["sqlite", "mysql"])
def test_replace_backs_up_first_and_rollback_puts_the_rows_back(
    tmp_path: Path, dest_family: str
) -> None:
    with (
        database("sqlite", tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        rows = make_rows(40, 3)
        create_source(source, rows)
        create_destination(dest)
        _, own = stale_and_own(rows, 3)
        insert(dest, TABLE, own)
        before = table_rows(dest)
        path = write_pipeline(tmp_path, "replacing", source, dest, batch_size=10)
        update_pipeline(
            path,
            streams=[{"table": TABLE, "write": "replace"}],
            checkpoints={"keep_after_success": True},
        )
        run = run_to_end(path)
        assert table_rows(dest) == table_rows(source)
        order = [e["data"]["kind"] for e in run.events if e["kind"] == "checkpoint"]
        emptied = next(i for i, e in enumerate(run.events) if "emptied" in e.get("text", ""))
        risky = [
            (i, e["data"]["id"])
            for i, e in enumerate(run.events)
            if e["kind"] == "checkpoint" and e["data"]["kind"] == "before_risky"
        ]
        assert len(risky) == 1 and risky[0][0] < emptied, order  # checkpoint before emptying
        done = milepost("rollback", str(path), "--to", risky[0][1], cwd=tmp_path)
        assert done.returncode == 0, said(done)
        assert table_rows(dest) == before


def test_replace_without_before_risky_backs_nothing_up(tmp_path: Path, lite: Database) -> None:
    rows = make_rows(30, 5)
    create_source(lite, rows)
    with database("postgresql", tmp_path, "dst") as dest:
        create_destination(dest)
        _, own = stale_and_own(rows, 3)
        insert(dest, TABLE, own)
        path = write_pipeline(tmp_path, "bare", lite, dest, batch_size=10)
        update_pipeline(
            path,
            streams=[{"table": TABLE, "write": "replace"}],
            checkpoints={"before_risky": False, "keep_after_success": True},
        )
        run = run_to_end(path)
        assert table_rows(dest) == table_rows(lite)
        kinds = [e["data"]["kind"] for e in run.events if e["kind"] == "checkpoint"]
        assert "before_risky" not in kinds, kinds
        assert [t for t in ledger_tables(dest) if t.startswith("_milepost_backup_")] == []
        assert dest.sql("SELECT count(*) FROM _milepost_backups") == [(0,)]
