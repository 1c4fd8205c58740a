"""The schema phase: reflect source tables, check or create destination tables (SQLAlchemy Core).

Everything here runs before the first row moves. `inspect_*` functions only read and
raise errors that name the stream, table and column; `create_tables` and
`add_foreign_keys` are the only writers.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import AddConstraint

from milepost import write_modes
from milepost.config import StreamConfig
from milepost.errors import ConfigError, SchemaError
from milepost.keyset import Key, RangeFilter
from milepost.query import ParsedQuery, Relation
from milepost.typemap import Declared, Logical, classify, destination_type, holds


@dataclass
class SourceTable:
    """A stream's source table as reflected, with the cursor it will be read by."""

    stream: StreamConfig
    columns: list[str]
    types: dict[str, sa.types.TypeEngine]
    logical: dict[str, Logical | None]
    declared: dict[str, str]
    nullable: dict[str, bool]
    primary_key: list[str]
    cursor: list[str]
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)
    # A query stream's parsed query (milepost/query.py), and its columns' exact PostgreSQL
    # types (a query has no catalog entry to look them up in later).
    query: ParsedQuery | None = None
    exact_types: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stream.table or self.stream.target

    @property
    def label(self) -> str:
        s = self.stream
        if self.query is not None:
            return f"query '{s.target}'"
        return f"{s.schema_}.{s.table}" if s.schema_ else s.table or ""

    @property
    def described(self) -> str:
        """For messages: table 'x' or query 'x'."""
        return self.label if self.query is not None else f"table '{self.label}'"

    def relation(self, conn: Any) -> str:
        """What SQL on `conn` reads the rows from: the quoted table, or the query as a
        derived table `(<query>) AS _milepost_q` whose columns are the output names."""
        if self.query is not None:
            return self.query.derived(conn.placeholder)
        return str(conn.qualified(self.name, self.stream.schema_))

    def reader(self, conn: Any) -> Relation:
        """What the connector's range reads take (next_batch_end, cursor_bounds,
        select_range): the quoted table, or the parsed query, which a merged query is
        rewritten from."""
        return self.query if self.query is not None else self.relation(conn)

    def estimate_rows(self, conn: Any) -> int | None:
        """The planner's row estimate of a table or a query (None when the engine gives
        none): it sizes the chunks that let workers copy a stream side by side."""
        if self.query is not None:
            guess: int | None = conn.estimate_query_rows(self.relation(conn))
            return guess
        estimate: int | None = conn.estimate_rows(self.name, self.stream.schema_)
        return estimate

    @property
    def lead_nullable(self) -> bool:
        """May the leading cursor column be NULL? Then those rows are a part of their own
        (keyset.null_lead), and every other range leaves them out."""
        return bool(self.nullable.get(self.cursor[0], False))

    def range(
        self, lo: Key | None = None, hi: Key | None = None, *, source: bool = True, **more: Any
    ) -> RangeFilter:
        """The stream's rows after `lo` up to `hi`: on the source with its `where:`, on the
        destination without (the filter was applied when the rows were copied)."""
        where = self.stream.where if source else None
        return RangeFilter(lo, hi, where, lead_nullable=self.lead_nullable, **more)


@dataclass
class DestinationPlan:
    """What the destination table of one stream will be, and whether it exists already."""

    source: SourceTable
    table: sa.Table
    exists: bool
    rows_present: bool


