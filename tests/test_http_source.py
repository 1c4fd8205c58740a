"""HTTP API sources against a real local API (tests/http_api.py) and real destinations.

Every paging style copies every record exactly once; a child stream reads one resource
per parent record; a `kill -9` in the fifth page of the third resource resumes there
without asking for any page of the first two again; 429s are waited out for as long as
the API says (bounded); random 5xx are survived; an incremental run asks `since` the
remembered value and adds only what is new; a bad endpoint is exit 2 naming the URL; the
header's token is never shown. Rows are compared as multisets, so a doubled row shows.
"""

from __future__ import annotations

import email.utils
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import milepost
from conftest import Database
from faults import Cli
from http_api import TOKEN, Api, expected, held, pulls, repos, stamp
from milepost.errors import ConfigError, MilepostError
from milepost.status import pipeline_status

REPO_COLUMNS = {
    "id": "bigint",
    "full_name": "text",
    "updated_at": "timestamptz",
    "owner": "json",
    "private": "boolean",
}
PULL_COLUMNS = {
    "id": "bigint",
    "repo": "text",
    "title": "text",
    "updated_at": "timestamptz",
    "merged": "boolean",
}
REPOS = "/api/orgs/acme/repos"
STYLES = {
    "cursor": ({"style": "cursor", "param": "cursor", "next": "meta.next"}, "items"),
    "page": ({"style": "page", "param": "page", "size_param": "per_page", "size": 5}, ""),
    "link": ({"style": "next_link"}, "data"),
    "link_body": ({"style": "next_link", "next": "links.next"}, "data"),
    "none": ({"style": "none"}, ""),
}
FAST_RETRY = {"max_attempts": 6, "initial_delay_s": 0.01, "max_delay_s": 0.05}


def repo_stream(style: str = "cursor", **extra: Any) -> dict[str, Any]:
    paginate, records = STYLES[style]
    return {
        "name": "repos",
        "endpoint": "/orgs/acme/repos",
        "records": records,
        "paginate": paginate,
        "params": {"per_page": 5},
        "columns": REPO_COLUMNS,
        **extra,
    }


def pull_stream(**extra: Any) -> dict[str, Any]:
    return {
        "name": "pulls",
        "endpoint": "/repos/{full_name}/pulls",
        "parent": "repos",
        "paginate": {"style": "page", "param": "page", "size_param": "per_page", "size": 3},
        "columns": PULL_COLUMNS,
        **extra,
    }


def pipeline(api: Api, dest: Database, streams: list[dict[str, Any]], **extra: Any) -> Any:
    return milepost.build_pipeline(
        {
            "name": "tracker",
            "source": {"url": api.url, "headers": {"Authorization": f"Bearer {TOKEN}"}},
            "destination": {"url": dest.url},
            "streams": streams,
            "retry": FAST_RETRY,
            "verify": {"mode": "off"},
            **extra,
        }
    )


def write_yaml(tmp_path: Path, api: Api, dest: Database, streams: list[dict[str, Any]], **extra):
    doc = {
        "name": "tracker",
        "source": {"url": api.url, "headers": {"Authorization": "Bearer ${TRACKER_TOKEN}"}},
        "destination": {"url": dest.url},
        "streams": streams,
        "retry": FAST_RETRY,
        **extra,
    }
    path = tmp_path / "tracker.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def cli(
    path: Path, *args: str, crash_at: str | None = None, after: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MILEPOST_CRASH_AT"}
    env["TRACKER_TOKEN"] = TOKEN
    if crash_at:
        env["MILEPOST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "milepost", *args, str(path), "--progress", "jsonl"]
        if args[0] == "run"
        else [sys.executable, "-m", "milepost", *args, str(path), *after],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
        env=env,
    )


def serve_repos_and_pulls(api: Api, count: int, pulls_each: int) -> list[dict[str, Any]]:
    """`count` repos (cursor pages of 5) and `pulls_each` pulls per repo (pages of 3)."""
    rs = repos(count)
    api.add(REPOS, rs, style="cursor", size=5)
    everything = []
    for i, r in enumerate(rs):
        ps = pulls(r["full_name"], 100_000 * (i + 1), pulls_each)
        api.add(f"/api/repos/{r['full_name']}/pulls", ps, style="page", size=3)
        everything += ps
    return everything


