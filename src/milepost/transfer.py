"""How one batch's rows travel from source to destination, per pair of engines.

Every path reads a bounded cursor range (its last key already known) and writes it
inside the destination transaction that the copier opened; it returns the number of
rows the destination accepted. Each path keeps rows in the cheapest form the pair
allows, measured in bench/results/copy.md:

- PostgreSQL -> PostgreSQL: COPY ... TO STDOUT bytes fed to COPY ... FROM STDIN,
  never parsed (binary when the column types are identical, text otherwise).
- SQLite -> SQLite: the destination attaches the source file; INSERT ... SELECT.
- MySQL -> PostgreSQL: the server formats each row as a COPY text line, so the pure
  Python driver parses one field per row rather than one per column.
- SQLite -> PostgreSQL: driver tuples into psycopg's C `write_row`.
- anything -> SQLite or MySQL: driver tuples into `executemany`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from milepost import connectors, write_modes
from milepost.config import Pipeline
from milepost.keyset import RangeFilter
from milepost.query import Relation
from milepost.schema import SourceTable
from milepost.typemap import Logical

# Bytes gathered from COPY TO's per-row messages before one write to the destination.
COALESCE_BYTES = 256 * 1024


class Transfer(Protocol):
    """Moves one batch in two halves, so the copier can overlap them.

    `read` runs on the source side and returns what `write` needs; `write` runs inside
    the destination transaction and returns the rows accepted. Paths that stream from
    the source while writing (`prefetch = False`) read nothing ahead: their `read`
    returns the range and `write` does all the work.
    """

    name: str
    prefetch: bool

    def read(self, rng: RangeFilter) -> Any: ...

    def write(self, payload: Any) -> int: ...


@dataclass
class _Path:
    prefetch = True

    src: Any
    dst: Any
    table: SourceTable
    src_table: Relation  # the quoted table, or the stream's query
    dst_table: str

    def __post_init__(self) -> None:
        """Per-path set-up, done once per worker outside any transaction."""

    @property
    def columns(self) -> list[str]:
        return self.table.columns

    def select(
        self, rng: RangeFilter, select_list: str | None = None, src_table: Relation | None = None
    ) -> tuple[str, list[Any]]:
        return self.src.select_range(
            src_table or self.src_table, self.columns, self.table.cursor, rng, select_list
        )


class PostgresCopyPassthrough(_Path):
    """COPY bytes from one PostgreSQL straight into another."""

    name = "pg-copy-binary"

    def __init__(self, *args: Any, binary: bool) -> None:
        super().__init__(*args)
        self.fmt = "binary" if binary else "text"
        self.name = f"pg-copy-{self.fmt}"

    prefetch = False

    def read(self, rng: RangeFilter) -> RangeFilter:
        return rng

    def write(self, rng: RangeFilter) -> int:
        query, params = self.select(rng)
        blocks = self.src.copy_out_blocks(query, params, self.fmt, COALESCE_BYTES)
        with (
            contextlib.closing(blocks),
            self.dst.copy_in(self.dst_table, self.columns, self.fmt) as into,
        ):
            for block in blocks:
                into.write(block)
        return int(self.dst.last_copy_rows)


class SqliteAttachedInsert(_Path):
    """SQLite reads the attached source file itself; no row passes through Python."""

    name = "sqlite-attach"
    # Set by write_modes for `write: upsert`: the ON CONFLICT clause after the SELECT.
    upsert_clause = ""

    def __post_init__(self) -> None:
        # ATTACH is refused inside a transaction, so it happens before the first batch.
        self.alias = self.dst.attach_source(self.src.path)

    prefetch = False

    def read(self, rng: RangeFilter) -> RangeFilter:
        return rng

    def write(self, rng: RangeFilter) -> int:
        source = f"{self.alias}.{self.src_table}"
        query, params = self.select(rng, src_table=source)
        cols = ", ".join(self.dst.quote(c) for c in self.columns)
        return int(
            self.dst.execute(
                f"INSERT INTO {self.dst_table} ({cols}) {query} {self.upsert_clause}", params
            )
        )


class MysqlLinesToCopy(_Path):
    """MariaDB/MySQL renders COPY text lines; PostgreSQL parses them."""

    name = "mysql-copy-text"

    def __post_init__(self) -> None:
        parts = [_copy_text_field(self.src.quote(c), self.table.logical[c]) for c in self.columns]
        self.select_list = f"CONVERT(CONCAT_WS('\\t', {', '.join(parts)}) USING utf8mb4)"

    def read(self, rng: RangeFilter) -> list[Any]:
        query, params = self.select(rng, self.select_list)
        return self.src.fetch_rows(query, params)

    def write(self, rows: list[Any]) -> int:
        if not rows:
            return 0
        with self.dst.copy_in(self.dst_table, self.columns, "text") as into:
            into.write("\n".join([r[0] for r in rows]))
            into.write("\n")
        return int(self.dst.last_copy_rows)


def _copy_text_field(col: str, logical: Logical | None) -> str:
    """A MySQL expression that renders one column as a PostgreSQL COPY text field."""
    kind = logical.kind if logical else "text"
    if kind == "bytes":
        return rf"IFNULL(CONCAT('\\\\x', HEX({col})), '\\N')"
    if kind in {"text", "varchar", "json", "jsonb", "uuid"}:
        escaped = (
            rf"REPLACE(REPLACE(REPLACE(REPLACE({col}, '\\', '\\\\'), '\t', '\\t'), "
            rf"'\n', '\\n'), '\r', '\\r')"
        )
        return rf"IFNULL({escaped}, '\\N')"
    return rf"IFNULL({col}, '\\N')"


class RowsToCopy(_Path):
    """Driver tuples written by psycopg's C COPY formatter."""

    name = "rows-copy"

    def read(self, rng: RangeFilter) -> list[Any]:
        query, params = self.select(rng)
        return self.src.fetch_rows(query, params)

    def write(self, rows: list[Any]) -> int:
        if not rows:
            return 0
        with self.dst.copy_in(self.dst_table, self.columns, "text") as into:
            for row in rows:
                into.write_row(row)
        return int(self.dst.last_copy_rows)


