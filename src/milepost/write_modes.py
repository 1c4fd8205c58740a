"""How a batch lands in its destination table: appended, or upserted by a key.

`write: append` (and `replace`, which empties the table first) keeps each engine's fastest
write: COPY on PostgreSQL, a multi-row INSERT on MySQL and SQLite. `write: upsert` uses
each engine's own form, so one statement per batch decides insert-or-update by the key:

- PostgreSQL: the batch is COPYed, exactly as for append, into a per-session TEMP staging
  table shaped like the target, then merged with `INSERT ... SELECT ... ON CONFLICT (key)
  DO UPDATE`. Of two rows with the same key in one batch only the later one (in the order
  they were copied, i.e. cursor order) is merged, since ON CONFLICT may not touch a row
  twice in one statement.
- MySQL/MariaDB: `INSERT ... ON DUPLICATE KEY UPDATE c = VALUES(c)`, rows applied in order.
- SQLite: `INSERT ... ON CONFLICT (key) DO UPDATE SET c = excluded.c`, rows in order.

A batch counts its source rows, whatever the engine reports (MySQL counts 2 per update).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from milepost.errors import ConfigError

if TYPE_CHECKING:  # transfer imports this module
    from milepost.schema import SourceTable
    from milepost.transfer import Transfer

# The column that numbers a staged batch's rows in the order they were copied.
_ORDINAL = "_milepost_ord"


def write_rows(
    dst: Any,
    target: str,
    columns: list[str],
    rows: list[tuple[Any, ...]],
    write: str,
    key: list[str] | None = None,
) -> int:
    """Write driver or Python tuples into `target` (an unquoted table name) inside the
    caller's transaction; returns the rows written (the number of tuples given).

    append and replace: the engine's fast write. upsert: the engine's native upsert by
    `key` (a primary key or unique index of the table on exactly those columns).
    """
    if not rows:
        return 0
    table = dst.quote(target)
    if write != "upsert":
        if dst.family == "postgresql":
            with dst.copy_in(table, columns, "text") as into:
                for row in rows:
                    into.write_row(row)
            return len(rows)
        return int(dst.insert_rows(table, columns, rows))
    if not key:
        raise ValueError(f"write: upsert into '{target}' needs the key columns")
    if dst.family == "postgresql":
        stage = PostgresStage(dst, table, columns, key)
        with stage.copy_in("text") as into:
            for row in rows:
                into.write_row(row)
        stage.merge()
        return len(rows)
    return upsert_rows(dst, table, columns, rows, key)


def upsert_rows(
    dst: Any, table: str, columns: list[str], rows: Sequence[tuple[Any, ...]], key: list[str]
) -> int:
    """MySQL or SQLite: one executemany of the native upsert; later rows win."""
    if not rows:
        return 0
    cols = ", ".join(dst.quote(c) for c in columns)
    marks = ", ".join([dst.placeholder] * len(columns))
    sql = f"INSERT INTO {table} ({cols}) VALUES ({marks}) {conflict_clause(dst, columns, key)}"
    cur = dst.raw.cursor()
    try:
        cur.executemany(sql, rows)
    finally:
        cur.close()
    return len(rows)


def conflict_clause(dst: Any, columns: list[str], key: list[str]) -> str:
    """The tail of an INSERT that turns it into an upsert on `key`, in `dst`'s dialect.

    When every column is a key column there is nothing to update: the row is kept as it is
    (on SQLite and MySQL by setting a key column to itself, so each row still counts).
    """
    q = dst.quote
    rest = [c for c in columns if c not in key] or [key[0]]
    if dst.family == "mysql":
        # VALUES() works on MariaDB and MySQL 8 (deprecated from 8.0.20, a warning only);
        # MariaDB has no `AS new` row alias.
        return "ON DUPLICATE KEY UPDATE " + ", ".join(f"{q(c)} = VALUES({q(c)})" for c in rest)
    target = ", ".join(q(c) for c in key)
    if dst.family == "postgresql" and not [c for c in columns if c not in key]:
        return f"ON CONFLICT ({target}) DO NOTHING"
    return f"ON CONFLICT ({target}) DO UPDATE SET " + ", ".join(
        f"{q(c)} = excluded.{q(c)}" for c in rest
    )


class PostgresStage:
    """A TEMP table shaped like the target that one batch is COPYed into before the merge.

    Created with IF NOT EXISTS before every batch rather than remembered: a temp table
    created inside a transaction (or savepoint) that rolls back is gone again. The merge
    empties it (DELETE ... RETURNING), so a second write in the same transaction, as the
    row-by-row path for refused rows makes, sees only its own rows.
    """

    def __init__(
        self, dst: Any, table: str, columns: list[str], key: list[str], *, repeats: bool = True
    ) -> None:
        self.dst = dst
        self.table = table
        self.columns = columns
        self.key = key
        # May a key come twice in one batch? Not when it holds the source's primary key;
        # then the merge skips looking for a later row of each key (~14% of a batch).
        self.repeats = repeats
        digest = hashlib.sha1(table.encode()).hexdigest()[:16]
        self.name = f"_milepost_stage_{digest}"

    def ensure(self) -> None:
        self.dst.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {self.name} (LIKE {self.table} INCLUDING DEFAULTS,"
            f" {_ORDINAL} bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
        )

    def copy_in(self, fmt: str) -> Any:
        """COPY into the staging table (created if need be); the caller writes the rows."""
        self.ensure()
        return self.dst.copy_in(self.name, self.columns, fmt)

    def merge(self) -> None:
        """Insert or update the staged rows into the target, the later of equal keys only."""
        q = self.dst.quote
        cols = ", ".join(q(c) for c in self.columns)
        picked = ", ".join(f"b.{q(c)}" for c in self.columns)
        same_key = " AND ".join(f"later.{q(c)} = b.{q(c)}" for c in self.key)
        # Equal keys: keep the last copied. `=` is false for NULL, as in a unique index, so
        # rows whose key holds a NULL never conflict and are all kept.
        last_only = (
            f" WHERE NOT EXISTS (SELECT 1 FROM batch later WHERE {same_key} "
            f"AND later.{_ORDINAL} > b.{_ORDINAL})"
            if self.repeats
            else ""
        )
        self.dst.execute(
            f"WITH batch AS (DELETE FROM {self.name} RETURNING *) "
            f"INSERT INTO {self.table} ({cols}) OVERRIDING SYSTEM VALUE "
            f"SELECT {picked} FROM batch b{last_only} "
            f"{conflict_clause(self.dst, self.columns, self.key)}"
        )


# --- the key ---------------------------------------------------------------------------


def upsert_key(table: SourceTable) -> list[str]:
    """The columns a `write: upsert` stream matches rows by: its `key:`, else the source's
    primary key. Raises ConfigError (exit 2) naming the stream when there is none, or when
    it names a column the stream does not carry."""
    stream = table.stream
    key = list(stream.key or table.primary_key)
    if not key:
        raise ConfigError(
            f"Stream '{stream.target}': write: upsert needs a key: the table has no primary "
            "key; name `key:`.",
            hint="List the columns that identify a row, e.g. `key: [id]`; the destination "
            "table needs a primary key or unique index on exactly those columns.",
        )
    missing = [c for c in key if c not in table.columns]
    if missing:
        raise ConfigError(
            f"Stream '{stream.target}': the key column '{missing[0]}' is not a column of the "
            f"stream (its columns: {', '.join(table.columns)}).",
            hint="Name columns the stream copies as `key:`.",
        )
    return key


def check_destination_key(dest_conn: Any, table: SourceTable, exists: bool) -> None:
    """An existing destination table of an upsert stream must have a primary key or a
    unique index on exactly the key columns: every engine's upsert finds the row to update
    through one, and without it each batch would only append. Checked before any write."""
    if table.stream.write != "upsert":
        return
    key = upsert_key(table)
    if not exists:
        return  # milepost creates it with the key (schema.py)
    target = table.stream.target
    insp = sa.inspect(dest_conn.sqlalchemy_engine())
    unique = [insp.get_pk_constraint(target).get("constrained_columns") or []]
    unique += [u["column_names"] for u in insp.get_unique_constraints(target)]
    # Not a partial index (ON CONFLICT (key) cannot use one without its WHERE), nor one
    # over expressions (a None among its columns).
    unique += [
        i["column_names"]
        for i in insp.get_indexes(target)
        if i.get("unique")
        and None not in i["column_names"]
        and not any(
            k.endswith("_where") and v is not None
            for k, v in (i.get("dialect_options") or {}).items()
        )
    ]
    if dest_conn.family == "mysql":
        unique = [[c.replace("``", "`") for c in u] for u in unique]
    if any(u and sorted(u) == sorted(key) for u in unique):
        return
    raise ConfigError(
        f"Stream '{target}': write: upsert matches rows by ({', '.join(key)}), but the "
        f"existing destination table '{target}' has no primary key or unique index on "
        "exactly those columns.",
        hint=f"Add one (CREATE UNIQUE INDEX ON {target} ({', '.join(key)})), name another "
        "`key:`, or drop the table and let milepost create it.",
    )


def unique_key(table: SourceTable) -> list[str] | None:
    """The declared `key:` a table milepost creates needs a UNIQUE constraint for, or None
    when the primary key already is that key (or the stream does not upsert)."""
    stream = table.stream
    if stream.write != "upsert":
        return None
    key = upsert_key(table)  # a key that is no column is bad input, not a DDL error
    return None if sorted(key) == sorted(table.primary_key) else key


def needs_order(table: SourceTable) -> bool:
    """Must this stream's batches land in cursor order, as one chunk? When it upserts by a
    key that may repeat in the source (one not holding the primary key): the last row of
    each key must win, and chunks copied side by side would race for it."""
    if table.stream.write != "upsert":
        return False
    pk = table.primary_key
    return not pk or not set(pk) <= set(upsert_key(table))


# --- a transfer path that upserts --------------------------------------------------------


def landing(path: Transfer, table: SourceTable) -> Transfer:
    """`path` as it is for append and replace; for `write: upsert`, wrapped so that each
    batch it moves lands by the destination's native upsert."""
    if table.stream.write != "upsert":
        return path
    return Upserting(path, upsert_key(table), repeats=needs_order(table))


