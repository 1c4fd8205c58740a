"""Verification and repair on real servers: `milepost verify [--repair] [--json]` and the
Python API (`milepost.verify`, `milepost.repair`).

- Every supported type, copied between every pair of engines, verifies equal by the
  method that pair is meant to use, and every column takes part in the checksum (a
  value changed in any one column of one row is found).
- A destination tampered with in five ways at once (a changed value, a deleted row, an
  extra row, a doubled row, NULL turned into '') is reported as five ranges, each
  holding exactly one of the tampered keys and at most one batch of rows, with row counts
  that match the data; `--repair` re-copies exactly those ranges, records them in
  `_milepost_repairs`, and leaves the destination equal to the source row by row.
- Differing ranges are narrowed to a batch in a large table, and many differences in
  one chunk are reported coarser but all covered.
- A run killed in its copy verifies equal as far as the ledger says it copied, the
  rest reported as pending.
- A destination table that does not exist is a configuration error, not a traceback.

The phase gate inside `milepost run` is in test_verify_phase.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import milepost
from conftest import Database
from faults import (
    TABLE,
    assert_same_rows,
    count_rows,
    create_destination,
    create_source,
    database,
    ledger_rows,
    make_rows,
    write_pipeline,
)
from milepost import connectors, ledger
from milepost.cli import app
from milepost.verify import NATIVE, TEXT, Difference
from test_types import COLUMNS as TYPE_COLUMNS
from test_types import ROWS as TYPE_ROWS
from test_types import _source_param as source_param
from test_types import copy as copy_types
from test_types import fill_source, select_list

ROWS = 2_000
BATCH = 100


def method_for(source: str, dest: str) -> str:
    """PostgreSQL on both sides with identical types: each type's own hash; any other
    pair: the canonical text (SQLite writes it in SQL too)."""
    return NATIVE if source == dest == "postgresql" else TEXT


def mark(db: Database) -> str:
    return "?" if db.family == "sqlite" else "%s"


def cli(*args: str) -> tuple[int, str, str]:
    """The real CLI, in this process (Typer's runner): exit code, stdout, stderr."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def cli_verify(pipeline: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, stdout, stderr = cli("verify", str(pipeline), "--json", *extra)
    assert code in (0, 4), f"verify {extra}: exit {code}\n{stderr}"
    return code, json.loads(stdout)


def inside(key: int, diff: dict[str, Any]) -> bool:
    """Is cursor `key` in the reported range lo < key <= hi (None: open)?"""
    lo, hi = diff["lo"], diff["hi"]
    return (lo is None or lo[0] < key) and (hi is None or key <= hi[0])


def _holds(diff: Difference, key: int) -> bool:
    """The same for a Difference from the Python API (keys are tuples)."""
    return (diff.lo is None or diff.lo < (key,)) and (diff.hi is None or (key,) <= diff.hi)


def ids_within(ids: list[int], diff: dict[str, Any]) -> int:
    return sum(inside(i, diff) for i in ids)


def stream_doc(doc: dict[str, Any]) -> dict[str, Any]:
    (stream,) = doc["streams"]
    assert stream["stream"] == TABLE and stream["table"] == TABLE, stream
    return stream


# --- 1. every type, every engine pair ---------------------------------------------------

# One more source row per column (ids 101, 102, ...), each a copy of the row with id 2.
# In the destination, row 100 + i then gets column i from the row with id 3, which
# differs from row 2 in every column: one changed value in one column of one row each.
PROBES = {100 + i: col for i, col in enumerate(TYPE_COLUMNS) if col != "id"}


def fill_types_source(db: Database) -> None:
    fill_source(db)
    marks = "?" if db.family == "sqlite" else "%s"
    doc_mark = "%s::jsonb" if db.family == "postgresql" else marks
    values = ", ".join(doc_mark if c == "doc" else marks for c in TYPE_COLUMNS)
    for key in PROBES:
        row = (key, *TYPE_ROWS[1][1:])
        params = tuple(
            source_param(db.family, c, v) for c, v in zip(TYPE_COLUMNS, row, strict=True)
        )
        db.sql(f"INSERT INTO types ({', '.join(TYPE_COLUMNS)}) VALUES ({values})", params)


def change_one_column_per_probe(dest: Database) -> None:
    d = dest.family
    rows = {r[0]: r for r in dest.sql(f"SELECT {select_list(d)} FROM types")}
    m = mark(dest)
    for key, col in PROBES.items():
        position = TYPE_COLUMNS.index(col)
        value = rows[3][position]
        assert value != rows[key][position], col
        target = f"CAST({m} AS jsonb)" if d == "postgresql" and col == "doc" else m
        dest.sql(f"UPDATE types SET {col} = {target} WHERE id = {m}", (value, key))


def test_every_type_on_every_pair_verifies_equal_and_every_column_counts(
    source_db: Database, dest_db: Database
) -> None:
    fill_types_source(source_db)
    copy_types(source_db, dest_db, "types")  # the run verifies by itself: it must pass
    pipeline = milepost.build_pipeline(
        {
            "name": "types",
            "source": {"url": source_db.url},
            "destination": {"url": dest_db.url},
            "streams": [{"table": "types"}],
            "batch_size": 1,  # narrow differences down to single rows
        }
    )
    total = len(TYPE_ROWS) + len(PROBES)

    report = milepost.verify(pipeline)

    (stream,) = report.streams
    assert stream.method == method_for(source_db.family, dest_db.family)
    assert report.equal, report.differences
    assert stream.source_rows == stream.destination_rows == total
    assert stream.chunks_compared == stream.chunks >= 1 and stream.chunks_pending == 0

    # Every column takes part in the checksum: each changed value is found, alone.
    change_one_column_per_probe(dest_db)
    report = milepost.verify(pipeline)

    found = {}
    for diff in report.differences:
        assert diff.source_rows == diff.destination_rows == 1, diff
        keys = [k for k in PROBES if _holds(diff, k)]
        assert len(keys) == 1, (diff, keys)
        found[keys[0]] = PROBES[keys[0]]
    missed = sorted(set(PROBES.values()) - set(found.values()), key=TYPE_COLUMNS.index)
    assert missed == [], f"a changed value went unnoticed in column(s) {missed}"
    assert len(report.differences) == len(PROBES)


# --- 2. five kinds of difference, found, narrowed and repaired ---------------------------

MATRIX = [
    ("postgresql", "postgresql"),
    ("mysql", "postgresql"),
    ("postgresql", "mysql"),
    ("sqlite", "postgresql"),
    ("postgresql", "sqlite"),
    ("mysql", "mysql"),
    ("sqlite", "sqlite"),
]


def _tamper(dest: Database, rows: list[tuple[Any, ...]]) -> dict[str, tuple[int, int]]:
    """Five differences, each in its own stretch of the table (400 rows apart, so no two
    can share a range of at most one batch). Returns, per kind, the key it is at and
    destination rows minus source rows in any range holding it."""
    ids = [r[0] for r in rows]
    m = mark(dest)
    changed = ids[150]
    dest.sql(f"UPDATE {TABLE} SET name = {m} WHERE id = {m}", ("changed", changed))
    deleted = ids[550]
    dest.sql(f"DELETE FROM {TABLE} WHERE id = {m}", (deleted,))
    # A cursor value the source does not have (ids have gaps).
    gap = next(i for i in range(950, ROWS - 1) if ids[i + 1] - ids[i] > 1)
    extra = ids[gap] + 1
    dest.sql(f"INSERT INTO {TABLE} (id, name, qty) VALUES ({m}, {m}, {m})", (extra, "intruder", 7))
    doubled = ids[1350]
    dest.sql(
        f"INSERT INTO {TABLE} SELECT * FROM (SELECT * FROM {TABLE} WHERE id = {m}) AS t",
        (doubled,),
    )
    nulled = next(r[0] for r in rows[1750:] if r[5] is None)
    dest.sql(f"UPDATE {TABLE} SET note = '' WHERE id = {m}", (nulled,))
    assert count_rows(dest) == ROWS + 1
    return {
        "changed value": (changed, 0),
        "deleted row": (deleted, -1),
        "extra row": (extra, 1),
        "doubled row": (doubled, 1),
        "NULL vs ''": (nulled, 0),
    }


@pytest.mark.parametrize(
    ("source_db", "dest_db"), MATRIX, indirect=True, ids=[f"{s}->{d}" for s, d in MATRIX]
)
def test_differences_are_found_narrowed_and_repaired(
    tmp_path: Path, source_db: Database, dest_db: Database
) -> None:
    rows = make_rows(ROWS, seed=11)
    ids = [r[0] for r in rows]
    create_source(source_db, rows)
    create_destination(dest_db)  # no primary key: a doubled row can stay doubled
    pipeline = write_pipeline(tmp_path, "tamper", source_db, dest_db, batch_size=BATCH)
    assert milepost.run(milepost.load_pipeline(pipeline)).status == "done"
    tampered = _tamper(dest_db, rows)

    code, doc = cli_verify(pipeline)

    assert code == 4
    stream = stream_doc(doc)
    assert doc["equal"] is False and stream["equal"] is False
    assert stream["method"] == method_for(source_db.family, dest_db.family)
    assert (stream["source_rows"], stream["destination_rows"]) == (ROWS, ROWS + 1)
    assert stream["chunks_compared"] == stream["chunks"] and stream["chunks_pending"] == 0
    assert 1 <= stream["chunks_differing"] <= stream["chunks"]
    diffs = stream["differences"]
    for kind, (key, surplus) in tampered.items():
        holding = [d for d in diffs if inside(key, d)]
        assert len(holding) == 1, f"{kind} at id {key}: in {len(holding)} range(s): {diffs}"
        (d,) = holding
        in_source = ids_within(ids, d)
        assert d["source_rows"] == in_source, (kind, d, in_source)
        assert d["destination_rows"] == in_source + surplus, (kind, d)
        assert max(d["source_rows"], d["destination_rows"]) <= BATCH, (kind, d)
    assert len(diffs) == len(tampered), diffs

    code, fixed = cli_verify(pipeline, "--repair")

    assert code == 0
    assert fixed["streams"] == doc["streams"]  # the report before the repair
    repaired = fixed["repaired"]
    assert [(r["lo"], r["hi"]) for r in repaired] == [(d["lo"], d["hi"]) for d in diffs]
    for r, d in zip(repaired, diffs, strict=True):
        assert r["stream"] == TABLE
        assert (r["rows_deleted"], r["rows_copied"]) == (d["destination_rows"], d["source_rows"])
    after = stream_doc(fixed["after_repair"])
    assert fixed["after_repair"]["equal"] is True and after["differences"] == []
    assert after["source_rows"] == after["destination_rows"] == sum(d["source_rows"] for d in diffs)
    assert assert_same_rows(source_db, dest_db, "after repair") == ROWS

    m = mark(dest_db)
    recorded = dest_db.sql(
        "SELECT pipeline, run_id, stream, lo, hi, rows_deleted, rows_copied "
        f"FROM _milepost_repairs WHERE pipeline = {m} ORDER BY id",
        ("tamper",),
    )
    run_id = dest_db.sql(f"SELECT run_id FROM _milepost_runs WHERE pipeline = {m}", ("tamper",))
    assert [r[1] for r in recorded] == [run_id[0][0]] * len(diffs) and run_id[0][0]
    assert [
        (r[2], _json_or_none(r[3]), _json_or_none(r[4]), int(r[5]), int(r[6])) for r in recorded
    ] == [(TABLE, d["lo"], d["hi"], d["destination_rows"], d["source_rows"]) for d in diffs]


def _json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- 3. narrowing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_db", "dest_db"), [("postgresql", "postgresql")], indirect=True, ids=["pg->pg"]
)
def test_one_changed_row_in_a_large_table_is_narrowed_to_a_batch(
    tmp_path: Path, source_db: Database, dest_db: Database
) -> None:
    rows = make_rows(20_000, seed=5)
    ids = [r[0] for r in rows]
    create_source(source_db, rows)
    path = write_pipeline(tmp_path, "narrow", source_db, dest_db, batch_size=BATCH, workers=2)
    pipeline = milepost.load_pipeline(path)
    assert milepost.run(pipeline).status == "done"
    key = ids[12_345]
    dest_db.sql(f"UPDATE {TABLE} SET qty = 424242 WHERE id = %s", (key,))

    report = milepost.verify(pipeline)

    (stream,) = report.streams
    assert stream.method == NATIVE
    assert stream.chunks == 10 and stream.chunks_differing == 1
    (diff,) = report.differences
    assert _holds(diff, key)
    in_source = sum(_holds(diff, i) for i in ids)
    assert diff.source_rows == diff.destination_rows == in_source
    assert 1 <= in_source <= BATCH, diff