class RowsToInsert(_Path):
    """Driver tuples into a multi-row INSERT (SQLite and MySQL destinations)."""

    name = "rows-insert"

    def __post_init__(self) -> None:
        # SQLite keeps a zoned timestamp as ISO text with an offset, which MySQL's DATETIME
        # refuses; as an aware datetime the MySQL connector stores it as UTC.
        pair = (self.src.family, self.dst.family)
        kinds = [self.table.logical[c] for c in self.columns]
        self.zoned = [
            i
            for i, k in enumerate(kinds)
            if pair == ("sqlite", "mysql") and k and k.kind == "timestamptz"
        ]

    def read(self, rng: RangeFilter) -> list[Any]:
        query, params = self.select(rng)
        rows = self.src.fetch_rows(query, params)
        if self.zoned:
            rows = [_parse_zoned(row, self.zoned) for row in rows]
        return rows

    def write(self, rows: list[Any]) -> int:
        if not rows:
            return 0
        return int(self.dst.insert_rows(self.dst_table, self.columns, rows))


def _parse_zoned(row: tuple[Any, ...], positions: list[int]) -> tuple[Any, ...]:
    out = list(row)
    for i in positions:
        if isinstance(out[i], str):
            out[i] = dt.datetime.fromisoformat(out[i])
    return tuple(out)


def same_column_types(src: Any, dst: Any, table: SourceTable) -> bool:
    """Do two PostgreSQL tables declare the stream's columns with exactly the same types?
    Then binary COPY passes through unchanged, and each type's own hash compares them."""
    wanted = set(table.columns)
    dst_table = dst.quote(table.stream.target)
    if table.query is not None:  # no relation to look up: the types its view showed
        mine = sorted(f"{c}:{t}" for c, t in table.exact_types.items() if c in wanted)
    else:
        src_table = src.qualified(table.name, table.stream.schema_)
        mine = sorted(t for t in src.column_types(src_table) if t.split(":", 1)[0] in wanted)
    theirs = sorted(t for t in dst.column_types(dst_table) if t.split(":", 1)[0] in wanted)
    return mine == theirs


def choose(src: Any, dst: Any, table: SourceTable) -> Transfer:
    """The cheapest path for this pair of engines and this table; with `write: upsert`,
    its batches land by the destination's native upsert (milepost/write_modes.py)."""
    return write_modes.landing(_cheapest(src, dst, table), table)


def _cheapest(src: Any, dst: Any, table: SourceTable) -> Transfer:
    dst_table = dst.quote(table.stream.target)
    args = (src, dst, table, table.reader(src), dst_table)
    pair = (src.family, dst.family)
    if pair == ("postgresql", "postgresql"):
        return PostgresCopyPassthrough(*args, binary=same_column_types(src, dst, table))
    if pair == ("sqlite", "sqlite") and table.query is None:
        # (A query names its tables unqualified, which would find the destination's.)
        return SqliteAttachedInsert(*args)
    if pair == ("mysql", "postgresql"):
        return MysqlLinesToCopy(*args)
    if dst.family == "postgresql":
        return RowsToCopy(*args)
    return RowsToInsert(*args)


class WorkerConnections:
    """A worker's source and destination connections, and the transfer path per stream."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.src: Any = None
        self.dst: Any = None
        self.paths: dict[str, Transfer] = {}
        self.broken = False

    def open(self, table: SourceTable | None) -> tuple[Any, Any, Any]:
        if self.src is None:
            self.src = connectors.connect(self.pipeline.source_url(), "source")
        if self.dst is None:
            self.dst = connectors.connect(self.pipeline.destination_url(), "destination")
        self.broken = False
        path = None
        if table is not None:
            target = table.stream.target
            if target not in self.paths:
                self.paths[target] = choose(self.src, self.dst, table)
            path = self.paths[target]
        return self.src, self.dst, path

    def close(self) -> None:
        for conn in (self.src, self.dst):
            if conn is not None:
                conn.close()
        self.src = self.dst = None
        self.paths.clear()
