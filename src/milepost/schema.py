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

from milepost.config import StreamConfig
from milepost.errors import ConfigError, SchemaError
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

    @property
    def name(self) -> str:
        return self.stream.table

    @property
    def label(self) -> str:
        s = self.stream
        return f"{s.schema_}.{s.table}" if s.schema_ else s.table


@dataclass
class DestinationPlan:
    """What the destination table of one stream will be, and whether it exists already."""

    source: SourceTable
    table: sa.Table
    exists: bool
    rows_present: bool


def inspect_source(conn: Any, stream: StreamConfig) -> SourceTable:
    """Reflect a stream's source table and settle its cursor; raise naming what is wrong."""
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
    for c in cursor:
        if c not in names:
            raise ConfigError(
                f"Stream '{stream.target}': the cursor column '{c}' is not a column of the "
                f"source table '{label}' (its columns: {', '.join(names)})."
            )
    uniques = [pk] + [
        [_unescaped(conn, c) for c in u["column_names"]]
        for u in insp.get_unique_constraints(stream.table, schema=stream.schema_)
    ]
    if not any(u and set(u) <= set(cursor) for u in uniques):
        # Keyset pagination needs a unique order; the primary key breaks ties.
        extra = [c for c in pk if c not in cursor]
        if not pk:
            raise ConfigError(
                f"Stream '{stream.target}': the cursor ({', '.join(cursor)}) of '{label}' is "
                "not unique and the table has no primary key to break ties.",
                hint="Add columns to the cursor until it is unique.",
            )
        cursor += extra
    nullable = {c["name"]: bool(c.get("nullable", True)) for c in cols}
    nulls = [c for c in cursor if nullable[c] and c not in pk]
    if nulls:
        raise ConfigError(
            f"Stream '{stream.target}': the cursor column '{nulls[0]}' of '{label}' allows "
            "NULL, and rows with a NULL cursor cannot be paged by keyset.",
            hint="Choose a NOT NULL cursor column.",
        )
    if stream.where:
        _check_where(conn, stream, label)
    types = {c["name"]: c["type"] for c in cols}
    logical = {n: classify(types[n], declared.get(n) if declared else None) for n in names}
    for name in _mariadb_json_columns(conn, stream):
        logical[name] = Logical("json")
    fks = insp.get_foreign_keys(stream.table, schema=stream.schema_)
    return SourceTable(stream, names, types, logical, declared, nullable, pk, cursor, fks)


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
    return sa.Table(src.stream.target, meta, *columns, *constraints)


def _column_type(
    src: SourceTable, name: str, family: str, same: bool, source_conn: Any
) -> sa.types.TypeEngine:
    reflected = src.types[name]
    if same and family == "sqlite":
        return Declared(src.declared.get(name) or "")
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
            f"Stream '{src.stream.target}': column '{name}' of table '{src.label}' has type "
            f"{shown}, which milepost cannot carry to {family} faithfully.",
            hint="Exclude the table, or cast the column in a view and copy the view.",
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
                f"no column '{name}', which the source table '{src.label}' has.",
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