def test_many_differences_in_one_chunk_are_all_covered(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    """More differing stretches than a chunk may report: the ranges are coarser, but every
    changed row is inside one of them, and a repair of those ranges makes the tables equal."""
    rows = make_rows(ROWS, seed=3)
    ids = [r[0] for r in rows]
    create_source(lite, rows)
    path = write_pipeline(tmp_path, "many", lite, pg, batch_size=BATCH)  # one chunk
    pipeline = milepost.load_pipeline(path)
    milepost.run(pipeline)
    changed = ids[7::50]  # 40 rows, each in its own stretch of 50
    pg.sql(f"UPDATE {TABLE} SET qty = -1 WHERE id = ANY(%s)", (changed,))

    report = milepost.verify(pipeline)

    (stream,) = report.streams
    diffs = report.differences
    assert stream.chunks == stream.chunks_differing == 1 and len(diffs) <= 16, diffs
    for key in changed:
        holding = [d for d in diffs if _holds(d, key)]
        assert len(holding) == 1, (key, diffs)
    assert sum(d.source_rows for d in diffs) <= ROWS

    done = milepost.repair(pipeline, diffs)
    assert sum(r.rows_copied for r in done) == sum(d.source_rows for d in diffs)
    assert milepost.verify(pipeline).equal
    assert assert_same_rows(lite, pg, "after repair") == ROWS


# --- 4. a run killed in its copy ----------------------------------------------------------


def test_a_killed_run_verifies_what_it_copied_and_reports_the_rest_pending(
    tmp_path: Path,
) -> None:
    with (
        database("postgresql", tmp_path, "src") as source,
        database("sqlite", tmp_path, "dst") as dest,
    ):
        create_source(source, make_rows(3_000, seed=9))
        path = write_pipeline(tmp_path, "killed", source, dest, batch_size=50)
        env = {**os.environ, "MILEPOST_CRASH_AT": "copy.after_commit@3"}
        killed = subprocess.run(
            [sys.executable, "-m", "milepost", "run", str(path), "--progress", "none"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert killed.returncode == -9, killed.stderr
        copied = ledger_rows(dest, "killed")
        assert copied == count_rows(dest) == 150

        code, doc = cli_verify(path)

        assert code == 0
        stream = stream_doc(doc)
        assert doc["equal"] is True and stream["differences"] == []
        assert stream["chunks"] == 3 and stream["chunks_pending"] == 3
        assert stream["source_rows"] == stream["destination_rows"] == copied
        assert stream["chunks_compared"] == 1  # the chunk copied in part, to its watermark


# --- 6. nothing to compare ------------------------------------------------------------------


def test_verify_without_the_destination_table_is_a_configuration_error(
    tmp_path: Path, lite: Database
) -> None:
    create_source(lite, make_rows(10, seed=1))
    dest = tmp_path / "empty.db"
    path = tmp_path / "missing.yml"
    doc = {
        "name": "missing",
        "source": {"url": lite.url},
        "destination": {"url": f"sqlite:///{dest}"},
        "streams": [{"table": TABLE}],
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")

    done = subprocess.run(  # a real process: nothing but the message on stderr
        [sys.executable, "-m", "milepost", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    as_json = cli("verify", str(path), "--json")

    for code, stdout, stderr in [(done.returncode, done.stdout, done.stderr), as_json]:
        assert code == 2, (code, stdout, stderr)
        assert stdout == ""
        message = stderr.strip()
        assert f"'{TABLE}'" in message and "does not exist" in message, message
        assert "Traceback" not in message and "\n\n" not in message, message


# --- the lease ----------------------------------------------------------------------------


def test_verify_is_refused_while_a_live_runner_holds_the_lease(
    tmp_path: Path, lite: Database
) -> None:
    rows = make_rows(200, seed=8)
    create_source(lite, rows)
    dest = tmp_path / "dest.db"
    path = write_pipeline(
        tmp_path, "held", lite, Database("sqlite", f"sqlite:///{dest}", dest), batch_size=BATCH
    )
    pipeline = milepost.load_pipeline(path)
    milepost.run(pipeline)
    conn = connectors.connect(pipeline.destination_url(), "destination")
    try:
        lease, _, _ = ledger.acquire(conn, pipeline.name, pipeline.fingerprint())  # this process
        try:
            for extra in ([], ["--repair", "--json"]):
                code, stdout, stderr = cli("verify", str(path), *extra)
                assert code == 2, (extra, code, stdout, stderr)
                assert "is being run by" in stderr and f"pid {os.getpid()}" in stderr, stderr
        finally:
            ledger.release(conn, lease, "done")
    finally:
        conn.close()
    assert cli("verify", str(path))[0] == 0  # released: verifies again


# --- values only a careful encoding tells apart -----------------------------------------


@pytest.mark.parametrize(
    ("source_db", "dest_db"), [("postgresql", "mysql")], indirect=True, ids=["pg->mysql"]
)
def test_decimals_differing_beyond_28_digits_are_not_settled_as_equal(
    source_db: Database, dest_db: Database
) -> None:
    """The canonical text differs, so the range is re-checked by value on the client:
    that check must see all 38 digits (Python's default decimal context keeps 28)."""
    source_db.sql("CREATE TABLE wide (id integer PRIMARY KEY, big numeric(38, 10))")
    source_db.sql("INSERT INTO wide VALUES (1, 1234567890123456789012345678.0123456789), (2, 1)")
    pipeline = milepost.build_pipeline(
        {
            "name": "wide",
            "source": {"url": source_db.url},
            "destination": {"url": dest_db.url},
            "streams": [{"table": "wide"}],
            "batch_size": 1,
        }
    )
    assert milepost.run(pipeline).status == "done"
    dest_db.sql("UPDATE wide SET big = 1234567890123456789012345678.0123456780 WHERE id = 1")

    report = milepost.verify(pipeline)

    (stream,) = report.streams
    assert stream.method == TEXT and stream.settled_by_value == 0
    (diff,) = report.differences
    assert _holds(diff, 1) and not _holds(diff, 2), diff


# --- cursor order -------------------------------------------------------------------------


def test_a_text_cursor_ordered_differently_on_each_side_is_repaired_without_loss(
    tmp_path: Path, pg: Database
) -> None:
    """PostgreSQL's ICU collation puts 'B' after 'a'; SQLite's binary order before it."""
    words = sorted({f"{a}{b}{n}" for a in "aBc" for b in "xYz" for n in range(20)})
    pg.sql('CREATE TABLE words (code varchar(20) COLLATE "en-US-x-icu" PRIMARY KEY, n integer)')
    for i, w in enumerate(words):
        pg.sql("INSERT INTO words VALUES (%s, %s)", (w, i))
    dest = Database("sqlite", f"sqlite:///{tmp_path / 'dest.db'}", tmp_path / "dest.db")
    dest.sql("CREATE TABLE words (code VARCHAR(20) NOT NULL, n INTEGER)")  # binary order, no PK
    pipeline = milepost.build_pipeline(
        {
            "name": "words",
            "source": {"url": pg.url},
            "destination": {"url": dest.url},
            "streams": [{"table": "words"}],
            "batch_size": 10,
        }
    )
    assert milepost.run(pipeline).status == "done"
    dest.sql("UPDATE words SET n = -1 WHERE code = ?", (words[len(words) // 2],))

    report = milepost.verify(pipeline)
    milepost.repair(pipeline, report.differences)

    assert sorted(dest.sql("SELECT code, n FROM words")) == sorted(
        pg.sql("SELECT code, n FROM words")
    )
    assert all(d.source_rows >= 0 and d.destination_rows >= 0 for d in report.differences)
    # Each side sorts text by its own collation: a text cursor is compared and repaired
    # only as a whole, never cut into ranges that would hold other rows on each side.
    assert [(d.lo, d.hi) for d in report.differences] == [(None, None)]
    assert milepost.verify(pipeline).equal
