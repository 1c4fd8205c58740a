"""Query streams end to end: `milepost run` copies the result of a SQL query, from each source
engine into PostgreSQL and SQLite, row for row what the query returns when run directly;
the verify phase (which reads the source through the same query) passes, and finds and
repairs a difference made by hand; a kill -9 mid-copy resumes exactly; a bad query stops
before anything is written."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Database, make_database
from faults import (
    Cli,
    create_destination,
    create_source,
    database,
    kill_and_resume,
    ledger_rows,
    make_rows,
    seeded,
    table_rows,
)
from test_config_errors import assert_usage_error, cli, run_cli, tables

EPOCH = dt.datetime(2024, 5, 1, 8, 0, 0)
KINDS = ["click", "view", "buy", "test"]
NOTES = [None, "keep: 10% off", "plain", "O'Brien", "tab\there", "ünïcødé ✓"]

# A join, a WHERE whose OR must not swallow the keyset, a % in a literal, and aliases.
JOIN_QUERY = (
    "SELECT e.id, e.created_at AS ts, u.name AS user_name, e.amount, e.note "
    "FROM events e JOIN users u ON u.id = e.user_id "
    "WHERE e.kind <> 'test' OR e.note LIKE '%10!%%' ESCAPE '!'"
)


def _events(n: int, per_ts: int) -> list[tuple[Any, ...]]:
    """`n` events whose created_at repeats `per_ts` times in a row: equal cursor values."""
    return [
        (
            i,
            1 + i % 4,
            KINDS[i % 4],
            EPOCH + dt.timedelta(minutes=i // per_ts),
            None if i % 7 == 0 else Decimal(i * 37 % 10_000).scaleb(-2),
            NOTES[i % 6],
        )
        for i in range(1, n + 1)
    ]


def setup_events(db: Database, n: int = 300, per_ts: int = 9) -> None:
    ts = "DATETIME" if db.family == "mysql" else "TIMESTAMP"
    db.script(f"""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,
            kind VARCHAR(10) NOT NULL, created_at {ts} NOT NULL, amount NUMERIC(10, 2),
            note VARCHAR(40));
        CREATE TABLE refunds (id INTEGER PRIMARY KEY, amount NUMERIC(10, 2) NOT NULL);
        INSERT INTO users VALUES (1, 'ann'), (2, 'bob'), (3, 'cy'), (4, 'dee')
    """)
    mark = "?" if db.family == "sqlite" else "%s"
    marks = ", ".join([mark] * 6)
    for row in _events(n, per_ts):
        amount = None if row[4] is None else str(row[4])
        db.sql(
            f"INSERT INTO events VALUES ({marks})",
            (*row[:3], row[3].isoformat(" "), amount, row[5]),
        )
    for i in range(1, n // 3):  # ids overlapping the events' ids
        db.sql(f"INSERT INTO refunds VALUES ({mark}, {mark})", (i * 3, str(Decimal(i).scaleb(-1))))


def canonical(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Values as engine-independent Python: SQLite keeps timestamps as text, numbers loosely."""
    out: list[Any] = []
    for value in row:
        if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == " ":
            value = dt.datetime.fromisoformat(value)
        if isinstance(value, float | Decimal):
            value = Decimal(str(value)).normalize()
        if isinstance(value, int) and not isinstance(value, bool):
            value = Decimal(value).normalize()
        out.append(value)
    return tuple(out)


def rows_of(db: Database, sql: str) -> Counter[tuple[Any, ...]]:
    return Counter(canonical(r) for r in db.sql(sql))


