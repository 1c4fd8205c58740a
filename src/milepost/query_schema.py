"""The schema of a query stream: its output columns and types, and the cursor it is read by.

A query has no catalog entry to reflect, so the source is asked to describe it: on
PostgreSQL and SQLite a TEMP VIEW of the query, on MySQL/MariaDB an empty TEMPORARY
TABLE made from it (`CREATE ... AS SELECT ... LIMIT 0`, which reads no rows), each on one
connection, reflected there and dropped. That also proves, before anything is written,
that the source accepts the SQL milepost will run.

What a view cannot say is taken from the tables the query reads: whether an output that
is a plain column may be NULL, and which output columns make a key.
"""

from __future__ import annotations

import contextlib
import secrets
import warnings
from typing import Any

import sqlalchemy as sa

from milepost.config import StreamConfig
from milepost.errors import ConfigError
from milepost.query import ParsedQuery, TableRef
from milepost.schema import SourceTable, settle_cursor
from milepost.typemap import classify


def inspect_query(conn: Any, stream: StreamConfig) -> SourceTable:
    """Parse, describe and settle the cursor of a query stream; raise naming what is wrong."""
    assert stream.query is not None
    parsed = ParsedQuery.parse(stream.query, conn.family, stream.target)
    with conn.sqlalchemy_engine().connect() as sa_conn:
        cols, declared, exact = _describe(sa_conn, conn, parsed, stream)
        parsed = parsed.bind([c["name"] for c in cols])
        tables = _Tables(sa_conn)
        nullable = {c["name"]: _nullable(parsed, tables, c["name"]) for c in cols}
        key, no_key = _inferred_key(parsed, tables)
    names = [c["name"] for c in cols]
    cursor = _cursor(stream, names, key, parsed.unique_by_form(), no_key, nullable)
    parsed = parsed.with_cursor(cursor)
    types = {c["name"]: c["type"] for c in cols}
    logical = {n: classify(types[n], declared.get(n) if declared else None) for n in names}
    return SourceTable(
        stream,
        names,
        types,
        logical,
        declared,
        nullable,
        key,
        cursor,
        [],
        query=parsed,
        exact_types=exact,
    )


def _describe(
    sa_conn: Any, conn: Any, parsed: ParsedQuery, stream: StreamConfig
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """The query's output columns as SQLAlchemy reflects them, SQLite's declared type names,
    and PostgreSQL's exact type names (format_type)."""
    name = f"_milepost_q_{secrets.token_hex(4)}"
    quoted = conn.quote(name)
    family = conn.family
    if family == "mysql":
        create = f"CREATE TEMPORARY TABLE {quoted} AS SELECT * FROM ({parsed.sql()}) AS x LIMIT 0"
        drop = f"DROP TEMPORARY TABLE IF EXISTS {quoted}"
    else:
        create = f"CREATE TEMP VIEW {quoted} AS {parsed.sql()}"
        drop = f"DROP VIEW IF EXISTS {quoted}"
    raw = sa_conn.connection.dbapi_connection
    try:
        _run(raw, create)  # no parameters: a % in the query is the user's own
        if family == "sqlite":
            # SQLite resolves a view's tables and columns only when it is read.
            _run(raw, f"SELECT * FROM {quoted} LIMIT 0")
    except Exception as exc:
        with contextlib.suppress(Exception):
            _run(raw, drop)
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"Stream '{stream.target}': the source rejects the query: {reason}",
            hint="Write the query in the source database's own SQL dialect. milepost runs "
            f"it as sqlglot writes it back: {parsed.sql()[:300]}",
        ) from None
    try:
        with warnings.catch_warnings():
            # A type SQLAlchemy does not know reflects as NullType; refused by name later.
            warnings.simplefilter("ignore", sa.exc.SAWarning)
            cols = sa.inspect(sa_conn).get_columns(name)
        declared: dict[str, str] = {}
        exact: dict[str, str] = {}
        if family == "mysql":
            cols = [{**c, "name": c["name"].replace("``", "`")} for c in cols]
        elif family == "sqlite":
            declared = {r[1]: r[2] for r in _run(raw, f"PRAGMA temp.table_info({quoted})")}
        else:
            exact = dict(
                _run(
                    raw,
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    f"WHERE attrelid = '{quoted}'::regclass AND attnum > 0 ORDER BY attnum",
                )
            )
        return cols, declared, exact
    finally:
        with contextlib.suppress(Exception):  # the connection is closed right after anyway
            _run(raw, drop)


def _run(raw: Any, sql: str) -> list[Any]:
    cur = raw.cursor()
    try:
        cur.execute(sql)
        return list(cur.fetchall()) if cur.description else []
    finally:
        cur.close()


