"""Python sources: generators decorated with @milepost.source, copied with the same guarantee.

A generator named in YAML is copied without any `source:`; a `kill -9` right before or
after a batch's commit resumes by calling the generator with the cursor of the last
committed batch (its calls are logged to a file, so the test sees what it was asked); an
incremental run starts where the last completed one ended; an import that fails, or a
function that is not decorated, is exit 2 with nothing written. The destination tables
have no primary key unless said, so a batch written twice would show as doubled rows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

import milepost
from conftest import Database
from http_api import canonical
from milepost.errors import ConfigError, CopyFailed, Paused

COLUMNS = {"id": "bigint", "kind": "text", "at": "timestamptz", "payload": "json"}

MODULE = '''
import json, os
import milepost

COLUMNS = {"id": "bigint", "kind": "text", "at": "timestamptz", "payload": "json"}


def at(i):
    return f"2024-01-01T00:{i:02d}:00Z"


@milepost.source(columns=COLUMNS)
def events(cursor):
    """Rows after `cursor` (an int), 7 at a time; odd ones as tuples, even ones as dicts."""
    with open(os.environ["EVENTS_LOG"], "a") as log:
        log.write(json.dumps(cursor) + "\\n")
    start, total = cursor or 0, int(os.environ.get("EVENTS_TOTAL", "25"))
    while start < total:
        end = min(start + 7, total)
        rows = [
            (i, f"k{i % 3}", at(i), {"i": i, "s": "é\\t"})
            if i % 2
            else {"id": i, "kind": f"k{i % 3}" if i % 4 == 0 else None, "at": at(i)}
            for i in range(start, end)
        ]
        yield rows, end
        start = end


def plain(cursor):
    yield [], None
'''


def expected_rows(total: int, start: int = 0) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    for i in range(start, total):
        at = f"2024-01-01T00:{i:02d}:00Z"
        if i % 2:
            row = (i, f"k{i % 3}", at, {"i": i, "s": "é\t"})
        else:
            row = (i, None if i % 4 else f"k{i % 3}", at, None)
        out[tuple(canonical(v, k) for v, k in zip(row, COLUMNS.values(), strict=True))] += 1
    return out


def held(db: Database, table: str = "events") -> Counter[tuple[Any, ...]]:
    cols = ", ".join(COLUMNS)
    return Counter(
        tuple(canonical(v, k) for v, k in zip(row, COLUMNS.values(), strict=True))
        for row in db.sql(f"SELECT {cols} FROM {table}")
    )


def setup_module_file(tmp_path: Path) -> Path:
    (tmp_path / "mysrc.py").write_text(MODULE, encoding="utf-8")
    return tmp_path / "calls.log"


def write_yaml(tmp_path: Path, dest: Database, python: str = "mysrc:events", **extra: Any) -> Path:
    doc = {
        "name": "gen",
        "destination": {"url": dest.url},
        "streams": [{"name": "events", "python": python, **extra}],
        "batch_size": 7,
    }
    path = tmp_path / "gen.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def cli(path: Path, log: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MILEPOST_CRASH_AT"}
    env["EVENTS_LOG"] = str(log)
    if crash_at:
        env["MILEPOST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "milepost", "run", str(path), "--progress", "plain"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
        env=env,
    )


def calls(log: Path) -> list[Any]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_generator_named_in_yaml_is_copied_without_a_source(
    tmp_path: Path, lite: Database
) -> None:
    log = setup_module_file(tmp_path)
    done = cli(write_yaml(tmp_path, lite), log)
    assert done.returncode == 0, done.stderr
    assert held(lite) == expected_rows(25)
    assert calls(log) == [None]
    assert "verification skips events" in done.stderr


@pytest.mark.parametrize(
    ("point", "committed"),
    [("pages.before_commit@3", 14), ("pages.after_commit@3", 21)],
)
def test_a_kill_resumes_with_the_cursor_of_the_last_committed_batch(
    tmp_path: Path, pg: Database, point: str, committed: int
) -> None:
    log = setup_module_file(tmp_path)
    path = write_yaml(tmp_path, pg)
    killed = cli(path, log, crash_at=point)
    assert killed.returncode == -9, killed.stderr
    assert pg.sql("SELECT count(*) FROM events")[0][0] == committed
    assert pg.sql("SELECT state FROM _milepost_resources WHERE stream = 'events'") == [
        (json.dumps({"cursor": {"v": committed}, "n": committed // 7}, separators=(",", ":")),)
    ]
    again = cli(path, log)
    assert again.returncode == 0, again.stderr
    assert calls(log) == [None, committed]  # asked again from the last committed cursor
    assert held(pg) == expected_rows(25)


# --- the Python API --------------------------------------------------------------------------

FEED: list[tuple[int, str]] = []
SEEN: list[Any] = []


@milepost.source(columns={"id": "bigint", "name": "text"}, key="id")
def feed(cursor: Any):
    """Rows of FEED after the id `cursor` (a dict, to show any JSON cursor round-trips)."""
    SEEN.append(cursor)
    last = (cursor or {}).get("last", 0)
    batch = [row for row in FEED if row[0] > last]
    for start in range(0, len(batch), 4):
        part = batch[start : start + 4]
        yield part, {"last": part[-1][0], "at": dt.date(2024, 1, 1).isoformat()}


@pytest.mark.parametrize("write", ["append", "upsert"])
def test_an_incremental_generator_starts_where_the_last_run_ended(pg: Database, write: str):
    FEED[:] = [(i, f"n{i}") for i in range(1, 11)]
    SEEN.clear()
    p = milepost.build_pipeline(
        {
            "name": "feed",
            "destination": {"url": pg.url},
            "streams": [{"name": "feed", "python": feed, "mode": "incremental", "write": write}],
        }
    )
    first = milepost.run(p)
    FEED.extend((i, f"n{i}") for i in range(11, 14))
    second = milepost.run(p)
    third = milepost.run(p)
    assert (first.rows_written, second.rows_written, third.rows_written) == (10, 3, 0)
    assert SEEN == [None, {"last": 10, "at": "2024-01-01"}, {"last": 13, "at": "2024-01-01"}]
    rows = pg.sql("SELECT id, name FROM feed ORDER BY id")
    assert rows == [(i, f"n{i}") for i in range(1, 14)]
    assert pg.sql(
        "SELECT c.contype FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
        "WHERE t.relname = 'feed'"
    ) == [("p",)]  # the key is the primary key


def test_a_pause_stops_after_a_committed_batch_and_the_next_run_goes_on(pg: Database) -> None:
    FEED[:] = [(i, f"n{i}") for i in range(1, 21)]
    SEEN.clear()
    p = milepost.build_pipeline(
        {
            "name": "paused",
            "destination": {"url": pg.url},
            "streams": [{"name": "feed", "python": feed}],
        }
    )
    runner = milepost.Runner(p)
    batches: list[int] = []

    def on_event(event: Any) -> None:
        if event.kind == "batch":
            batches.append(event.rows)
            if len(batches) == 2:
                runner.request_stop("test", announce=False)

    runner.emit = on_event  # type: ignore[method-assign]
    with pytest.raises(Paused):
        runner.run()
    assert pg.sql("SELECT count(*) FROM feed") == [(8,)]  # two batches of 4, no more
    assert milepost.run(p).resumed
    assert SEEN == [None, {"last": 8, "at": "2024-01-01"}]
    assert pg.sql("SELECT id FROM feed ORDER BY id") == [(i,) for i in range(1, 21)]


@pytest.mark.parametrize(
    ("python", "words"),
    [
        ("nosuch_module:events", ["events", "nosuch_module:events", "could not be imported"]),
        ("mysrc:plain", ["events", "mysrc:plain", "not decorated"]),
        ("mysrc:missing", ["events", "no 'missing'"]),
        ("mysrc", ["events", "module:function"]),
    ],
)
def test_a_generator_that_cannot_be_used_is_exit_2_with_nothing_written(
    tmp_path: Path, lite: Database, python: str, words: list[str]
) -> None:
    log = setup_module_file(tmp_path)
    done = cli(write_yaml(tmp_path, lite, python=python), log)
    err = done.stderr.strip()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not lite.path.exists()


def test_a_cursor_that_cannot_be_recorded_or_a_bad_row_stops_the_stream(pg: Database) -> None:
    @milepost.source(columns={"id": "bigint"})
    def odd_cursor(cursor: Any):
        yield [(1,)], object()

    @milepost.source(columns={"id": "bigint", "at": "date"})
    def bad_row(cursor: Any):
        yield [(1, "2024-01-01"), (2, "not a date")], 1

    for fn, words in (
        (odd_cursor, ["odd", "cursor of type object"]),
        (bad_row, ["bad", "field 'at'", "'not a date'", "batch 1"]),
    ):
        name = "odd" if fn is odd_cursor else "bad"
        p = milepost.build_pipeline(
            {
                "name": name,
                "destination": {"url": pg.url},
                "streams": [{"name": name, "python": fn}],
            }
        )
        with pytest.raises(CopyFailed) as caught:
            milepost.run(p)
        for word in words:
            assert word in str(caught.value), (word, str(caught.value))
        assert pg.sql(f"SELECT count(*) FROM {name}") == [(0,)]  # that batch is not written


def test_declaring_columns_twice_differently_is_refused(lite: Database) -> None:
    with pytest.raises(ConfigError) as caught:
        milepost.run(
            milepost.build_pipeline(
                {
                    "name": "twice",
                    "destination": {"url": lite.url},
                    "streams": [{"name": "feed", "python": feed, "columns": {"id": "text"}}],
                }
            )
        )
    assert "columns" in str(caught.value) and caught.value.exit_code == 2
