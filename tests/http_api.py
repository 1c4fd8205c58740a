"""A real HTTP API for tests: a ThreadingHTTPServer on 127.0.0.1 serving generated records.

Collections of JSON records are served at paths the test chooses, each with one paging
style: `cursor` (an opaque token in `meta.next`, records under `items`), `page` (page
numbers, the body is the list), `link` (a `Link: rel="next"` header, records under
`data`), `link_body` (the next link at `links.next` in the body) or `none`. Every style
filters by `since` (inclusive, on `updated_at`, as most APIs do) and sizes pages by
`per_page`.

What a fault test needs: a bearer token that must be sent; a log of every request
(monotonic time, path, query, page number, status) to assert what was and was not read;
a given page of a given path failing with a status (503, 429 with Retry-After or reset
headers) a number of times; random 5xx from a seeded generator; and a page whose request
SIGKILLs the client: that request is held until the test names the client's pid (an
Event, not a sleep), then the client is killed before an answer is sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

TOKEN = "s3cr3t-t0ken-5f0e1d2c"  # what the tests put in `headers:` and never want to see
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def stamp(minutes: int) -> str:
    """An ISO timestamp `minutes` after 2024-01-01T00:00:00Z, as APIs write them."""
    return (EPOCH + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def repos(count: int, org: str = "acme") -> list[dict[str, Any]]:
    return [
        {
            "id": 1000 + i,
            "full_name": f"{org}/repo-{i}",
            "updated_at": stamp(i),
            "owner": {"login": org, "id": 7, "tags": ["a", "é"]},
            "stars": i * 3,
            "private": i % 2 == 0,
        }
        for i in range(count)
    ]


def pulls(repo: str, start_id: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": start_id + j,
            "repo": repo,
            "title": f'Fix #{j} in {repo} — "quotes", tab\there, ünïcode',
            "updated_at": stamp(100 + j),
            "merged": j % 3 == 0,
        }
        for j in range(count)
    ]


@dataclass
class Collection:
    records: list[dict[str, Any]]
    style: str = "page"
    size: int = 10  # per page when the request names no per_page


@dataclass
class Logged:
    at: float  # time.monotonic() when the request arrived
    path: str
    query: dict[str, str]
    page: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    status: int
    times: int
    headers: dict[str, str] = field(default_factory=dict)


class Api:
    """The server and what it serves; `with Api() as api:` runs it in a thread."""

    def __init__(self, *, token: str | None = TOKEN, seed: int = 0) -> None:
        self.token = token
        self.collections: dict[str, Collection] = {}
        self.log: list[Logged] = []
        self.faults: dict[tuple[str, int], Fault] = {}
        self.extra_headers: dict[tuple[str, int], dict[str, str]] = {}
        self.random_5xx = 0.0
        self.rng = random.Random(seed)
        self.kill_page: tuple[str, int] | None = None
        self.kill_pid: int | None = None
        self.pid_known = threading.Event()
        self.killed = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- set-up ---

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def add(self, path: str, records: list[dict[str, Any]], style: str = "page", size: int = 10):
        self.collections[path] = Collection(list(records), style, size)

    def fail(self, path: str, page: int, status: int = 503, times: int = 1, **headers: str):
        """The request for `page` of `path` answers `status` the next `times` times."""
        self.faults[(path, page)] = Fault(
            status, times, {k.replace("_", "-"): v for k, v in headers.items()}
        )

    def headers_on(self, path: str, page: int, **headers: str) -> None:
        """A successful answer to `page` of `path` carries these headers (rate-limit state)."""
        self.extra_headers[(path, page)] = {k.replace("_", "-"): v for k, v in headers.items()}

    def kill_at(self, path: str, page: int) -> None:
        """The request for `page` of `path` SIGKILLs the client named by `client_started`."""
        self.kill_page = (path, page)

    def client_started(self, pid: int) -> None:
        self.kill_pid = pid
        self.pid_known.set()

    # --- reading the log ---

    def requests(self, path: str | None = None) -> list[Logged]:
        with self.lock:
            return [r for r in self.log if path is None or r.path == path]

    def pages_read(self, path: str) -> list[int]:
        return [r.page for r in self.requests(path) if r.status == 200]

    def forget_log(self) -> None:
        with self.lock:
            self.log.clear()

    # --- running ---

    def __enter__(self) -> Api:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pid_known.set()  # a held request must not keep the server from stopping
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # --- answering ---

    def answer(
        self, path: str, query: dict[str, str], headers: Any
    ) -> tuple[int, dict[str, str], Any]:
        coll = self.collections.get(path)
        size = int(query.get("per_page", coll.size if coll else 10))
        page = self._page_of(coll, query, size)
        entry = Logged(time.monotonic(), path, dict(query), page)
        with self.lock:
            self.log.append(entry)
        status, extra, body = self._respond(path, coll, query, headers, page, size)
        if status == 200:
            extra = {**extra, **self.extra_headers.get((path, page), {})}
        entry.status = status
        entry.headers = extra
        return status, extra, body

    def _respond(self, path, coll, query, headers, page, size):
        if self.token is not None and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {}, {"message": "Bad credentials"}
        if coll is None:
            return 404, {}, {"message": "Not Found"}
        if self.kill_page == (path, page):
            self.kill_page = None
            self.pid_known.wait(timeout=60)
            if self.kill_pid is not None:
                os.kill(self.kill_pid, signal.SIGKILL)
                self.killed.set()
            return -1, {}, None
        fault = self.faults.get((path, page))
        if fault is not None and fault.times > 0:
            fault.times -= 1
            return fault.status, fault.headers, {"message": "injected"}
        if self.random_5xx and self.rng.random() < self.random_5xx:
            return 502, {}, {"message": "random"}
        records = coll.records
        since = query.get("since")
        if since:
            floor = dt.datetime.fromisoformat(since)
            records = [r for r in records if dt.datetime.fromisoformat(r["updated_at"]) >= floor]
        chunk = records[(page - 1) * size : page * size]
        more = page * size < len(records)
        if coll.style == "cursor":
            token = _token(page + 1) if more else None
            return 200, {}, {"items": chunk, "meta": {"next": token, "count": len(chunk)}}
        if coll.style in ("link", "link_body"):
            nxt = None
            if more:
                nxt = f"{self.url}{path[len('/api') :]}?{urlencode({**query, 'page': page + 1})}"
            if coll.style == "link":
                return 200, ({"Link": f'<{nxt}>; rel="next"'} if nxt else {}), {"data": chunk}
            return 200, {}, {"data": chunk, "links": {"next": nxt}}
        if coll.style == "none":
            return 200, {}, records
        return 200, {}, chunk

    @staticmethod
    def _page_of(coll: Collection | None, query: dict[str, str], size: int) -> int:
        if coll is not None and coll.style == "cursor":
            return _untoken(query["cursor"]) if query.get("cursor") else 1
        return int(query.get("page", 1))


def _token(page: int) -> str:
    return base64.urlsafe_b64encode(f"p{page}".encode()).decode()


def _untoken(token: str) -> int:
    return int(base64.urlsafe_b64decode(token.encode()).decode()[1:])


def _handler(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            status, headers, body = api.answer(parts.path, query, self.headers)
            if status < 0:
                self.close_connection = True
                return  # the client was killed: no answer
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            """Quiet: the request log is the record."""

    return Handler


# --- comparing what the API served with what the destination holds ---------------------


def canonical(value: Any, kind: str) -> Any:
    """One value as the declared type means it, however an engine hands it back (SQLite's
    text for a timestamp, MariaDB's 0/1 for a boolean, PostgreSQL's parsed JSON)."""
    if value is None:
        return None
    if kind in ("timestamptz", "timestamp"):
        when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC).isoformat()
    if kind == "json":
        parsed = json.loads(value) if isinstance(value, str | bytes) else value
        return json.dumps(parsed, sort_keys=True)
    if kind == "boolean":
        return bool(value)
    if kind in ("bigint", "integer"):
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)


def expected(records: list[dict[str, Any]], columns: dict[str, str]) -> Counter[tuple]:
    """The rows the records should become: each declared field, missing ones NULL."""
    return Counter(tuple(canonical(r.get(c), kind) for c, kind in columns.items()) for r in records)


def held(db: Any, table: str, columns: dict[str, str]) -> Counter[tuple]:
    """The destination table's rows as a multiset: a row written twice counts twice."""
    quote = "`" if db.family == "mysql" else '"'
    cols = ", ".join(f"{quote}{c}{quote}" for c in columns)
    return Counter(
        tuple(canonical(v, kind) for v, kind in zip(row, columns.values(), strict=True))
        for row in db.sql(f"SELECT {cols} FROM {table}")
    )