def inspect_source(conn: Any, stream: StreamConfig) -> SourceTable:
    """Reflect a stream's source table and settle its cursor; raise naming what is wrong."""
    if stream.query is not None:
        from milepost.query_schema import inspect_query  # it builds on this module

        return inspect_query(conn, stream)
    if stream.kind in ("endpoint", "python"):
        from milepost.page_streams import inspect as inspect_declared  # it builds on this module

        return inspect_declared(stream)
    insp = sa.inspect(conn.sqlalchemy_engine())
    label = f"{stream.schema_}.{stream.table}" if stream.schema_ else stream.table
    if not insp.has_table(stream.table, schema=stream.schema_):
        raise ConfigError(
            f"Stream '{stream.target}': the source table '{label}' does not exist in "
            f"{conn.url.masked}.",
            hint="Check the spelling and the schema; names are case-sensitive when quoted.",
        )
    with warnings.catch_warnings():
        # A type SQLAlchemy does not know reflects as NullType; it is refused by name below.
        warnings.simplefilter("ignore", sa.exc.SAWarning)
        cols = _unescaped(conn, insp.get_columns(stream.table, schema=stream.schema_))
    declared = {}
    if conn.family == "sqlite":
        declared = {
            r[1]: r[2] for r in conn.query(f"PRAGMA table_info({conn.quote(stream.table)})")
        }
    names = [c["name"] for c in cols]
    pk = [
        _unescaped(conn, c)
        for c in insp.get_pk_constraint(stream.table, schema=stream.schema_).get(
            "constrained_columns"
        )
        or []
    ]
    cursor = list(stream.cursor or pk)
    if not cursor:
        raise ConfigError(
            f"Stream '{stream.target}': the source table '{label}' has no primary key, so it "
            "has no cursor to resume from.",
            hint="Name a unique, non-null column (or columns) as `cursor:` for this stream.",
        )
    for role, c in [("cursor", c) for c in cursor] + [
        ("tie_breaker", c) for c in stream.tie_breaker or []
    ]:
        if c not in names:
            raise ConfigError(
                f"Stream '{stream.target}': the {role} column '{c}' is not a column of the "
                f"source table '{label}' (its columns: {', '.join(names)})."
            )
    uniques = [pk] + [
        [_unescaped(conn, c) for c in u["column_names"]]
        for u in insp.get_unique_constraints(stream.table, schema=stream.schema_)
    ]
    nullable = {c["name"]: bool(c.get("nullable", True)) and c["name"] not in pk for c in cols}
    cursor = settle_cursor(stream, label, cursor, pk, uniques, nullable)
    if stream.where:
        _check_where(conn, stream, label)
    types = {c["name"]: c["type"] for c in cols}
    logical = {n: classify(types[n], declared.get(n) if declared else None) for n in names}
    for name in _mariadb_json_columns(conn, stream):
        logical[name] = Logical("json")
    fks = insp.get_foreign_keys(stream.table, schema=stream.schema_)
    return SourceTable(stream, names, types, logical, declared, nullable, pk, cursor, fks)


def settle_cursor(
    stream: StreamConfig,
    label: str,
    cursor: list[str],
    key: list[str],
    uniques: list[list[str]],
    nullable: dict[str, bool],
) -> list[str]:
    """Make the cursor a unique order: append the tie-breaker (`tie_breaker:`, else the
    primary key) when the cursor is not unique by itself or its lead may be NULL.

    Keyset pagination reads "the rows after the last key": with two rows on the same key,
    a batch ending between them would skip the second. And rows with a NULL lead are
    paged by the columns after it (keyset.null_lead), so those columns must exist.
    """
    lead_nullable = nullable.get(cursor[0], False)
    unique = any(u and set(u) <= set(cursor) for u in uniques) and not lead_nullable
    if stream.tie_breaker:
        cursor = cursor + [c for c in stream.tie_breaker if c not in cursor]
    elif not unique:
        if not key:
            what = (
                f"column '{cursor[0]}' of '{label}' may be NULL"
                if lead_nullable
                else f"({', '.join(cursor)}) of '{label}' is not unique"
            )
            raise ConfigError(
                f"Stream '{stream.target}': the cursor {what}, and there is no primary key "
                "to break ties.",
                hint="Name unique, non-null columns as `tie_breaker:` (or add them to the cursor).",
            )
        cursor = cursor + [c for c in key if c not in cursor]
    if lead_nullable and len(cursor) == 1:
        raise ConfigError(
            f"Stream '{stream.target}': the cursor column '{cursor[0]}' of '{label}' may be "
            "NULL, and rows with a NULL cursor are ordered by the columns after it; it has none.",
            hint="Name a unique, non-null `tie_breaker:`.",
        )
    nulls = [c for c in cursor[1:] if nullable.get(c, True) and c not in key]
    if nulls:
        raise ConfigError(
            f"Stream '{stream.target}': the cursor column '{nulls[0]}' of '{label}' allows "
            "NULL; only the first cursor column may (its NULL rows are copied as a part of "
            "their own, ordered by the columns after it).",
            hint="Choose NOT NULL columns after the first, or make the column the first.",
        )
    return cursor


