"""Rows the destination refuses: `skip` sets them aside with the reason and carries on,
`fail` stops naming the row; both over every transfer path, and exactly once across a kill.

The destination table is created by the test with a CHECK constraint the source does not
have, so the refusal is the destination's own, as it would be in a real migration into a
stricter schema. Every path is covered because each writes differently: COPY bytes
passed through (PG->PG), COPY of server-rendered lines (MariaDB->PG), COPY rows
(SQLite->PG), multi-row INSERT (->MariaDB, ->SQLite), INSERT ... SELECT (SQLite->SQLite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import milepost
from conftest import Database, make_database
from milepost.errors import RowRejected

ROWS = 230
# Refused ids: one alone, a run of neighbours (they share a batch and straddle a batch
# boundary at 40), the very first and the very last row.
BAD = {1, 7, 38, 39, 40, 41, 42, 150, 230}

SOURCE_DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, qty INTEGER, note VARCHAR(40))"
DEST_DDL = {
    "postgresql": "CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT "
    "CONSTRAINT qty_not_negative CHECK (qty >= 0), note VARCHAR(40))",
    "mysql": "CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT, note VARCHAR(40), "
    "CONSTRAINT qty_not_negative CHECK (qty >= 0))",
    "sqlite": "CREATE TABLE items (id BIGINT PRIMARY KEY, qty BIGINT "
    "CONSTRAINT qty_not_negative CHECK (qty >= 0), note VARCHAR(40))",
}
PAIRS = [
    ("postgresql", "postgresql"),
    ("mysql", "postgresql"),
    ("sqlite", "postgresql"),
    ("postgresql", "mysql"),
    ("postgresql", "sqlite"),
    ("sqlite", "sqlite"),
]


def fill_source(db: Database) -> None:
    db.sql(SOURCE_DDL)
    mark = "?" if db.family == "sqlite" else "%s"
    db.sql_many(
        f"INSERT INTO items VALUES ({mark}, {mark}, {mark})",
        [(i, -i if i in BAD else i, f"note {i}") for i in range(1, ROWS + 1)],
    )


def pipeline(src: Database, dst: Database, mode: str, **extra: object) -> milepost.Pipeline:
    return milepost.build_pipeline(
        {
            "name": f"bad-rows-{mode}",
            "source": {"url": src.url},
            "destination": {"url": dst.url},
            "streams": [{"table": "items"}],
            "batch_size": 20,
            "workers": 1,
            "on_row_error": mode,
            **extra,
        }
    )


def rejected(dst: Database) -> list[tuple[int, dict[str, object], str]]:
    rows = dst.sql("SELECT cursor_value, row_data, reason FROM _milepost_rejected_rows")
    return sorted((json.loads(c)[0], json.loads(r), reason) for c, r, reason in rows)


@pytest.fixture(params=PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def pair(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    src_family, dst_family = request.param
    src_gen = make_database(src_family, tmp_path, "src")
    dst_gen = make_database(dst_family, tmp_path, "dst")
    src, dst = next(src_gen), next(dst_gen)
    fill_source(src)
    dst.sql(DEST_DDL[dst.family])
    yield src, dst
    for gen in (dst_gen, src_gen):
        next(gen, None)


def test_skip_sets_refused_rows_aside_and_copies_every_other_row(
    pair: tuple[Database, Database],
) -> None:
    src, dst = pair
    milepost.run(pipeline(src, dst, "skip"))

    copied = {int(i) for (i,) in dst.sql("SELECT id FROM items")}
    assert copied == set(range(1, ROWS + 1)) - BAD
    assert dst.sql("SELECT count(*) FROM items")[0][0] == ROWS - len(BAD)  # none twice
    aside = rejected(dst)
    assert [i for i, _, _ in aside] == sorted(BAD)
    for i, row, reason in aside:
        assert row == {"id": i, "qty": -i, "note": f"note {i}"}
        assert "qty_not_negative" in reason or "CONSTRAINT" in reason.upper()
    counts = dst.sql("SELECT SUM(rows_written), SUM(rows_rejected) FROM _milepost_chunks")
    assert [tuple(int(v) for v in r) for r in counts] == [(ROWS - len(BAD), len(BAD))]


def test_fail_names_the_first_refused_row_and_keeps_the_batches_before_it(
    pair: tuple[Database, Database],
) -> None:
    src, dst = pair
    with pytest.raises(RowRejected) as failure:
        milepost.run(pipeline(src, dst, "fail"))
    message = str(failure.value)
    assert "Stream 'items'" in message and "row with cursor (1)" in message
    assert "qty_not_negative" in message or "CONSTRAINT" in message.upper()
    assert dst.sql("SELECT count(*) FROM items")[0][0] == 0  # row 1 is in the first batch

    # Mend the source; the run resumes at the refused batch and finishes.
    mark = "?" if src.family == "sqlite" else "%s"
    src.sql(f"UPDATE items SET qty = 0 WHERE id IN ({', '.join([mark] * len(BAD))})", tuple(BAD))
    milepost.run(pipeline(src, dst, "fail"))
    assert dst.sql("SELECT count(*), SUM(qty) FROM items") == [
        (ROWS, sum(i for i in range(1, ROWS + 1) if i not in BAD))
    ]


def test_a_batch_of_nothing_but_refused_rows(tmp_path: Path, pg: Database) -> None:
    """Every row of every batch refused: bisection ends at single rows and commits none."""
    pg.sql("CREATE TABLE src (id INTEGER PRIMARY KEY, qty INTEGER)")
    pg.sql("INSERT INTO src SELECT g, -g FROM generate_series(1, 45) g")
    pg.sql("CREATE TABLE dst (id INTEGER, qty INTEGER CHECK (qty >= 0))")
    p = milepost.build_pipeline(
        {
            "name": "all-bad",
            "source": {"url": pg.url},
            "destination": {"url": pg.url},
            "streams": [{"table": "src", "name": "dst"}],
            "batch_size": 16,
            "on_row_error": "skip",
        }
    )
    milepost.run(p)
    assert pg.sql("SELECT count(*) FROM dst") == [(0,)]
    assert pg.sql("SELECT count(*), count(DISTINCT cursor_value) FROM _milepost_rejected_rows") == [
        (45, 45)
    ]


def test_set_aside_rows_exist_once_across_a_kill(tmp_path: Path, pg: Database) -> None:
    """A refused batch's rows, its set-aside rows and its watermark commit together: a
    SIGKILL right after such a commit, and the resumed run, leave each refused row once."""
    pg.sql("CREATE TABLE src (id INTEGER PRIMARY KEY, qty INTEGER)")
    pg.sql(
        "INSERT INTO src SELECT g, CASE WHEN g % 7 = 0 THEN -g ELSE g END "
        "FROM generate_series(1, 200) g"
    )
    pg.sql("CREATE TABLE dst (id INTEGER, qty INTEGER CHECK (qty >= 0))")
    path = tmp_path / "skip.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "skip-kill",
                "source": {"url": pg.url},
                "destination": {"url": pg.url},
                "streams": [{"table": "src", "name": "dst"}],
                "batch_size": 10,
                "workers": 1,
                "on_row_error": "skip",
            }
        )
    )
    env = {**os.environ, "MILEPOST_CRASH_AT": "copy.refused_after_commit@3"}
    command = [sys.executable, "-m", "milepost", "run", str(path), "--progress", "none"]
    killed = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    # Killed after the third refused batch committed: ids 7, 14, then 21 and 28 (batch 21-30).
    assert pg.sql("SELECT cursor_value FROM _milepost_rejected_rows ORDER BY id") == [
        ("[7]",),
        ("[14]",),
        ("[21]",),
        ("[28]",),
    ]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    bad = [i for i in range(1, 201) if i % 7 == 0]
    assert pg.sql("SELECT count(*), count(DISTINCT id) FROM dst") == [(200 - len(bad),) * 2]
    assert pg.sql("SELECT cursor_value FROM _milepost_rejected_rows ORDER BY id") == [
        (f"[{i}]",) for i in bad
    ]

    status = subprocess.run(
        [sys.executable, "-m", "milepost", "status", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(status.stdout)["rows_rejected"] == len(bad)
    shown = subprocess.run(
        [sys.executable, "-m", "milepost", "status", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"{len(bad)} refused row(s) set aside in _milepost_rejected_rows" in shown.stdout
