"""Second-reader review of issue 6: each test reproduces one defect found in review
(a row lost or doubled, or a wrong answer) against the real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import milepost
from conftest import Database
from faults import TABLE, create_destination, create_source, make_rows, update_pipeline
from faults import write_pipeline as faults_pipeline
from http_api import TOKEN, Api, expected, held, repos
from milepost.errors import CopyFailed
from test_config_errors import assert_usage_error, run_cli, tables
from test_http_source import REPO_COLUMNS, REPOS, repo_stream, write_yaml
from test_http_source import cli as http_cli
from test_incremental import EVENTS, create_events, first_rows, insert
from test_incremental import pipeline as incremental_pipeline
from test_incremental import rows_of as incremental_rows
from test_query_streams import write_pipeline


def test_a_set_returning_function_in_the_select_list_is_no_key(
    tmp_path: Path, pg: Database, lite: Database
) -> None:
    """`unnest(tags)` gives several output rows per table row, so the table's primary key
    is no key of the query. It was inferred as one: `write: upsert` by it kept one tag per
    id (40 of 60 rows lost) and verification passed. Now the cursor needs a tie-breaker."""
    pg.script("""
        CREATE TABLE posts (id INTEGER PRIMARY KEY, tags TEXT[] NOT NULL);
        INSERT INTO posts SELECT g, ARRAY['a' || g, 'b' || g, 'c' || g]
            FROM generate_series(1, 20) g
    """)
    query = "SELECT id, unnest(tags) AS tag FROM posts"
    stream = {"name": "tags", "query": query, "cursor": "id", "write": "upsert"}
    done = run_cli(write_pipeline(tmp_path, pg, lite, stream, batch_size=4))
    assert_usage_error(done, "tags", "tie_breaker")
    assert "tags" not in tables(lite)


def test_a_key_in_params_stays_out_of_the_ledger_and_may_be_rotated_before_a_resume(
    tmp_path: Path, lite: Database
) -> None:
    """An API authenticated by a query parameter echoes it into its next links: the next
    link of a resource in progress was stored verbatim in _milepost_resources, and the
    key's value was part of the pipeline's fingerprint, so a rotated key refused the
    resume ("the pipeline changed"). Now the resume asks with the key the config holds."""
    rotated = TOKEN + "-rotated"
    with Api() as api:
        api.add(REPOS, repos(12), style="link", size=5)
        stream = repo_stream("link", params={"per_page": 5, "api_key": TOKEN})
        path = write_yaml(tmp_path, api, lite, [stream])
        killed = http_cli(path, "run", crash_at="pages.after_commit@1")
        assert killed.returncode == -9, killed.stderr
        state = json.dumps(lite.sql("SELECT state FROM _milepost_resources"))
        assert "page=2" in state and TOKEN not in state
        api.forget_log()
        stream["params"]["api_key"] = rotated
        path = write_yaml(tmp_path, api, lite, [stream])
        again = http_cli(path, "run")
        assert again.returncode == 0, again.stderr
        asked = [(r.page, r.query.get("api_key")) for r in api.requests(REPOS)]
    assert asked == [(2, rotated), (3, rotated)], asked
    assert held(lite, "repos", REPO_COLUMNS) == expected(repos(12), REPO_COLUMNS)


def test_a_fresh_run_that_fails_before_emptying_keeps_the_watermarks(
    lite: Database, pg: Database
) -> None:
    """`--fresh` forgot the high waters in a transaction of their own, before the backup
    of the tables it empties. When the backup failed (a full disk, a kill during a long
    copy; here an event trigger), the tables were not emptied but the high waters were
    gone: the next plain run copied every row again on top of them."""
    create_events(lite)
    insert(lite, first_rows())
    p = incremental_pipeline(lite, pg, [EVENTS])
    milepost.run(p)
    pg.script("""
        CREATE FUNCTION no_backups() RETURNS event_trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'no space left for backups'; END $$;
        CREATE EVENT TRIGGER no_backups ON ddl_command_end WHEN TAG IN ('CREATE TABLE AS')
            EXECUTE FUNCTION no_backups()
    """)
    with pytest.raises(Exception, match="no space left"):
        milepost.run(p, fresh=True)
    pg.script("DROP EVENT TRIGGER no_backups; DROP FUNCTION no_backups()")

    again = milepost.run(p)

    assert again.rows_written == 0
    assert incremental_rows(pg) == incremental_rows(lite)


def test_a_last_page_whose_next_link_is_itself_ends_the_resource(
    tmp_path: Path, lite: Database
) -> None:
    """The cursor style stops on a repeated token; a next link pointing at the page it
    came from was followed forever, appending the same records again on every round."""
    with Api() as api:
        api.add(REPOS, repos(12), style="link", size=5)
        api.headers_on(REPOS, 3, Link=f'<{api.url}/orgs/acme/repos?per_page=5&page=3>; rel="next"')
        path = write_yaml(tmp_path, api, lite, [repo_stream("link")])
        env = {**os.environ, "TRACKER_TOKEN": TOKEN}
        done = subprocess.run(
            [sys.executable, "-m", "milepost", "run", str(path), "--progress", "none"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert api.pages_read(REPOS) == [1, 1, 2, 3]
    assert held(lite, "repos", REPO_COLUMNS) == expected(repos(12), REPO_COLUMNS)


def test_a_python_cursor_that_would_read_back_changed_is_refused(pg: Database) -> None:
    """A cursor of offsets by partition number, {0: 3}, was stored as JSON and handed back
    on the next run as {"0": 3}: the generator did not find its offset and started over,
    so every row was copied again. It is now refused at the batch that hands it over."""

    @milepost.source(columns={"id": "bigint"})
    def offsets(cursor: Any):
        start = (cursor or {}).get(0, 0)
        for first in range(start, 6, 3):
            yield [(i,) for i in range(first, first + 3)], {0: first + 3}

    p = milepost.build_pipeline(
        {
            "name": "offsets",
            "destination": {"url": pg.url},
            "streams": [{"name": "offsets", "python": offsets, "mode": "incremental"}],
        }
    )
    with pytest.raises(CopyFailed, match=r"cursor of type dict.*read back changed"):
        milepost.run(p)
    assert pg.sql("SELECT count(*) FROM offsets") == [(0,)]


def test_a_sqlite_query_naming_a_missing_table_or_column_is_exit_2(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    """SQLite accepts CREATE TEMP VIEW over a table that does not exist: the error came
    from the reflection after it, as `unexpected error: OperationalError`, exit 1."""
    lite.script("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")
    for query, name in (("SELECT id FROM nothere", "nothere"), ("SELECT id, m FROM t", "m")):
        stream = {"name": "q", "query": query, "cursor": "id"}
        done = run_cli(write_pipeline(tmp_path, lite, pg, stream))
        assert_usage_error(done, "'q'", "rejects the query", name)
        assert tables(pg) == []


def test_a_password_in_the_base_url_stays_out_of_the_ledger(tmp_path: Path, lite: Database) -> None:
    """A relative next link joined to the base URL took its user and password along, and
    was stored so in _milepost_resources; the resume puts them back from the config."""
    with Api(token=None) as api:
        api.add(REPOS, repos(12), style="link", size=5)
        relative = '</api/orgs/acme/repos?per_page=5&page=2>; rel="next"'
        api.headers_on(REPOS, 1, Link=relative)
        path = write_yaml(tmp_path, api, lite, [repo_stream("link")])
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["source"]["url"] = api.url.replace("http://", "http://etl:pw-s3cret@")
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        killed = http_cli(path, "run", crash_at="pages.after_commit@1")
        assert killed.returncode == -9, killed.stderr
        state = json.dumps(lite.sql("SELECT state FROM _milepost_resources"))
        assert "page=2" in state and "pw-s3cret" not in state
        again = http_cli(path, "run")
        assert again.returncode == 0, again.stderr
    assert held(lite, "repos", REPO_COLUMNS) == expected(repos(12), REPO_COLUMNS)


def test_upsert_into_a_table_whose_only_unique_index_on_the_key_is_partial_is_exit_2(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    """A partial unique index (`WHERE id IS NOT NULL`) passed the check for a unique
    index on the key, but neither engine's ON CONFLICT (id) can use it: the run failed at
    its first batch, exit 1, after the ledger was written."""
    create_source(lite, make_rows(20, 7))
    create_destination(pg)
    pg.sql(f"CREATE UNIQUE INDEX items_id ON {TABLE} (id) WHERE id IS NOT NULL")
    path = faults_pipeline(tmp_path, "partial", lite, pg, batch_size=5)
    update_pipeline(path, streams=[{"table": TABLE, "write": "upsert"}])
    done = run_cli(path)
    assert_usage_error(done, "Stream 'items'", "(id)", "no primary key or unique index")
    assert tables(pg) == [TABLE]


def test_an_api_mixing_zoned_and_bare_times_in_its_cursor_field_is_tracked() -> None:
    """Some APIs write `2024-05-01T12:00:00Z` on one record and `2024-05-01T12:30:00` on the
    next; both are times, and the larger must become the high water without a TypeError."""
    from milepost.config import StreamConfig
    from milepost.page_cursor import CursorTracker

    stream = StreamConfig.model_validate(
        {
            "name": "issues",
            "endpoint": "/issues",
            "columns": {"id": "bigint", "updated_at": "timestamptz"},
            "key": ["id"],
            "cursor": ["updated_at"],
            "mode": "incremental",
            "write": "upsert",
        }
    )
    tracker = CursorTracker(stream, "timestamptz", None)
    assert tracker.keep({"id": 1, "updated_at": "2024-05-01T12:00:00Z"})
    assert tracker.keep({"id": 2, "updated_at": "2024-05-01T12:30:00"})
    assert tracker.keep({"id": 3, "updated_at": "2024-05-01T12:10:00+00:00"})
    assert tracker.high_water() == {"value": "2024-05-01T12:30:00"}


def test_a_null_records_value_is_an_empty_page_but_a_missing_path_is_not() -> None:
    """`{"items": null}` on the last page ends the resource; `records: results` against a
    body without `results` stays a wrong path (refused, exit 2: test_http_source)."""
    from milepost.connectors.http import _holds_null

    assert _holds_null({"items": None, "next": None}, "items")
    assert _holds_null({"data": {"items": None}}, "data.items")
    assert not _holds_null({"items": []}, "items")
    assert not _holds_null({"data": {}}, "data.items")
    assert not _holds_null({"other": None}, "items")