def _mariadb_json_columns(conn: Any, stream: StreamConfig) -> set[str]:
    """MariaDB's JSON is LONGTEXT with a CHECK (json_valid(col)), so it reflects as text;
    the check is what says the column holds JSON."""
    if conn.family != "mysql":
        return set()
    try:
        rows = conn.query(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
            [stream.schema_, stream.table],
        )
    except Exception:  # MySQL has no TABLE_NAME there, and a real JSON type instead
        return set()
    found = set()
    for (clause,) in rows:
        match = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", clause or "")
        if match:
            found.add(match.group(1).replace("``", "`"))
    return found


def _check_where(conn: Any, stream: StreamConfig, label: str) -> None:
    """Let the source parse the filter now, so a typo fails before anything is written."""
    table = conn.qualified(stream.table, stream.schema_)
    try:
        conn.query(f"SELECT 1 FROM {table} WHERE ({conn.verbatim(stream.where)}) LIMIT 0")
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"Stream '{stream.target}': the source rejects `where: {stream.where}` on "
            f"'{label}': {reason}",
            hint="Write the condition in the source database's own SQL dialect.",
        ) from None


def _unescaped(conn: Any, reflected: Any) -> Any:
    """SQLAlchemy's MySQL reflection leaves a backtick in a name doubled, as SHOW CREATE
    TABLE prints it; undo that for a column name or a list of get_columns() entries."""
    if conn.family != "mysql":
        return reflected
    if isinstance(reflected, str):
        return reflected.replace("``", "`")
    return [{**c, "name": c["name"].replace("``", "`")} for c in reflected]


def inspect_destination(
    source_conn: Any, dest_conn: Any, tables: list[SourceTable]
) -> list[DestinationPlan]:
    """Plan each destination table; an existing one must fit, column by column."""
    same = source_conn.family == dest_conn.family
    meta = sa.MetaData()
    insp = sa.inspect(dest_conn.sqlalchemy_engine())
    targets = {t.name: t.stream.target for t in tables}
    plans = []
    for src in tables:
        table = _destination_table(src, meta, dest_conn, same, source_conn, targets)
        target = src.stream.target
        exists = insp.has_table(target)
        rows_present = False
        if exists:
            _check_fit(src, dest_conn, insp, target)
            rows_present = bool(dest_conn.query(f"SELECT 1 FROM {dest_conn.quote(target)} LIMIT 1"))
        write_modes.check_destination_key(dest_conn, src, exists)
        plans.append(DestinationPlan(src, table, exists, rows_present))
    return plans


def _destination_table(
    src: SourceTable,
    meta: sa.MetaData,
    dest_conn: Any,
    same: bool,
    source_conn: Any,
    targets: dict[str, str],
) -> sa.Table:
    columns = []
    for name in src.columns:
        col_type = _column_type(src, name, dest_conn.family, same, source_conn)
        columns.append(
            sa.Column(
                name,
                col_type,
                nullable=src.nullable[name],
                primary_key=name in src.primary_key,
                autoincrement=False,
            )
        )
    constraints = []
    if dest_conn.family != "postgresql":
        # SQLite and MySQL (foreign_key_checks=0) accept constraints before the rows.
        constraints = _foreign_keys(src, targets)
    key = write_modes.unique_key(src)  # `write: upsert` by a declared key: its index
    if key:
        constraints.append(sa.UniqueConstraint(*key))
    return sa.Table(src.stream.target, meta, *columns, *constraints)


