"""Bad input through the real CLI: exit code 2, one paragraph naming the culprit, no
traceback, no password, and nothing written to the destination.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml
from sqlalchemy.engine import make_url

from conftest import Database

PASSWORD = "s3cr3t-pw"


def with_password(url: str, password: str = PASSWORD) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MP_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "milepost", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def run_cli(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("run", str(path), "--progress", "none", *extra, cwd=path.parent)


def write_pipeline(tmp_path: Path, source: str, dest: str, **extra: Any) -> Path:
    doc = {
        "name": "bad_input",
        "source": {"url": source},
        "destination": {"url": dest},
        "streams": [{"table": "items"}],
        **extra,
    }
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def assert_usage_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 2 and one paragraph on stderr that names every one of `names`."""
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr + result.stdout
    assert err.startswith("milepost: ")
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)
    assert PASSWORD not in result.stderr + result.stdout
    return err


def tables(db: Database) -> list[str]:
    if db.family == "postgresql":
        rows = db.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='public'"
        )
    elif db.family == "mysql":
        rows = db.sql(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA=DATABASE()"
        )
    else:
        if not db.path or not db.path.exists():
            return []
        rows = db.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
    return sorted(r[0] for r in rows)


@pytest.fixture
def items(lite: Database) -> Database:
    """A SQLite source with a well-formed table `items`."""
    lite.script("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL, qty BIGINT);
        INSERT INTO items VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 3000000000)
    """)
    return lite


@pytest.fixture
def dest(pg: Database) -> Database:
    """A PostgreSQL destination reached with a password (the server trusts any password)."""
    return Database(pg.family, with_password(pg.url))


# --- the pipeline file itself -----------------------------------------------------------


def test_malformed_yaml_names_the_line(tmp_path: Path, items: Database, dest: Database) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(
        "name: bad_input\n"
        f"source: {{url: '{items.url}'}}\n"
        f"destination: {{url: '{dest.url}'}}\n"
        "streams:\n"
        "  - table: items\n"
        "    cursor: [id\n"
        "batch_size: 10\n",
        encoding="utf-8",
    )
    assert_usage_error(run_cli(path), "pipeline.yml", "line 7")
    assert tables(dest) == []


def test_unknown_key_is_named(tmp_path: Path, items: Database, dest: Database) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url, batch_sise=10)
    assert_usage_error(run_cli(path), "unknown key 'batch_sise'")
    assert tables(dest) == []


def test_unknown_key_inside_a_stream_is_named_with_its_path(
    tmp_path: Path, items: Database, dest: Database
) -> None:
    path = write_pipeline(
        tmp_path, items.url, dest.url, streams=[{"table": "items", "curser": "id"}]
    )
    assert_usage_error(run_cli(path), "streams[0].curser")


@pytest.mark.parametrize(
    ("stream", "names"),
    [
        (
            {"table": "items", "mode": "incremental", "lookback": "5m"},
            ["'streams[0]'", "needs `write: upsert`"],
        ),
        ({"table": "items", "lookback": "5m", "write": "upsert"}, ["needs `mode: incremental`"]),
        (
            {"table": "items", "mode": "incremental", "write": "upsert", "lookback": "5 mins"},
            ["'streams[0].lookback'", "30s, 5m, 2h or 1d"],
        ),
        ({"table": "items", "query": "SELECT 1"}, ["exactly one of table, query"]),
        ({"query": "SELECT id FROM items"}, ["needs a `name:`"]),
        ({"name": "x", "query": "SELECT id FROM items", "where": "id > 1"}, ["in the query"]),
        ({"table": "items", "write": "merge"}, ["'streams[0].write'", "'upsert'"]),
        ({"table": "items", "mode": "incremental", "write": "replace"}, ["defeats"]),
    ],
)
def test_stream_settings_that_contradict_are_refused(
    tmp_path: Path, items: Database, dest: Database, stream: dict[str, Any], names: list[str]
) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url, streams=[stream])
    assert_usage_error(run_cli(path), *names)
    assert tables(dest) == []


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"retry": {"max_attempts": 0}}, ["'retry.max_attempts'", "greater than or equal to 1"]),
        ({"verify": {"mode": "most"}}, ["'verify.mode'", "'full', 'sample' or 'off'"]),
        ({"verify": {"sample": 0}}, ["'verify.sample'", "greater than 0"]),
        ({"retry": {"initial_delay": 1}}, ["unknown key 'retry.initial_delay'"]),
        ({"on_row_error": "ignore"}, ["'on_row_error'", "'fail' or 'skip'"]),
        (
            {"alert_webhook": f"ftp://hooks.example.com/{PASSWORD}"},
            ["'alert_webhook'", "http:// or https://"],
        ),
    ],
)
def test_resilience_settings_are_checked(
    tmp_path: Path, items: Database, dest: Database, extra: dict[str, Any], names: list[str]
) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url, **extra)
    assert_usage_error(run_cli(path), *names)  # also: the webhook's secret path is not shown
    assert tables(dest) == []


def test_wrong_type_names_key_and_value(tmp_path: Path, items: Database, dest: Database) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url, batch_size="lots")
    assert_usage_error(run_cli(path), "'batch_size'", "'lots'")
    assert tables(dest) == []


def test_unset_environment_variable_is_named(
    tmp_path: Path, items: Database, dest: Database
) -> None:
    u = make_url(dest.url)
    url = f"postgresql://{u.username}:${{MP_TEST_UNSET_PASSWORD}}@{u.host}:{u.port}/{u.database}"
    path = write_pipeline(tmp_path, items.url, url)
    assert_usage_error(run_cli(path), "'destination.url'", "MP_TEST_UNSET_PASSWORD")
    assert tables(dest) == []


# --- what the source holds --------------------------------------------------------------


def test_missing_source_table_is_named(tmp_path: Path, items: Database, dest: Database) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url, streams=[{"table": "itemz"}])
    assert_usage_error(run_cli(path), "'itemz'")
    assert tables(dest) == []


def test_missing_cursor_column_is_named(tmp_path: Path, items: Database, dest: Database) -> None:
    path = write_pipeline(
        tmp_path, items.url, dest.url, streams=[{"table": "items", "cursor": ["nope"]}]
    )
    assert_usage_error(run_cli(path), "'nope'", "'items'")
    assert tables(dest) == []


def test_table_without_primary_key_or_cursor_is_refused(
    tmp_path: Path, lite: Database, dest: Database
) -> None:
    lite.sql("CREATE TABLE heap (a INTEGER, b TEXT)")
    path = write_pipeline(tmp_path, lite.url, dest.url, streams=[{"table": "heap"}])
    err = assert_usage_error(run_cli(path), "'heap'")
    assert "primary key" in err
    assert tables(dest) == []


def test_non_unique_cursor_without_primary_key_is_refused(
    tmp_path: Path, lite: Database, dest: Database
) -> None:
    lite.sql("CREATE TABLE heap (a INTEGER NOT NULL, b TEXT)")
    path = write_pipeline(tmp_path, lite.url, dest.url, streams=[{"table": "heap", "cursor": "a"}])
    err = assert_usage_error(run_cli(path), "'heap'", "(a)")
    assert "not unique" in err
    assert tables(dest) == []


def test_nullable_cursor_without_primary_key_is_refused(
    tmp_path: Path, lite: Database, dest: Database
) -> None:
    lite.sql("CREATE TABLE heap (a INTEGER UNIQUE, b TEXT)")
    path = write_pipeline(tmp_path, lite.url, dest.url, streams=[{"table": "heap", "cursor": "a"}])
    err = assert_usage_error(run_cli(path), "'a'", "'heap'")
    assert "NULL" in err
    assert tables(dest) == []


@pytest.mark.parametrize("column_type", ["point", "int4range", "timetz"])
def test_unsupported_type_names_table_and_column(
    tmp_path: Path, pg: Database, my: Database, column_type: str
) -> None:
    pg.sql(f"CREATE TABLE shapes (id int PRIMARY KEY, odd {column_type})")
    path = write_pipeline(tmp_path, with_password(pg.url), my.url, streams=[{"table": "shapes"}])
    assert_usage_error(run_cli(path), "'shapes'", "'odd'")
    assert tables(my) == []


# --- servers ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["source", "destination"])
@pytest.mark.parametrize("family", ["postgresql", "mysql"])
def test_unreachable_server_is_named_with_password_masked(
    tmp_path: Path, items: Database, dest: Database, role: str, family: str
) -> None:
    dead = f"{family}://someone:{PASSWORD}@127.0.0.1:1/nowhere"
    source, destination = (dead, dest.url) if role == "source" else (items.url, dead)
    err = assert_usage_error(run_cli(write_pipeline(tmp_path, source, destination)), "127.0.0.1:1")
    assert role in err
    assert tables(dest) == []


@pytest.fixture
def mysql_user(my: Database) -> Iterator[str]:
    """A MariaDB user whose password is PASSWORD, allowed into `my`'s database; dropped after."""
    name = f"mp_{secrets.token_hex(4)}"
    db = make_url(my.url).database
    for host in ("%", "localhost"):
        my.sql(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY '{PASSWORD}'")
        my.sql(f"GRANT ALL ON `{db}`.* TO '{name}'@'{host}'")
    try:
        yield name
    finally:
        for host in ("%", "localhost"):
            my.sql(f"DROP USER IF EXISTS '{name}'@'{host}'")


def test_wrong_password_on_mysql_is_refused_and_masked(
    tmp_path: Path, items: Database, my: Database, mysql_user: str
) -> None:
    # PostgreSQL here trusts every password, so only MariaDB can refuse a wrong one.
    right = make_url(my.url).set(username=mysql_user, password=PASSWORD)
    pymysql.connect(
        host=right.host, port=right.port, user=mysql_user, password=PASSWORD
    ).close()  # the user works with the right password
    wrong = right.set(password="wr0ng-" + PASSWORD).render_as_string(hide_password=False)
    result = run_cli(write_pipeline(tmp_path, items.url, wrong))
    err = assert_usage_error(result, mysql_user, "destination")
    assert "wr0ng" not in result.stderr + result.stdout
    assert "***" in err
    assert tables(my) == []


# --- what the destination already holds -------------------------------------------------


def test_destination_column_too_narrow_is_named(
    tmp_path: Path, items: Database, dest: Database
) -> None:
    dest.sql("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, qty smallint)")
    err = assert_usage_error(run_cli(write_pipeline(tmp_path, items.url, dest.url)), "'qty'")
    assert "int16" in err and "int64" in err
    assert tables(dest) == ["items"]
    assert dest.sql("SELECT count(*) FROM items") == [(0,)]


def test_destination_missing_column_is_named(
    tmp_path: Path, items: Database, dest: Database
) -> None:
    dest.sql("CREATE TABLE items (id bigint PRIMARY KEY, qty bigint)")
    assert_usage_error(run_cli(write_pipeline(tmp_path, items.url, dest.url)), "'label'")
    assert tables(dest) == ["items"]


def test_destination_with_rows_is_refused_then_fresh_replaces_them(
    tmp_path: Path, items: Database, dest: Database
) -> None:
    dest.script("""
        CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL, qty bigint);
        INSERT INTO items VALUES (1, 'old', 0), (99, 'stale', 0)
    """)
    path = write_pipeline(tmp_path, items.url, dest.url)

    assert_usage_error(run_cli(path), "'items'", "--fresh")
    assert tables(dest) == ["items"]
    assert dest.sql("SELECT id, label FROM items ORDER BY id") == [(1, "old"), (99, "stale")]

    fresh = run_cli(path, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert dest.sql("SELECT id, label, qty FROM items ORDER BY id") == [
        (1, "a", 10),
        (2, "b", 20),
        (3, "c", 3000000000),
    ]


# --- status -----------------------------------------------------------------------------


def test_status_of_a_never_run_pipeline(tmp_path: Path, items: Database, dest: Database) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url)

    plain = cli("status", str(path), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "bad_input: never run" in plain.stdout

    as_json = cli("status", str(path), "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "pipeline": "bad_input",
        "status": "never run",
        "streams": [],
    }
    assert tables(dest) == []  # status only reads


def test_status_json_after_a_run(tmp_path: Path, items: Database, dest: Database) -> None:
    path = write_pipeline(tmp_path, items.url, dest.url, batch_size=2)
    assert run_cli(path).returncode == 0

    result = cli("status", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert PASSWORD not in result.stdout
    assert report["pipeline"] == "bad_input"
    assert (report["status"], report["phase"]) == ("done", "done")
    assert isinstance(report["run_id"], str) and report["run_id"]
    assert report["lease"] is None
    assert report["rows_written"] == 3
    assert report["rows_rejected"] == 0
    (stream,) = report["streams"]
    assert stream["stream"] == "items"
    assert stream["state"] == "done"
    assert stream["rows_written"] == 3
    assert stream["chunks"] == stream["chunks_done"] >= 1
    assert set(stream) == {
        "stream",
        "rows_written",
        "rows_rejected",
        "rows_estimate",
        "chunks",
        "chunks_done",
        "state",
        "transfer",
        "mode",
        "completed",
    }
    assert stream["mode"] == "migrate"
    assert stream["completed"]["completed_runs"] == 1


def test_bad_pipeline_leaves_no_sqlite_destination_file(tmp_path: Path, items: Database) -> None:
    target = tmp_path / "never.db"
    path = write_pipeline(tmp_path, items.url, f"sqlite:///{target}", streams=[{"table": "itemz"}])
    assert_usage_error(run_cli(path), "'itemz'")
    assert not target.exists()
