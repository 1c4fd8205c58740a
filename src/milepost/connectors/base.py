"""What the runner and copier need from a database, whatever the engine.

A connector wraps one driver connection. It knows its SQL dialect (quoting,
placeholders, keyset predicates), its transactions, and how to reach SQLAlchemy for
the schema phase. How rows travel between two particular engines lives in
`milepost.transfer`, not here: a connector only offers what its driver does well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy.engine import Engine

from milepost.keyset import Key, KeysetSql, RangeFilter, verbatim
from milepost.urls import DatabaseUrl

if TYPE_CHECKING:  # sqlglot (~45 ms) loads with the first query, not for `status` or `pause`
    from milepost.query import Relation


@runtime_checkable
class Connection(Protocol):
    """One open connection to a source or destination database."""

    family: str
    url: DatabaseUrl
    placeholder: str
    row_values: bool  # does the planner use an index for (a, b) > (x, y)?

    def quote(self, name: str) -> str: ...

    def qualified(self, table: str, schema: str | None = None) -> str: ...

    def verbatim(self, fragment: str) -> str: ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def fetch_rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    def stream_rows(self, sql: str, params: Sequence[Any] = (), size: int = 10_000) -> Any: ...

    def transaction(self) -> Any: ...

    def savepoint(self, name: str = "milepost_try") -> Any: ...

    def next_batch_end(
        self, table: Relation, cursor: Sequence[str], rng: RangeFilter, batch_size: int
    ) -> tuple[Key | None, bool]: ...

    def cursor_bounds(
        self, table: Relation, cursor: Sequence[str], rng: RangeFilter
    ) -> tuple[Key | None, Key | None]: ...

    def select_range(
        self,
        table: Relation,
        columns: Sequence[str],
        cursor: Sequence[str],
        rng: RangeFilter,
        select_list: str | None = None,
    ) -> tuple[str, list[Any]]: ...

    def sqlalchemy_engine(self) -> Engine: ...

    def estimate_rows(self, table: str, schema: str | None) -> int | None: ...

    def read_json_as_text(self) -> None: ...

    def close(self) -> None: ...


class ConnectionBase:
    """Dialect plumbing shared by every engine; subclasses wrap the driver."""

    family: str
    placeholder = "%s"
    row_values = True

    def __init__(self, url: DatabaseUrl, role: str, raw: Any) -> None:
        self.url = url
        self.role = role
        self.raw = raw
        self._engine: Engine | None = None

    def quote(self, name: str) -> str:
        return self.sqlalchemy_engine().dialect.identifier_preparer.quote_identifier(name)

    def qualified(self, table: str, schema: str | None = None) -> str:
        return f"{self.quote(schema)}.{self.quote(table)}" if schema else self.quote(table)

    def keyset(self, cursor: Sequence[str]) -> KeysetSql:
        return KeysetSql(tuple(self.quote(c) for c in cursor), self.placeholder, self.row_values)

    def bind(self, params: Sequence[Any]) -> Any:
        """Always bind, even nothing: with %s-style drivers every statement we build is
        then read the same way, so a % in a quoted name, doubled by SQLAlchemy's
        quoting, and a % in a user's SQL, doubled by `verbatim`, both arrive as one %."""
        return tuple(params)

    def verbatim(self, fragment: str) -> str:
        """A user's SQL (a `where:`), escaped to mean exactly what they wrote."""
        return verbatim(fragment, self.placeholder)

    def name_value(self, quoted: str) -> str:
        """A quoted name passed as a value (e.g. to to_regclass), not as SQL text."""
        return quoted.replace("%%", "%") if self.placeholder == "%s" else quoted

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = self.raw.cursor()
        try:
            cur.execute(sql, self.bind(params))
            return cur.rowcount
        finally:
            cur.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.raw.cursor()
        try:
            cur.execute(sql, self.bind(params))
            return [tuple(r) for r in cur.fetchall()]
        finally:
            cur.close()

    def fetch_rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows exactly as the driver returns them: the hot path makes no copies."""
        cur = self.raw.cursor()
        try:
            cur.execute(sql, self.bind(params))
            return cur.fetchall()
        finally:
            cur.close()

    def stream_rows(
        self, sql: str, params: Sequence[Any] = (), size: int = 10_000
    ) -> Iterator[Any]:
        """Every row of a query, fetched a page at a time (memory bounded by `size`)."""
        cur = self.raw.cursor()
        try:
            cur.execute(sql, self.bind(params))
            while rows := cur.fetchmany(size):
                yield from rows
        finally:
            cur.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside commits together or not at all."""
        self._begin()
        try:
            yield
        except BaseException:
            self._rollback_quietly()
            raise
        self.raw.commit()

    @contextmanager
    def savepoint(self, name: str = "milepost_try") -> Iterator[None]:
        """Inside a transaction: undo only what this block wrote if it fails.

        The same three statements work on PostgreSQL, MySQL/MariaDB and SQLite.
        """
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.execute(f"RELEASE SAVEPOINT {name}")

    def _begin(self) -> None:
        """Drivers that open transactions implicitly need nothing here."""

    def _rollback_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the connection may be what broke
            self.raw.rollback()

    # --- batch planning: the upper key of the next batch, known before it is read ---

    def next_batch_end(
        self, table: Relation, cursor: Sequence[str], rng: RangeFilter, batch_size: int
    ) -> tuple[Key | None, bool]:
        """The last key of the next batch of `batch_size` rows, and whether it is the final one.

        Walks only the cursor's index (the nth key after the watermark), so the batch
        can be read and written as a bounded range whose ledger row needs nothing
        from the data.
        """
        ks = self._keyset_over(table, cursor)
        where, params = rng.sql(ks)
        p = self.placeholder
        rows = self.query(
            self._select(table, cursor, where, ks.order(), f"LIMIT 1 OFFSET {p}"),
            [*params, batch_size - 1],
        )
        if rows:
            return tuple(rows[0]), False
        rows = self.query(self._select(table, cursor, where, ks.order(True), "LIMIT 1"), params)
        return (tuple(rows[0]), True) if rows else (None, True)

    def cursor_bounds(
        self, table: Relation, cursor: Sequence[str], rng: RangeFilter
    ) -> tuple[Key | None, Key | None]:
        """The smallest and largest key in `rng` (two index lookups), or (None, None)."""
        ks = self._keyset_over(table, cursor)
        where, params = rng.sql(ks)
        ends = []
        for descending in (False, True):
            rows = self.query(
                self._select(table, cursor, where, ks.order(descending), "LIMIT 1"), params
            )
            ends.append(tuple(rows[0]) if rows else None)
        return ends[0], ends[1]

    def select_range(
        self,
        table: Relation,
        columns: Sequence[str],
        cursor: Sequence[str],
        rng: RangeFilter,
        select_list: str | None = None,
    ) -> tuple[str, list[Any]]:
        from milepost.query import ParsedQuery

        if select_list is not None:
            # A select list of its own (over the output columns) reads a query as a table.
            if isinstance(table, ParsedQuery):
                table = table.derived(self.placeholder)
            ks = self.keyset(cursor)
            where, params = rng.sql(ks)
            return f"SELECT {select_list} FROM {table} WHERE {where} ORDER BY {ks.order()}", params
        ks = self._keyset_over(table, cursor)
        where, params = rng.sql(ks)
        return self._select(table, columns, where, ks.order()), params

    def _keyset_over(self, table: Relation, cursor: Sequence[str]) -> KeysetSql:
        """Over a merged query, the keyset compares the cursor's source expressions (its
        WHERE cannot name the output aliases); otherwise the quoted cursor columns."""
        from milepost.query import ParsedQuery

        if isinstance(table, ParsedQuery) and table.merged:
            columns = table.keyset_columns(cursor, self.placeholder)
            return KeysetSql(tuple(columns), self.placeholder, self.row_values)
        return self.keyset(cursor)

    def _select(
        self, table: Relation, columns: Sequence[str], where: str, order: str, tail: str = ""
    ) -> str:
        """SELECT `columns` of the rows matching `where`, ordered, then `tail` (a LIMIT)."""
        from milepost.query import ParsedQuery

        if isinstance(table, ParsedQuery):
            if table.merged:
                own = list(columns) == list(table.columns)
                return table.rewrite(None if own else columns, where, order, tail, self.placeholder)
            table = table.derived(self.placeholder)
        cols = ", ".join(self.quote(c) for c in columns)
        end = f" {tail}" if tail else ""
        return f"SELECT {cols} FROM {table} WHERE {where} ORDER BY {order}{end}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
        if self._engine is not None:
            self._engine.dispose()

    def read_json_as_text(self) -> None:
        """Hand JSON columns over as their text (drivers that parse JSON override this)."""

    def sqlalchemy_engine(self) -> Engine:
        raise NotImplementedError

    def estimate_rows(self, table: str, schema: str | None) -> int | None:
        return None

    def estimate_query_rows(self, relation: str) -> int | None:
        """The planner's guess of a query's rows (`relation` is FROM-able), if it has one."""
        return None