def _column_type(
    src: SourceTable, name: str, family: str, same: bool, source_conn: Any
) -> sa.types.TypeEngine:
    reflected = src.types[name]
    if same and family == "sqlite":
        return Declared(src.declared.get(name) or "")
    if same and family == "postgresql" and name in src.exact_types:
        return Declared(src.exact_types[name])  # a query's column: no relation to look it up
    if same and family == "postgresql" and isinstance(reflected, sa.types.NullType):
        exact = source_conn.query(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attname = %s",
            [source_conn.name_value(source_conn.qualified(src.name, src.stream.schema_)), name],
        )
        return Declared(exact[0][0])
    json_as_text = src.logical[name] == Logical("json") and not isinstance(reflected, sa.JSON)
    if same and not isinstance(reflected, sa.types.NullType) and not json_as_text:
        return reflected
    logical = src.logical[name]
    if logical is None:
        shown = src.declared.get(name) or reflected
        raise SchemaError(
            f"Stream '{src.stream.target}': column '{name}' of {src.described} has type "
            f"{shown}, which milepost cannot carry to {family} faithfully.",
            hint="CAST it to a type milepost knows in the query (… AS name)."
            if src.query is not None
            else "Exclude the table, or cast the column in a view and copy the view.",
        )
    return destination_type(logical, family)


def _foreign_keys(src: SourceTable, targets: dict[str, str]) -> list[sa.ForeignKeyConstraint]:
    out = []
    for fk in src.foreign_keys:
        parent = targets.get(fk["referred_table"])
        if parent is None or not fk["constrained_columns"]:
            continue  # the parent is not copied by this pipeline
        out.append(
            sa.ForeignKeyConstraint(
                fk["constrained_columns"], [f"{parent}.{c}" for c in fk["referred_columns"]]
            )
        )
    return out


def _check_fit(src: SourceTable, dest_conn: Any, insp: Any, target: str) -> None:
    dest_cols = {c["name"]: c for c in _unescaped(dest_conn, insp.get_columns(target))}
    declared = {}
    if dest_conn.family == "sqlite":
        declared = {
            r[1]: r[2] for r in dest_conn.query(f"PRAGMA table_info({dest_conn.quote(target)})")
        }
    for name in src.columns:
        if name not in dest_cols:
            raise SchemaError(
                f"Stream '{src.stream.target}': the existing destination table '{target}' has "
                f"no column '{name}', which the source {src.described} has.",
                hint="Add the column, or drop the table and let milepost create it.",
            )
        have = classify(dest_cols[name]["type"], declared.get(name) if declared else None)
        need = src.logical[name]
        if need is not None and (have is None or not _fits(have, need, dest_conn.family)):
            raise SchemaError(
                f"Stream '{src.stream.target}': column '{name}' of the existing destination "
                f"table '{target}' is {have or dest_cols[name]['type']}, which cannot hold the "
                f"source's {need}.",
                hint="Widen the destination column, or drop the table and let milepost create it.",
            )


def _fits(have: Logical, need: Logical, family: str) -> bool:
    """Wide enough, or just what milepost creates for `need`: MySQL keeps a zoned timestamp
    in DATETIME(6) and an unbounded decimal in DECIMAL(65,30), by convention."""
    made = destination_type(need, family)
    own = classify(made, made.spec if isinstance(made, Declared) else None)
    return holds(have, need) or have == own


def create_tables(dest_conn: Any, plans: list[DestinationPlan]) -> list[str]:
    """Create the destination tables that do not exist yet, parents before children."""
    missing = [p.table for p in plans if not p.exists]
    if missing:
        meta = missing[0].metadata
        meta.create_all(dest_conn.sqlalchemy_engine(), tables=missing, checkfirst=True)
    return [t.name for t in missing]


def add_foreign_keys(dest_conn: Any, plans: list[DestinationPlan]) -> int:
    """PostgreSQL checks constraints at once, so they are added after the rows are in."""
    if dest_conn.family != "postgresql":
        return 0
    targets = {p.source.name: p.source.stream.target for p in plans}
    engine = dest_conn.sqlalchemy_engine()
    insp = sa.inspect(engine)
    added = 0
    with engine.begin() as c:
        for p in plans:
            present = {
                (tuple(fk["constrained_columns"]), fk["referred_table"])
                for fk in insp.get_foreign_keys(p.table.name)
            }
            for fk in _foreign_keys(p.source, targets):
                parent = next(iter(fk.elements)).target_fullname.split(".")[0]
                if (tuple(fk.column_keys), parent) in present:
                    continue
                p.table.append_constraint(fk)
                c.execute(AddConstraint(fk))
                added += 1
    return added