class Upserting:
    """A transfer path whose batches are upserted: it reads exactly as the path does.

    PostgreSQL destinations: the path's COPY (bytes passed through, text lines or rows)
    goes into the staging table instead of the target, then one merge. SQLite's attached
    INSERT ... SELECT gets the ON CONFLICT clause. Row paths into SQLite and MySQL run the
    native upsert on the rows the path read.
    """

    def __init__(self, path: Any, key: list[str], *, repeats: bool = True) -> None:
        self.path = path
        self.name = f"{path.name}+upsert"
        self.prefetch = path.prefetch
        self.key = key
        self.dst = path.dst
        self.table = path.dst_table
        self.stage: PostgresStage | None = None
        if self.dst.family == "postgresql":
            self.stage = PostgresStage(self.dst, self.table, path.columns, key, repeats=repeats)
            path.dst_table = self.stage.name
        elif hasattr(path, "upsert_clause"):
            path.upsert_clause = conflict_clause(self.dst, path.columns, key)

    def read(self, rng: Any) -> Any:
        return self.path.read(rng)

    def write(self, payload: Any) -> int:
        if self.stage is not None:
            self.stage.ensure()
            rows = int(self.path.write(payload))
            if rows:
                self.stage.merge()
            return rows
        if hasattr(self.path, "upsert_clause"):
            return int(self.path.write(payload))
        return upsert_rows(self.dst, self.table, self.path.columns, payload, self.key)