class _Tables:
    """The tables a query reads, reflected on first use (columns and primary key)."""

    def __init__(self, sa_conn: Any) -> None:
        self.insp = sa.inspect(sa_conn)
        self._columns: dict[tuple[str | None, str], dict[str, bool] | None] = {}

    def columns(self, ref: TableRef) -> dict[str, bool] | None:
        """Column name -> nullable; None when it cannot be reflected (a view, a function)."""
        at = (ref.schema, ref.name)
        if at not in self._columns:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", sa.exc.SAWarning)
                    found = self.insp.get_columns(ref.name, schema=ref.schema)
                # SQLite reflects an INTEGER PRIMARY KEY as nullable; it never is NULL.
                pk = self.primary_key(ref)
                self._columns[at] = {
                    name: bool(c.get("nullable", True)) and name not in pk
                    for c in found
                    if (name := c["name"].replace("``", "`"))
                }
            except Exception:
                self._columns[at] = None
        return self._columns[at]

    def primary_key(self, ref: TableRef) -> list[str]:
        try:
            pk = self.insp.get_pk_constraint(ref.name, schema=ref.schema)
        except Exception:
            return []
        return [c.replace("``", "`") for c in pk.get("constrained_columns") or []]


def _source_of(parsed: ParsedQuery, tables: _Tables, output: str) -> tuple[TableRef, str] | None:
    """The table column behind an output that is a plain column, when it is certain."""
    return parsed.trace(output, tables.columns)


def _nullable(parsed: ParsedQuery, tables: _Tables, output: str) -> bool:
    """Unless the output is certainly never NULL (a literal, a NOT NULL table column not
    filled by an outer join, in every branch of a UNION), it may be."""
    return not parsed.not_null(output, tables.columns)


def _inferred_key(parsed: ParsedQuery, tables: _Tables) -> tuple[list[str], str]:
    """The output columns that carry the primary key of the one table the query reads, and
    when there are none, why."""
    ref = parsed.single_table()
    if ref is None:
        return (
            [],
            "this query does not read exactly one table row per output row (it joins, reads "
            "a UNION or a CTE, or calls a function that may return a set, e.g. unnest)",
        )
    pk = tables.primary_key(ref)
    if not pk:
        return [], f"the table '{ref.name}' it reads has no primary key"
    key = []
    for column in pk:
        outputs = [
            name
            for name in parsed.columns
            if (s := _source_of(parsed, tables, name)) is not None and s[1] == column
        ]
        if not outputs:
            return [], f"the primary key column '{column}' of '{ref.name}' is not in its output"
        key.append(outputs[0])
    return key, ""


def _cursor(
    stream: StreamConfig,
    names: list[str],
    key: list[str],
    by_form: list[str],
    no_key: str,
    nullable: dict[str, bool],
) -> list[str]:
    """The declared cursor (or the inferred key, or what the query's form makes unique),
    made unique and checked."""
    target = stream.target
    for role, column in [("cursor", c) for c in stream.cursor or []] + [
        ("tie_breaker", c) for c in stream.tie_breaker or []
    ]:
        if column not in names:
            raise ConfigError(
                f"Stream '{target}': the {role} column '{column}' is not an output column of "
                f"the query (its columns: {', '.join(names)}).",
                hint="Name columns as the query's output names them (by their AS aliases).",
            )
    cursor = list(stream.cursor or key or by_form)
    if not cursor:
        raise ConfigError(
            f"Stream '{target}': the query has no `cursor:`, and milepost cannot infer a key "
            f"to resume from: {no_key}.",
            hint="Name output columns as `cursor:` (and a `tie_breaker:` if they are not "
            "unique together).",
        )
    uniques = [u for u in (key, by_form) if u]
    unique = any(set(u) <= set(cursor) for u in uniques)
    if not unique and not stream.tie_breaker and not key and by_form:
        cursor += [c for c in by_form if c not in cursor]  # e.g. DISTINCT: all its columns
    elif not unique and not stream.tie_breaker and not key:
        raise ConfigError(
            f"Stream '{target}': the cursor ({', '.join(cursor)}) of query stream '{target}' "
            f"is not known to be unique; name a `tie_breaker:` (milepost infers a key only "
            f"from the one table a query reads, and {no_key}).",
            hint="Batches end after a cursor value: rows sharing it across a batch boundary "
            "would be skipped. Name unique, non-null output columns as `tie_breaker:`; if the "
            "cursor is unique by itself, name its last column there.",
        )
    return settle_cursor(stream, target, cursor, key, uniques, nullable)