# --- every paging style --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "family", "count"),
    [
        ("cursor", "postgresql", 23),
        ("page", "sqlite", 23),
        ("page", "postgresql", 20),  # a full last page: the empty page after it ends it
        ("link", "postgresql", 23),
        ("link_body", "sqlite", 23),
        ("none", "mysql", 23),
    ],
)
def test_each_paging_style_copies_every_record_exactly_once(
    style: str, family: str, count: int, request: pytest.FixtureRequest
) -> None:
    dest: Database = request.getfixturevalue(
        {"postgresql": "pg", "mysql": "my"}.get(family, "lite")
    )
    records = repos(count)
    with Api() as api:
        api.add(REPOS, records, style={"link_body": "link_body"}.get(style, style), size=5)
        result = milepost.run(pipeline(api, dest, [repo_stream(style, key=["id"])]))
        pages = api.pages_read(REPOS)
    assert result.status == "done" and result.rows_written == count
    assert held(dest, "repos", REPO_COLUMNS) == expected(records, REPO_COLUMNS)
    # The probe asks for the first page before anything is written; then each page once
    # (page numbers end on a short page, or on an empty one after a full last page).
    if style == "none":
        wanted = [1]
    elif style == "page":
        wanted = list(range(1, count // 5 + 2))
    else:
        wanted = list(range(1, -(-count // 5) + 1))
    assert pages == [1, *wanted], pages


# --- parent expansion ------------------------------------------------------------------------


def test_a_child_stream_reads_one_resource_per_parent_record(pg: Database) -> None:
    with Api() as api:
        everything = serve_repos_and_pulls(api, 6, 7)
        api.add("/api/repos/acme/repo-2/pulls", [], style="page", size=3)  # one without any
        everything = [p for p in everything if p["repo"] != "acme/repo-2"]
        p = pipeline(api, pg, [repo_stream(key=["id"]), pull_stream(key=["id"])])
        milepost.run(p)
        per_resource = {path: api.pages_read(path) for path in api.collections if "pulls" in path}
        asked = len(api.requests())
        skipped: list[str] = []
        report = milepost.verify(p, on_event=lambda e: skipped.append(e.text or ""))
        assert report.equal and len(api.requests()) == asked  # nothing is read to verify
        assert any("verification skips repos, pulls" in t for t in skipped)
    assert held(pg, "pulls", PULL_COLUMNS) == expected(everything, PULL_COLUMNS)
    assert held(pg, "repos", REPO_COLUMNS) == expected(repos(6), REPO_COLUMNS)
    assert per_resource["/api/repos/acme/repo-2/pulls"] == [1]
    assert all(v == [1, 2, 3] for k, v in per_resource.items() if "repo-2" not in k)
    status = {s["stream"]: s for s in pipeline_status(p)["streams"]}
    assert status["pulls"]["resources"]["resources"] == 6
    assert status["pulls"]["resources"]["resources_done"] == 6
    assert status["pulls"]["rows_written"] == len(everything)


# --- kill -9 in the middle of the third resource's fifth page --------------------------------


def test_kill_in_the_fifth_page_of_the_third_resource_resumes_there(
    tmp_path: Path, pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Api() as api:
        everything = serve_repos_and_pulls(api, 5, 23)  # 8 pages (7 of 3, 1 of 2) per repo
        third = "/api/repos/acme/repo-2/pulls"
        api.kill_at(third, 5)
        # No key: the destination has no primary key, so a page written twice would stay.
        path = write_yaml(tmp_path, api, pg, [repo_stream(), pull_stream()], workers=2)
        monkeypatch.setenv("TRACKER_TOKEN", TOKEN)
        monkeypatch.delenv("MILEPOST_CRASH_AT", raising=False)
        first = Cli.run(path)
        api.client_started(first.pid)  # the request for that page is held until now
        rc = first.finish()
        assert rc == -9 and api.killed.is_set(), first.describe(rc)
        committed = pg.sql("SELECT count(*) FROM pulls")[0][0]
        ledger = pg.sql(
            "SELECT rows_written FROM _milepost_chunks WHERE pipeline = 'tracker' "
            "AND stream = 'pulls'"
        )[0][0]
        assert committed == ledger == 2 * 23 + 4 * 3  # two resources and four pages
        api.forget_log()
        again = cli(path, "run")
        assert again.returncode == 0, again.stderr
        assert "took over the lease" in again.stdout
        read = {r.path for r in api.requests()}
        assert not {REPOS, "/api/repos/acme/repo-0/pulls", "/api/repos/acme/repo-1/pulls"} & read
        assert api.pages_read(third) == [5, 6, 7, 8]
        assert api.pages_read("/api/repos/acme/repo-3/pulls") == list(range(1, 9))
    assert held(pg, "pulls", PULL_COLUMNS) == expected(everything, PULL_COLUMNS)
    assert held(pg, "repos", REPO_COLUMNS) == expected(repos(5), REPO_COLUMNS)


@pytest.mark.parametrize(
    ("point", "pulls_held", "pages_held", "reread"),
    [
        ("pages.after_enqueue", 0, 0, [1, 2, 3]),
        ("pages.before_commit@4", 6, 2, [3]),  # commits: repos p1, pulls r0 p1, r0 p2 | r0 p3
        ("pages.after_commit@4", 7, 3, []),
    ],
)
def test_kill_at_a_page_crash_point_then_resume(
    tmp_path: Path, lite: Database, point: str, pulls_held: int, pages_held: int, reread: list[int]
) -> None:
    with Api() as api:
        everything = serve_repos_and_pulls(api, 3, 7)  # pages of 3, 3 and 1 per repo
        path = write_yaml(tmp_path, api, lite, [repo_stream(), pull_stream()])
        killed = cli(path, "run", crash_at=point)
        assert killed.returncode == -9, killed.stderr
        assert lite.sql("SELECT count(*) FROM pulls") == [(pulls_held,)]
        assert lite.sql(
            "SELECT count(*), sum(pages), sum(rows_written) FROM _milepost_resources "
            "WHERE stream = 'pulls' AND position IS NOT NULL"
        ) == [(3, pages_held, pulls_held)]
        assert lite.sql("SELECT rows_written FROM _milepost_chunks WHERE stream = 'pulls'") == [
            (pulls_held,)
        ]
        api.forget_log()
        again = cli(path, "run")
        assert again.returncode == 0, again.stderr
        assert api.pages_read("/api/repos/acme/repo-0/pulls") == reread
        assert api.pages_read(REPOS) == []
    assert held(lite, "pulls", PULL_COLUMNS) == expected(everything, PULL_COLUMNS)
    assert held(lite, "repos", REPO_COLUMNS) == expected(repos(3), REPO_COLUMNS)


# --- rate limits and server errors -----------------------------------------------------------


def _gap_before_success(api: Api, path: str, page: int) -> float:
    hits = [r for r in api.requests(path) if r.page == page]
    assert len(hits) >= 2 and hits[-1].status == 200, hits
    return hits[-1].at - hits[-2].at


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry_After": "1"},
        {"Retry_After": "http-date"},
        {"RateLimit_Reset": "1"},
    ],
    ids=["retry-after-seconds", "retry-after-date", "ratelimit-reset"],
)
def test_a_429_is_waited_out_as_the_api_says(lite: Database, headers: dict[str, str]) -> None:
    if headers.get("Retry_After") == "http-date":
        headers = {"Retry_After": email.utils.formatdate(time.time() + 2, usegmt=True)}
    with Api() as api:
        api.add(REPOS, repos(12), style="cursor", size=5)
        api.fail(REPOS, 2, status=429, **headers)
        retry = {"max_attempts": 3, "initial_delay_s": 0.01, "max_delay_s": 5}
        milepost.run(pipeline(api, lite, [repo_stream(key=["id"])], retry=retry))
        gap = _gap_before_success(api, REPOS, 2)
    assert 0.9 <= gap < 3.5, gap
    assert held(lite, "repos", REPO_COLUMNS) == expected(repos(12), REPO_COLUMNS)


def test_a_spent_budget_waits_for_the_reset_and_long_waits_are_bounded(lite: Database) -> None:
    with Api() as api:
        api.add(REPOS, repos(12), style="cursor", size=5)
        reset = str(int(time.time()) + 2)
        api.headers_on(REPOS, 2, X_RateLimit_Remaining="0", X_RateLimit_Reset=reset)
        api.fail(REPOS, 3, status=429, Retry_After="3600")  # bounded by max_delay_s
        retry = {"max_attempts": 3, "initial_delay_s": 0.01, "max_delay_s": 1}
        started = time.monotonic()
        milepost.run(pipeline(api, lite, [repo_stream(key=["id"])], retry=retry))
        took = time.monotonic() - started
        page2 = [r for r in api.requests(REPOS) if r.page == 2][-1]
        page3 = [r for r in api.requests(REPOS) if r.page == 3]
    assert 0.5 <= page3[0].at - page2.at <= 1.5  # waited for the reset, at most max_delay_s
    assert 0.9 <= page3[1].at - page3[0].at < 2.0  # Retry-After: 3600, bounded to 1 s
    assert took < 10
    assert held(lite, "repos", REPO_COLUMNS) == expected(repos(12), REPO_COLUMNS)


def test_random_server_errors_are_retried_without_loss_or_doubling(pg: Database) -> None:
    with Api(seed=11) as api:
        everything = serve_repos_and_pulls(api, 4, 9)
        api.random_5xx = 0.25
        retry = {"max_attempts": 12, "initial_delay_s": 0.01, "max_delay_s": 0.05}
        milepost.run(pipeline(api, pg, [repo_stream(), pull_stream()], retry=retry))
        errors = [r for r in api.requests() if r.status == 502]
    assert len(errors) >= 3
    assert held(pg, "pulls", PULL_COLUMNS) == expected(everything, PULL_COLUMNS)
    assert held(pg, "repos", REPO_COLUMNS) == expected(repos(4), REPO_COLUMNS)


def test_a_server_that_stays_down_pauses_the_run(lite: Database) -> None:
    with Api() as api:
        api.add(REPOS, repos(12), style="cursor", size=5)
        api.fail(REPOS, 2, status=503, times=100)
        with pytest.raises(MilepostError) as caught:
            milepost.run(pipeline(api, lite, [repo_stream(key=["id"])]))
    assert caught.value.exit_code == 3
    assert "HTTP 503" in str(caught.value) and "gave up" in str(caught.value)
    assert lite.sql("SELECT count(*) FROM repos")[0][0] == 5  # the first page is kept


# --- incremental -----------------------------------------------------------------------------


@pytest.mark.parametrize("write", ["upsert", "append"])
def test_an_incremental_run_asks_since_the_high_water_and_adds_only_what_is_new(
    pg: Database, write: str
) -> None:
    first = repos(8)
    stream = repo_stream(
        mode="incremental", cursor="updated_at", since_param="since", write=write, key=["id"]
    )
    if write == "append":
        stream.pop("key")  # every version is a row of its own
    with Api() as api:
        api.add(REPOS, first, style="cursor", size=5)
        p = pipeline(api, pg, [stream])
        milepost.run(p)
        assert held(pg, "repos", REPO_COLUMNS) == expected(first, REPO_COLUMNS)
        # Between runs: repo 3 changes, repo 8 is new; repo 7 keeps the largest old value.
        changed = {**first[3], "updated_at": stamp(50), "stars": 99}
        new = {**repos(9)[8], "updated_at": stamp(60)}
        api.collections[REPOS].records = [*first[:3], changed, *first[4:], new]
        api.forget_log()
        milepost.run(p)
        asked = [r.query.get("since") for r in api.requests(REPOS)]
        api.forget_log()
        milepost.run(p)  # nothing new: asks since the newest value, adds nothing
        asked_again = [r.query.get("since") for r in api.requests(REPOS)]
    assert asked == [stamp(7)], asked  # one page: the boundary record, the changed and the new
    assert asked_again == [stamp(60)], asked_again
    # upsert: one row per record, kept current. append: the changed record is a new
    # version, and the boundary record (sent again by the inclusive `since`) is not doubled.
    now = {
        "upsert": [*first[:3], changed, *first[4:], new],
        "append": [*first, changed, new],
    }[write]
    assert held(pg, "repos", REPO_COLUMNS) == expected(now, REPO_COLUMNS)
    status = {s["stream"]: s for s in pipeline_status(p)["streams"]}
    assert status["repos"]["resources"]["high_water"] == stamp(60)


# --- bad input and secrets -------------------------------------------------------------------


def test_a_bad_endpoint_is_exit_2_naming_the_url_with_nothing_written(
    tmp_path: Path, lite: Database
) -> None:
    with Api() as api:
        api.add(REPOS, repos(3), style="cursor", size=5)
        stream = repo_stream(endpoint="/orgs/nobody/repos", params={"api_key": "k3y-v4lue"})
        done = cli(write_yaml(tmp_path, api, lite, [stream]), "run")
        url = f"{api.url}/orgs/nobody/repos"
    err = done.stderr.strip()
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(err.splitlines()) == 1, err
    assert url in err and "HTTP 404" in err and "endpoint" in err
    assert "k3y-v4lue" not in done.stderr + done.stdout and "api_key=***" in err
    assert TOKEN not in done.stderr + done.stdout
    assert not lite.path.exists() or lite.sql(
        "SELECT count(*) FROM sqlite_master WHERE name = 'repos'"
    ) == [(0,)]


def test_a_wrong_records_path_or_token_is_exit_2(tmp_path: Path, lite: Database) -> None:
    with Api() as api:
        api.add(REPOS, repos(3), style="cursor", size=5)
        wrong_path = cli(write_yaml(tmp_path, api, lite, [repo_stream(records="results")]), "run")
        api.token = "another-token"
        wrong_token = cli(write_yaml(tmp_path, api, lite, [repo_stream()]), "run")
    assert wrong_path.returncode == 2 and "records: results" in wrong_path.stderr
    assert wrong_token.returncode == 2 and "HTTP 401" in wrong_token.stderr
    assert "source.headers" in wrong_token.stderr and TOKEN not in wrong_token.stderr


def test_the_header_token_is_never_shown_logged_or_checkpointed(
    tmp_path: Path, lite: Database
) -> None:
    with Api() as api:
        serve_repos_and_pulls(api, 2, 4)
        api.fail("/api/repos/acme/repo-1/pulls", 1, status=503)  # a retry, logged
        path = write_yaml(
            tmp_path,
            api,
            lite,
            [repo_stream(), pull_stream()],
            checkpoints={"compress": False, "keep_after_success": True, "every_records": 3},
        )
        done = cli(path, "run")
    listed = cli(path, "checkpoints", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert "HTTP 503" in done.stdout  # the retry was reported...
    shown = done.stdout + done.stderr + listed.stdout + listed.stderr
    assert TOKEN not in shown  # ...without the token
    files = list((tmp_path / ".milepost").rglob("*"))
    assert any(f.is_file() for f in files)
    for f in files:
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
    assert TOKEN not in json.dumps(
        lite.sql("SELECT * FROM _milepost_resources") + lite.sql("SELECT * FROM _milepost_runs"),
        default=str,
    )
    # A checkpoint does not hold the pages of a resource: restoring one is refused.
    found = json.loads(listed.stdout)
    first = found[0]["id"] if isinstance(found, list) else found["checkpoints"][0]["id"]
    restore = cli(path, "checkpoints", "restore", after=(first,))
    assert restore.returncode == 2 and "restore cannot rewind it" in restore.stderr


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"parent": "nothing"}, ["pulls", "parent: nothing"]),
        ({"endpoint": "/repos/{name}/pulls"}, ["pulls", "{name}", "repos"]),
        ({"mode": "incremental"}, ["pulls", "since_param"]),
        ({"write": "upsert"}, ["pulls", "key"]),
    ],
)
def test_a_stream_that_cannot_work_is_refused_before_anything_runs(
    lite: Database, change: dict[str, Any], words: list[str]
) -> None:
    with Api() as api, pytest.raises(ConfigError) as caught:
        p = pipeline(api, lite, [repo_stream(), pull_stream(**change)])
        milepost.run(p)
    assert caught.value.exit_code == 2
    for word in words:
        assert word in str(caught.value)
    assert not lite.path.exists()
