"""Query streams, rewritten: the user's SQL parsed and rewritten with sqlglot, read in keyset
batches on each real source engine, and compared row by row with the query run directly.

The reads go through the connector exactly as the copier's do (`next_batch_end`, then
`select_range` of the batch), with a batch size of 3 so that equal cursor values straddle
batch boundaries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Database
from faults import database
from milepost import connectors, schema
from milepost.config import StreamConfig
from milepost.errors import ConfigError
from milepost.keyset import RangeFilter
from milepost.query import ParsedQuery
from milepost.urls import parse_database_url

EPOCH = dt.datetime(2024, 3, 1, 12, 0, 0)
KINDS = ["a", "b", "c", "test"]
NOTES = [None, "keep 50%", "plain", "100% off", "50%"]


def _events() -> list[tuple[Any, ...]]:
    """40 events; created_at takes 6 values, so most timestamps are shared by several rows."""
    return [
        (i, 1 + i % 3, KINDS[i % 4], EPOCH + dt.timedelta(hours=(i * 7) % 6), NOTES[i % 5])
        for i in range(1, 41)
    ]


def _setup(db: Database) -> None:
    ts = "DATETIME" if db.family == "mysql" else "TIMESTAMP"
    db.script(f"""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(20) NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL,
            kind VARCHAR(10) NOT NULL, created_at {ts} NOT NULL, note VARCHAR(40));
        INSERT INTO users VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')
    """)
    mark = "?" if db.family == "sqlite" else "%s"
    for row in _events():
        values = (*row[:3], row[3].isoformat(" "), row[4])
        db.sql(f"INSERT INTO events VALUES ({', '.join([mark] * 5)})", values)


@pytest.fixture
def source(source_db: Database) -> Iterator[Any]:
    _setup(source_db)
    conn = connectors.connect(parse_database_url(source_db.url, key="test"), "source")
    try:
        yield conn
    finally:
        conn.close()


def inspect(conn: Any, query: str, **keys: Any) -> schema.SourceTable:
    stream = StreamConfig.model_validate({"name": "q", "query": query, **keys})
    return schema.inspect_source(conn, stream)


def read_all(conn: Any, table: schema.SourceTable, batch: int = 3) -> list[tuple[Any, ...]]:
    """Every row of the stream, read batch by batch as the copier reads them."""
    rows: list[tuple[Any, ...]] = []
    after = None
    reader = table.reader(conn)
    while True:
        end, final = conn.next_batch_end(reader, table.cursor, table.range(after, None), batch)
        if end is None:
            return rows
        sql, params = conn.select_range(
            reader, table.columns, table.cursor, table.range(after, end)
        )
        rows += [tuple(r) for r in conn.fetch_rows(sql, params)]
        if final:
            return rows
        after = end


def direct(conn: Any, query: str, table: schema.SourceTable) -> list[tuple[Any, ...]]:
    """The user's query run as written, in the stream's cursor order."""
    rows = [tuple(r) for r in conn.query(conn.verbatim(query))]
    at = [table.columns.index(c) for c in table.cursor]
    return sorted(rows, key=lambda r: tuple(r[i] for i in at))


def check(conn: Any, query: str, table: schema.SourceTable) -> list[tuple[Any, ...]]:
    got = read_all(conn, table)
    want = direct(conn, query, table)
    assert got == want, f"{table.query and table.query.why_wrapped}\n{got}\n!=\n{want}"
    assert len(set(got)) == len(got)
    return got


def first_select(conn: Any, table: schema.SourceTable, lo: tuple[Any, ...] | None) -> str:
    sql, _ = conn.select_range(
        table.reader(conn), table.columns, table.cursor, RangeFilter(lo=lo, hi=lo)
    )
    return str(sql)


# --- merged: the keyset condition in the query's own WHERE ----------------------------------


def test_a_query_without_where_gets_one(source: Any) -> None:
    query = "SELECT e.id, e.note FROM events e"
    table = inspect(source, query)
    assert table.query is not None and table.query.merged
    assert table.cursor == ["id"]  # the primary key of the one table it reads
    sql = first_select(source, table, (5,))
    assert " WHERE (" in sql and "ORDER BY e.id" in sql and "_milepost_q" not in sql
    assert len(check(source, query, table)) == 40


def test_an_or_in_the_users_where_does_not_swallow_the_keyset(source: Any) -> None:
    query = "SELECT e.id, e.kind FROM events e WHERE e.kind = 'a' OR e.kind = 'b'"
    table = inspect(source, query)
    assert table.query is not None and table.query.merged
    sql = first_select(source, table, (5,))
    assert "(e.kind = 'a' OR e.kind = 'b') AND (" in sql
    rows = check(source, query, table)
    assert [r[0] for r in rows] == [i for i in range(1, 41) if KINDS[i % 4] in ("a", "b")]
    # Read after id 20: without the parentheses `kind = 'a'` rows below 20 would come too.
    sql, params = source.select_range(
        table.reader(source), table.columns, table.cursor, table.range((20,), None)
    )
    assert [r[0] for r in source.fetch_rows(sql, params)] == [r[0] for r in rows if r[0] > 20]


def test_a_cte_is_kept_and_the_outer_select_paged(source: Any) -> None:
    query = (
        "WITH recent AS (SELECT id, user_id, created_at FROM events WHERE kind <> 'test') "
        "SELECT r.created_at AS ts, r.id, r.user_id FROM recent r"
    )
    table = inspect(source, query, cursor="ts", tie_breaker="id")
    assert table.query is not None and table.query.merged
    assert table.cursor == ["ts", "id"]
    # Traced through the CTE to NOT NULL columns of events.
    assert table.nullable == {"ts": False, "id": False, "user_id": False}
    assert first_select(source, table, None).startswith("WITH recent AS (")
    assert len(check(source, query, table)) == 30


def test_an_aliased_cursor_is_compared_by_its_source_column(source: Any) -> None:
    query = "SELECT e.created_at AS ts, e.id AS event_id, e.note FROM events e"
    table = inspect(source, query, cursor="ts", tie_breaker="event_id")
    assert table.query is not None
    assert table.query.source_expression("ts") == "e.created_at"
    sql = first_select(source, table, (EPOCH, 3))
    assert "ORDER BY e.created_at, e.id" in sql
    assert "e.created_at AS ts" in sql  # the user's own select list
    check(source, query, table)


def test_a_join_with_qualified_columns(source: Any) -> None:
    query = (
        "SELECT e.id, u.name AS user_name, e.kind FROM events e "
        "JOIN users u ON u.id = e.user_id WHERE u.name <> 'cy'"
    )
    # A join has no key milepost can infer, so a cursor that is unique must say so.
    with pytest.raises(ConfigError, match="not known to be unique; name a `tie_breaker:`"):
        inspect(source, query, cursor="id")
    table = inspect(source, query, cursor="id", tie_breaker="id")
    assert table.query is not None and table.query.merged
    assert table.primary_key == []
    got = check(source, query, table)
    assert {r[1] for r in got} == {"ann", "bob"}


def test_a_composite_cursor_is_compared_in_each_engines_form(source: Any) -> None:
    query = "SELECT e.created_at AS ts, e.id, e.kind FROM events e WHERE e.kind <> 'test'"
    table = inspect(source, query, cursor=["ts", "id"])
    assert table.query is not None and table.query.merged
    sql = first_select(source, table, (EPOCH, 7))
    if source.family == "mysql":  # spelled out, so that MariaDB uses an index range
        assert "e.created_at > %s OR (e.created_at = %s AND e.id > %s)" in sql
        assert "(e.created_at, e.id) >" not in sql
    else:
        mark = source.placeholder
        assert f"(e.created_at, e.id) > ({mark}, {mark})" in sql
    rows = check(source, query, table)
    assert len(rows) == 30


@pytest.mark.parametrize("family", ["postgresql", "mysql"])
def test_a_percent_in_a_like_literal_reaches_the_server_as_written(
    tmp_path: Any, family: str
) -> None:
    with database(family, tmp_path, "pct") as db:
        _setup(db)
        conn = connectors.connect(parse_database_url(db.url, key="test"), "source")
        try:
            query = "SELECT e.id, e.note FROM events e WHERE e.note LIKE '%!%%' ESCAPE '!'"
            for form in ({}, {"cursor": "note", "tie_breaker": "id"}):
                table = inspect(conn, query, **form)
                rows = check(conn, query, table)
                assert sorted(r[0] for r in rows) == [
                    i for i in range(1, 41) if NOTES[i % 5] and "%" in NOTES[i % 5]
                ]
        finally:
            conn.close()


def test_an_unqualified_column_shadowed_by_an_output_alias_is_wrapped(source: Any) -> None:
    """`ORDER BY id` would mean the output column `id` (here user_id), not events.id."""
    query = "SELECT id AS event_id, user_id AS id, kind FROM events"
    table = inspect(source, query, cursor="event_id")
    assert table.query is not None and not table.query.merged
    assert "event_id" in (table.query.why_wrapped or "")
    check(source, query, table)


# --- wrapped: read as a derived table ---------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "keys", "why"),
    [
        (
            "SELECT id, kind FROM events WHERE kind = 'a' "
            "UNION ALL SELECT id + 100 AS id, 'user' AS kind FROM users ORDER BY 1",
            {"cursor": "id", "tie_breaker": "kind"},
            "it is a UNION",
        ),
        # Unique by their form: DISTINCT over all its columns (appended to the cursor),
        # GROUP BY over the grouped ones.
        ("SELECT DISTINCT user_id, kind FROM events", {"cursor": "user_id"}, "DISTINCT"),
        (
            "SELECT user_id, count(*) AS n FROM events GROUP BY user_id",
            {"cursor": "user_id"},
            "GROUP BY",
        ),
        (
            "SELECT id, sum(id) OVER (PARTITION BY user_id) AS running FROM events",
            {},
            "window function",
        ),
        (
            "SELECT e.id, upper(e.kind) AS k FROM events e",
            {"cursor": "k", "tie_breaker": "id"},
            "cursor column 'k' is not a plain column",
        ),
    ],
    ids=["union", "distinct", "group-by", "window", "expression-cursor"],
)
def test_queries_that_cannot_take_a_where_are_read_wrapped(
    source: Any, query: str, keys: dict[str, Any], why: str
) -> None:
    table = inspect(source, query, **keys)
    assert table.query is not None and not table.query.merged
    assert why in (table.query.why_wrapped or "")
    if why == "DISTINCT":
        assert table.cursor == ["user_id", "kind"]
    if why == "it is a UNION":  # a NOT NULL column in one branch, a literal in the other
        assert table.nullable["kind"] is False
    assert "_milepost_q WHERE" in first_select(source, table, None)
    assert "ORDER BY 1" not in first_select(source, table, None)
    check(source, query, table)


# --- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("SELECT id FROM events LIMIT 10", "ends in LIMIT, which picks rows by their position"),
        ("SELECT id FROM events ORDER BY id LIMIT 10 OFFSET 5", "ends in LIMIT"),
        ("SELECT id FROM events OFFSET 5", "ends in OFFSET"),
        ("SELECT id FROM events FETCH FIRST 5 ROWS ONLY", "ends in FETCH FIRST"),
        (
            "SELECT id FROM events UNION SELECT id FROM users LIMIT 3",
            "ends in LIMIT",
        ),
        ("INSERT INTO events (id) VALUES (99)", "is not a SELECT (it is INSERT)"),
        ("DELETE FROM events", "is not a SELECT (it is DELETE)"),
        ("WITH d AS (DELETE FROM events RETURNING id) SELECT id FROM d", "writes (DELETE"),
        ("SELECT id FROM events; SELECT id FROM users", "holds 2 statements"),
        ("SELECT id, upper(kind) FROM events", "output column without a name (column 2"),
        ("SELECT id, kind AS id FROM events", "two output columns named 'id'"),
        ("SELECT id FROM events FOR UPDATE", "locks rows"),
        ("SELECT * INTO copy FROM events", "SELECT ... INTO"),
        ("SELECT id FROM events WHERE (", "cannot be parsed"),
    ],
)
def test_queries_milepost_cannot_page_are_refused_with_the_reason(query: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ParsedQuery.parse(query, "postgresql", "recent_events")
    text = caught.value.message + " " + (caught.value.hint or "")
    assert "Stream 'recent_events': the query" in text
    assert said in text, text


def test_limit_is_refused_with_what_to_do_instead() -> None:
    with pytest.raises(ConfigError) as caught:
        ParsedQuery.parse("SELECT id FROM t LIMIT 5", "mysql", "s")
    assert "milepost pages the query itself" in (caught.value.hint or "")
    assert "view" in (caught.value.hint or "")


def test_mysql_regexp_is_written_back_as_regexp() -> None:
    """sqlglot writes REGEXP_LIKE(), which MariaDB does not have."""
    q = ParsedQuery.parse("SELECT id FROM t WHERE name REGEXP '^a'", "mysql", "s")
    assert "name REGEXP '^a'" in q.sql()


def test_the_user_order_by_is_dropped_and_replaced() -> None:
    q = ParsedQuery.parse("SELECT id, ts FROM t WHERE id > 3 ORDER BY ts DESC", "sqlite", "s")
    q = q.bind(["id", "ts"]).with_cursor(["id"])
    sql = q.rewrite(["id"], "id > ?", "id", "LIMIT 1", "?")
    assert sql == "SELECT id FROM t WHERE id > 3 AND (id > ?) ORDER BY id LIMIT 1"
