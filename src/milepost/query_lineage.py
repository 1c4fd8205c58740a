"""Where a query's output column comes from: followed through its CTEs and subqueries
down to a table column, when that is certain.

The view a query is described by (milepost/query_schema.py) says every column may be
NULL; the table a plain column reads says whether it may. Knowing that matters: only the
first cursor column may be NULL, so a composite cursor over a CTE needs its later columns
traced to NOT NULL table columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Union

from sqlglot import exp


@dataclass(frozen=True)
class TableRef:
    """A table the query's top-level FROM or JOIN reads."""

    alias: str  # what columns are qualified by: the alias, else the table's name
    name: str
    schema: str | None
    outer: bool  # on the NULL-filled side of an outer join: its columns may be NULL


# Reflects a table the query reads: column name -> nullable, or None when it cannot.
ColumnsOf = Callable[[TableRef], "dict[str, bool] | None"]


def output_name(item: exp.Expression) -> str:
    if isinstance(item, exp.Alias):
        return item.alias
    if isinstance(item, exp.Column) and not item.is_star:
        return item.name
    return ""


def normal_name(ident: exp.Expression, family: str) -> str:
    """An identifier as the server stores it: PostgreSQL folds unquoted names to lower case."""
    name = ident.name if isinstance(ident, exp.Identifier) else str(ident)
    quoted = isinstance(ident, exp.Identifier) and ident.quoted
    return name.lower() if family == "postgresql" and not quoted else name


# --- where an output column comes from -------------------------------------------------

_Source = Union[TableRef, exp.Query, None]  # noqa: UP007 (a table, a CTE or subquery, unknown)
Ctes = dict[str, exp.Query]


def ctes_of(select: exp.Select, outer: dict[str, exp.Query]) -> dict[str, exp.Query]:
    """The CTEs visible in `select`: those of enclosing queries, then its own."""
    found = dict(outer)
    for cte in select.ctes:
        found[cte.alias_or_name.casefold()] = cte.this
    return found


def sources_of(
    select: exp.Select, ctes: dict[str, exp.Query], family: str
) -> list[tuple[str, _Source, bool]]:
    """What the FROM and JOINs of `select` read, by the alias columns are qualified with:
    a table, a CTE or subquery, or None (a table function); and whether an outer join
    fills it with NULLs."""
    entries: list[tuple[exp.Expression, str | None]] = []
    from_ = select.args.get("from_")
    if from_ is not None:
        entries.append((from_.this, None))
    entries += [(j.this, (j.side or "").upper() or None) for j in select.args.get("joins") or []]
    out: list[tuple[str, _Source, bool]] = []
    for source, side in entries:
        if side in ("RIGHT", "FULL"):  # the sources before it are NULL-filled
            out = [(a, s, True) for a, s, _ in out]
        found: _Source = None
        if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
            if not source.db and source.name.casefold() in ctes:
                found = ctes[source.name.casefold()]
            else:
                db = normal_name(source.args["db"], family) if source.db else None
                found = TableRef(source.alias_or_name, normal_name(source.this, family), db, False)
        elif isinstance(source, exp.Subquery) and isinstance(source.this, exp.Query):
            found = source.this
        out.append((source.alias_or_name, found, side in ("LEFT", "FULL")))
    return [
        (a, dataclasses.replace(s, outer=o) if isinstance(s, TableRef) else s, o) for a, s, o in out
    ]