def write_pipeline(
    tmp_path: Path, source: Database, dest: Database, stream: dict[str, Any], **extra: Any
) -> Path:
    doc = {
        "name": "query_stream",
        "source": {"url": source.url},
        "destination": {"url": dest.url},
        "streams": [stream],
        "batch_size": 7,
        **extra,
    }
    path = tmp_path / "query.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def assert_copied(source: Database, dest: Database, query: str, target: str, columns: str) -> int:
    """The destination table holds exactly the query's rows: none missing, none doubled."""
    want = rows_of(source, query)
    got = rows_of(dest, f"SELECT {columns} FROM {target}")
    assert got == want, (
        f"missing {sum((want - got).values())}: {list((want - got).elements())[:3]}; "
        f"unexpected {sum((got - want).values())}: {list((got - want).elements())[:3]}"
    )
    return sum(got.values())


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
def src(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    yield from make_database(request.param, tmp_path, "src")


@pytest.fixture(params=["postgresql", "sqlite"])
def dst(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    yield from make_database(request.param, tmp_path, "dst")


def test_a_join_query_is_copied_row_for_row(tmp_path: Path, src: Database, dst: Database) -> None:
    setup_events(src)
    stream = {"name": "recent", "query": JOIN_QUERY, "cursor": "ts", "tie_breaker": "id"}
    done = run_cli(write_pipeline(tmp_path, src, dst, stream))
    assert done.returncode == 0, done.stderr  # the verify phase passed too
    n = assert_copied(src, dst, JOIN_QUERY, "recent", "id, ts, user_name, amount, note")
    assert n == sum(1 for e in _events(300, 9) if e[2] != "test" or e[5] == NOTES[1])
    assert ledger_rows(dst, "query_stream") == n


def test_a_postgresql_query_is_cut_into_parallel_chunks_by_its_estimate(
    tmp_path: Path, pg: Database, lite: Database
) -> None:
    """The planner's estimate (EXPLAIN) sizes a query's chunks as a table's, so two workers
    copy it side by side; the rows still arrive exactly once."""
    setup_events(pg)
    pg.sql("ANALYZE")
    query = "SELECT e.id, e.kind, e.amount FROM events e WHERE e.kind <> 'test'"
    stream = {"name": "by_id", "query": query}
    done = run_cli(write_pipeline(tmp_path, pg, lite, stream, workers=2))
    assert done.returncode == 0, done.stderr
    chunks = lite.sql("SELECT count(*) FROM _milepost_chunks WHERE stream = 'by_id'")[0][0]
    assert chunks > 1
    assert assert_copied(pg, lite, query, "by_id", "id, kind, amount") == 225


@pytest.mark.parametrize(
    ("source_family", "dest_family", "how"),
    [
        ("postgresql", "sqlite", "primary key"),
        ("mysql", "postgresql", "primary key"),
        ("sqlite", "postgresql", "tie_breaker"),
        ("postgresql", "postgresql", "tie_breaker"),
    ],
)
def test_equal_cursor_values_straddling_batches_are_copied_once(
    tmp_path: Path, source_family: str, dest_family: str, how: str
) -> None:
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        # 11 rows per timestamp, 4 rows per batch: every batch boundary splits a group.
        setup_events(source, n=220, per_ts=11)
        if how == "primary key":
            # One table: its primary key (id) is appended to the non-unique cursor.
            query = "SELECT id, created_at AS ts, amount, note FROM events WHERE kind <> 'test'"
            stream = {"name": "ev", "query": query, "cursor": "ts"}
        else:
            query = JOIN_QUERY
            stream = {"name": "ev", "query": query, "cursor": "ts", "tie_breaker": "id"}
        run = Cli.run(write_pipeline(tmp_path, source, dest, stream, batch_size=4))
        rc = run.finish()
        assert rc == 0, run.describe(rc)
        columns = (
            "id, ts, amount, note" if how == "primary key" else "id, ts, user_name, amount, note"
        )
        n = assert_copied(source, dest, query, "ev", columns)
        ids = [r[0] for r in dest.sql("SELECT id FROM ev")]
        assert len(ids) == len(set(ids)) == n > 150
        # The cursor is (ts, id), so a batch ends inside a group of equal timestamps: every
        # batch but the last holds exactly 4 rows. (By ts alone, each would swell to take
        # its whole group, and a later row with an equal ts would be missed incrementally.)
        (cursor,) = dest.sql("SELECT cursor_columns FROM _milepost_streams")[0]
        assert json.loads(cursor) == ["ts", "id"]
        sizes = [e["rows"] for e in run.events if e.get("kind") == "batch"]
        assert sum(sizes) == n and set(sizes[:-1]) == {4}, sizes


@pytest.mark.parametrize(
    ("source_family", "dest_family"), [("postgresql", "sqlite"), ("mysql", "postgresql")]
)
def test_a_union_query_is_read_wrapped(
    tmp_path: Path, source_family: str, dest_family: str
) -> None:
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        setup_events(source, n=120)
        query = (
            "SELECT id, 'event' AS kind, amount FROM events WHERE amount IS NOT NULL "
            "UNION ALL SELECT id, 'refund' AS kind, amount FROM refunds ORDER BY 1"
        )
        # Ids repeat across the branches: (id, kind) is unique.
        stream = {"name": "money", "query": query, "cursor": "id", "tie_breaker": "kind"}
        done = run_cli(write_pipeline(tmp_path, source, dest, stream, batch_size=5))
        assert done.returncode == 0, done.stderr
        n = assert_copied(source, dest, query, "money", "id, kind, amount")
        assert n == 120 - 120 // 7 + 120 // 3 - 1


def test_verify_reads_the_query_and_repair_recopies_what_differs(
    tmp_path: Path, pg: Database
) -> None:
    with database("sqlite", tmp_path, "dst") as dest:
        setup_events(pg)
        stream = {"name": "recent", "query": JOIN_QUERY, "cursor": "ts", "tie_breaker": "id"}
        path = write_pipeline(tmp_path, pg, dest, stream)
        assert run_cli(path).returncode == 0
        dest.sql("UPDATE recent SET note = 'changed' WHERE id = 10")
        dest.sql("DELETE FROM recent WHERE id = 201")
        found = cli("verify", str(path), "--json", cwd=tmp_path)
        assert found.returncode == 4, found.stderr
        (report,) = json.loads(found.stdout)["streams"]
        assert not report["equal"] and report["differences"]
        assert report["destination_rows"] == report["source_rows"] - 1
        fixed = cli("verify", str(path), "--repair", "--json", cwd=tmp_path)
        assert fixed.returncode == 0, fixed.stderr + fixed.stdout
        assert_copied(pg, dest, JOIN_QUERY, "recent", "id, ts, user_name, amount, note")


KILL_QUERY = (
    "SELECT i.id, i.name, i.qty, i.price, i.created_at, i.note FROM items i "
    "WHERE i.note IS NULL OR i.note <> 'NULL'"
)


@pytest.mark.parametrize(
    ("source_family", "dest_family"), [("postgresql", "postgresql"), ("mysql", "sqlite")]
)
def test_sigkill_mid_copy_then_rerun_copies_the_query_exactly_once(
    tmp_path: Path, source_family: str, dest_family: str
) -> None:
    label = f"query {source_family}->{dest_family}"
    rng, seed = seeded(label)
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        create_source(source, make_rows(8000, seed))
        create_destination(dest)  # no primary key: a row written twice stays twice
        want = table_rows(source, f"({KILL_QUERY}) AS q")
        doc = {
            "name": "kill",
            "source": {"url": source.url},
            "destination": {"url": dest.url},
            "streams": [{"name": "items", "query": KILL_QUERY}],  # cursor: the inferred key
            "batch_size": 200,
        }
        pipeline = tmp_path / "kill.yml"
        pipeline.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        rows = sum(want.values())
        log = kill_and_resume(
            pipeline,
            dest,
            rng,
            2,
            rows=rows,
            batch_size=200,
            max_batches=10,
            context=f"{label} (seed {seed})",
        )
        assert log.kills >= 2, log
        got = table_rows(dest)
        assert got == want, f"{label} (seed {seed}) after {log}: {sum(got.values())} != {rows}"
        assert ledger_rows(dest, "kill") == rows
        assert rows < 8000  # the WHERE did filter


@pytest.mark.parametrize(
    ("source_family", "stream", "said"),
    [
        ("sqlite", {"query": "SELECT id, note FROM events LIMIT 10"}, "ends in LIMIT"),
        ("sqlite", {"query": "DELETE FROM events"}, "is not a SELECT"),
        ("sqlite", {"query": "SELECT id, upper(note) FROM events"}, "without a name"),
        ("postgresql", {"query": "SELECT id FROM evnets"}, "the source rejects the query"),
        ("mysql", {"query": "SELECT id, nte FROM events"}, "the source rejects the query"),
        (
            "sqlite",
            {"query": "SELECT id, note FROM events", "cursor": "created_at"},
            "'created_at' is not an output column of the query (its columns: id, note)",
        ),
        (
            "postgresql",
            {"query": JOIN_QUERY, "cursor": "ts"},
            "is not known to be unique; name a `tie_breaker:`",
        ),
    ],
    ids=[
        "limit",
        "delete",
        "unnamed",
        "pg-unknown-table",
        "mysql-unknown-column",
        "cursor",
        "unique",
    ],
)
def test_a_bad_query_stops_before_anything_is_written(
    tmp_path: Path, source_family: str, stream: dict[str, Any], said: str
) -> None:
    with database(source_family, tmp_path, "src") as source:
        setup_events(source, n=20)
        dest = Database("sqlite", f"sqlite:///{tmp_path / 'dest.db'}", tmp_path / "dest.db")
        path = write_pipeline(tmp_path, source, dest, {"name": "recent", **stream})
        assert_usage_error(run_cli(path), "Stream 'recent'", said)
        assert tables(dest) == []