class Tracer:
    """Follows a plain column reference down to the table column it reads, or gives up
    (None) as soon as that is not certain: an expression, a UNION, an ambiguous name."""

    def __init__(self, family: str, columns_of: ColumnsOf) -> None:
        self.family = family
        self.columns_of = columns_of

    def same(self, a: str, b: str) -> bool:
        return a == b if self.family == "postgresql" else a.casefold() == b.casefold()

    def follow(
        self,
        select: exp.Expression,
        qualifier: str | None,
        column: str,
        ctes: dict[str, exp.Query],
        outer: bool,
        depth: int,
    ) -> tuple[TableRef, str] | None:
        """`qualifier.column` as `select` reads it; `outer`: `select` itself is on the
        NULL-filled side of an outer join."""
        if depth > 16 or not isinstance(select, exp.Select):
            return None
        ctes = ctes_of(select, ctes)
        sources = sources_of(select, ctes, self.family)
        if qualifier is not None:
            sources = [x for x in sources if x[0].casefold() == qualifier.casefold()]
        found: list[tuple[TableRef, str] | None] = []
        for _, source, nulled in sources:
            if source is None:
                return None  # a table function, or something else we cannot see into
            if isinstance(source, TableRef):
                columns = self.columns_of(source)
                if columns is None:
                    return None
                name = next((c for c in columns if self.same(c, column)), None)
                if name is not None:
                    found.append((source, name))
                continue
            inner = self._inner(source, column, ctes, outer or nulled, depth)
            if inner is not False:
                found.append(inner or None)
        if len(found) != 1 or found[0] is None:
            return None
        ref, name = found[0]
        return (dataclasses.replace(ref, outer=True) if outer else ref), name

    def _inner(
        self, query: exp.Query, column: str, ctes: dict[str, exp.Query], outer: bool, depth: int
    ) -> tuple[TableRef, str] | Literal[False] | None:
        """In a CTE or subquery: the traced column, None when it is one of its output
        columns but cannot be traced, False when it is not one of them."""
        if not isinstance(query, exp.Select):
            return None  # a UNION: another branch may put anything there
        stars = []
        for item in query.expressions:
            if item.is_star:
                stars.append(item)
                continue
            ident = item.args.get("alias") if isinstance(item, exp.Alias) else item.this
            if not output_name(item) or not self.same(normal_name(ident, self.family), column):
                continue
            inner = item.this if isinstance(item, exp.Alias) else item
            if not isinstance(inner, exp.Column) or inner.is_star:
                return None
            name = normal_name(inner.this, self.family)
            return self.follow(query, inner.table or None, name, ctes, outer, depth + 1)
        for star in stars:
            qualifier = (star.table or None) if isinstance(star, exp.Column) else None
            traced = self.follow(query, qualifier, column, ctes, outer, depth + 1)
            if traced is not None:
                return traced
        return None if stars else False

    # --- NULL or not --------------------------------------------------------------------

    def not_null(self, query: exp.Expression, pick: int | str, ctes: Ctes, depth: int) -> bool:
        """Is output column `pick` (a position or a name) of `query` certainly never NULL?
        A UNION's column is when it is in every branch."""
        if depth > 16:
            return False
        if isinstance(query, exp.SetOperation):
            if isinstance(pick, str):
                names = [n.casefold() for n in query.named_selects]
                if pick.casefold() not in names:
                    return False
                pick = names.index(pick.casefold())
            return all(self.not_null(q, pick, ctes, depth + 1) for q in (query.left, query.right))
        if not isinstance(query, exp.Select):
            return False
        items = query.expressions
        if isinstance(pick, int):
            if any(i.is_star for i in items) or pick >= len(items):
                return False
            item = items[pick]
        else:
            found = [i for i in items if output_name(i) and self.same(_name(i, self.family), pick)]
            if len(found) != 1:
                return False
            item = found[0]
        value = item.this if isinstance(item, exp.Alias) else item
        return self.expression_not_null(query, value, ctes_of(query, ctes), depth)

    def expression_not_null(
        self, select: exp.Select, value: exp.Expression, ctes: Ctes, depth: int
    ) -> bool:
        """A literal, a COALESCE with such an argument, or a NOT NULL table column."""
        if isinstance(value, exp.Paren):
            return self.expression_not_null(select, value.this, ctes, depth)
        if isinstance(value, exp.Literal):
            return True
        if isinstance(value, exp.Coalesce):
            args = [value.this, *value.expressions]
            return any(self.expression_not_null(select, a, ctes, depth) for a in args)
        if not isinstance(value, exp.Column) or value.is_star:
            return False
        qualifier, column = value.table or None, normal_name(value.this, self.family)
        origin = self.follow(select, qualifier, column, ctes, False, depth)
        if origin is not None:
            ref, name = origin
            columns = self.columns_of(ref) or {}
            return not ref.outer and columns.get(name) is False
        # Through a UNION in a CTE or subquery, which `follow` does not enter.
        sources = sources_of(select, ctes, self.family)
        if qualifier is not None:
            sources = [x for x in sources if x[0].casefold() == qualifier.casefold()]
        if len(sources) != 1 or not isinstance(sources[0][1], exp.SetOperation):
            return False
        _, union, nulled = sources[0]
        return not nulled and self.not_null(union, column, ctes, depth + 1)


def _name(item: exp.Expression, family: str) -> str:
    ident = item.args.get("alias") if isinstance(item, exp.Alias) else item.this
    return normal_name(ident, family)
