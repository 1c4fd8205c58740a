"""A query stream's SQL: parsed once with sqlglot, refused when paging it could lose or
repeat rows, and rewritten on its syntax tree (never by pasting strings) to read one
keyset range at a time.

milepost reads a query the way it reads a table: in batches after a cursor key, ordered
by the cursor. Two forms do that (docs/sources/query.md):

- **merged**: a plain SELECT (CTEs allowed) gets the keyset condition ANDed into its own
  WHERE and its ORDER BY replaced. The database sees one ordinary query and can use the
  indexes of the tables it reads.
- **wrapped**: a query whose WHERE would filter something else than its output rows
  (UNION, DISTINCT, GROUP BY, aggregates, window functions) is read as
  `SELECT ... FROM (<query>) AS _milepost_q WHERE <keyset> ORDER BY <cursor>`.

The SQL that runs is the tree as sqlglot writes it back in the source's dialect; the
schema phase runs it once (a temporary view or table, milepost/query_schema.py), so SQL
the server refuses fails before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import sqlglot
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, SqlglotError

from milepost.errors import ConfigError
from milepost.query_lineage import (
    ColumnsOf,
    TableRef,
    Tracer,
    ctes_of,
    normal_name,
    output_name,
    sources_of,
)

# sqlglot reports SQL it cannot parse fully by a log warning (and falls back to an opaque
# command, which is refused below): the error milepost raises says it once, in context.
logging.getLogger("sqlglot").addHandler(logging.NullHandler())
logging.getLogger("sqlglot").propagate = False

ALIAS = "_milepost_q"
# Placed in the tree where the keyset condition and the ORDER BY go, then replaced in the
# generated text by those fragments (which carry the driver's placeholders).
_SENTINEL = "_milepost_keyset_"
_WHERE = _SENTINEL + "where"
_ORDER = _SENTINEL + "order"


class _MySQL(MySQL):
    """MySQL as sqlglot writes it, but `x REGEXP y` kept as such: sqlglot writes
    REGEXP_LIKE(), which MariaDB does not have."""

    class Generator(MySQL.Generator):
        TRANSFORMS = {
            **MySQL.Generator.TRANSFORMS,
            exp.RegexpLike: lambda self, e: self.binary(e, "REGEXP"),
        }


DIALECTS: dict[str, str | type[MySQL]] = {
    "postgresql": "postgres",
    "mysql": _MySQL,
    "sqlite": "sqlite",
}

# The arguments of a SELECT that a merged rewrite leaves as they are.
_MERGEABLE = {"expressions", "from_", "joins", "where", "with_", "hint"}
_WRAPPING = {
    "distinct": "DISTINCT",
    "group": "GROUP BY",
    "having": "HAVING",
    "qualify": "QUALIFY",
    "windows": "a WINDOW clause",
}
_Refuse = Callable[[str, str], ConfigError]
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter)


@dataclass(frozen=True)
class ParsedQuery:
    """One stream's query, parsed, checked and ready to be read in keyset ranges.

    `columns` (the output columns as the source reflected them) and the expression behind
    each are known once `bind` has been called (milepost/query_schema.py does).
    """

    stream: str
    family: str
    tree: exp.Query  # the query without its ORDER BY
    why_wrapped: str | None
    items: tuple[exp.Expression, ...]
    columns: tuple[str, ...] = ()
    expressions: tuple[exp.Expression | None, ...] = ()

    # --- parsing and refusing ------------------------------------------------------------

    @classmethod
    def parse(cls, sql: str, family: str, stream_name: str) -> ParsedQuery:
        """Parse `sql` in the source's dialect; refuse, naming the stream, what cannot be
        read in keyset batches without losing or repeating rows."""

        def refuse(why: str, hint: str) -> ConfigError:
            return ConfigError(f"Stream '{stream_name}': the query {why}.", hint=hint)

        if _SENTINEL in sql.lower():
            raise refuse(
                f"uses the name {_SENTINEL}..., which milepost reserves for its rewrite",
                "Rename that identifier.",
            )
        try:
            trees = [t for t in sqlglot.parse(sql, read=DIALECTS[family]) if t is not None]
        except SqlglotError as exc:
            raise refuse(
                f"cannot be parsed: {_parse_error(exc)}",
                "Check the SQL; milepost parses it (with sqlglot, in the source's dialect) "
                "to add its keyset condition.",
            ) from None
        if len(trees) != 1:
            raise refuse(
                f"holds {len(trees)} statements; a query stream reads exactly one SELECT",
                "Give each SELECT its own stream.",
            )
        tree = trees[0]
        while isinstance(tree, exp.Subquery) and not tree.alias and not tree.args.get("order"):
            tree = tree.this  # (SELECT ...) reads as SELECT ...
        if not isinstance(tree, exp.Select | exp.SetOperation):
            what = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this)
            raise refuse(
                f"is not a SELECT (it is {what})",
                "A query stream reads the rows of one SELECT; it never writes.",
            )
        _refuse_writes_and_locks(tree, refuse)
        _refuse_positions(tree, refuse)
        tree = tree.copy()
        tree.set("order", None)  # milepost orders by the cursor
        items = tuple(tree.selects)
        _check_names(items, family, refuse)
        return cls(stream_name, family, tree, _why_wrapped(tree), items)

    # --- after reflection ----------------------------------------------------------------

    @property
    def merged(self) -> bool:
        return self.why_wrapped is None

    def bind(self, columns: Sequence[str]) -> ParsedQuery:
        """The query with its output columns as the source named them, each matched to the
        select-list expression behind it (a `*` expands to the columns it stands for)."""
        stars = [i for i, item in enumerate(self.items) if item.is_star]
        n, k = len(columns), len(self.items)
        exprs: list[exp.Expression | None]
        if len(stars) > 1 or (not stars and n != k) or (stars and n < k - 1):
            return dataclasses.replace(
                self,
                columns=tuple(columns),
                expressions=(None,) * n,
                why_wrapped=self.why_wrapped or "its output columns cannot be matched",
            )
        width = n - (k - 1) if stars else 0
        exprs = []
        for item in self.items:
            if item.is_star:
                qualifier = item.args.get("table") if isinstance(item, exp.Column) else None
                for name in columns[len(exprs) : len(exprs) + width]:
                    table = qualifier.copy() if qualifier else None
                    exprs.append(exp.column(name, table=table, quoted=True))
                continue
            expected = output_name(item)
            got = columns[len(exprs)]
            if expected.casefold() != got.casefold():
                raise ConfigError(
                    f"Stream '{self.stream}': the query's output column '{expected}' comes "
                    f"back from the source as '{got}'; each output column needs a name of "
                    "its own.",
                    hint="Name every output column once (with AS).",
                )
            exprs.append(item.this if isinstance(item, exp.Alias) else item)
        return dataclasses.replace(self, columns=tuple(columns), expressions=tuple(exprs))

    def with_cursor(self, cursor: Sequence[str]) -> ParsedQuery:
        """Merged only when every cursor column is a plain column of a table: the keyset
        condition goes into the query's WHERE, which cannot name an output alias."""
        if not self.merged:
            return self
        for name in cursor:
            if self.source_expression(name) is None:
                why = f"its cursor column '{name}' is not a plain column of a table it reads"
                return dataclasses.replace(self, why_wrapped=why)
        return self

    def source_expression(self, output_name: str) -> str | None:
        """The SQL behind an output column of a merged query when it is a plain column
        (`e.created_at` for `e.created_at AS ts`), as written; None otherwise."""
        column = self._column(output_name) if self.merged else None
        if column is None:
            return None
        if not column.table:
            # ORDER BY reads a bare name as an output column first: `SELECT id AS x,
            # other AS id ... ORDER BY id` would order by `other`.
            bare = column.name.casefold()
            if any(
                c.casefold() == bare and c != output_name and self._column(c) is not column
                for c in self.columns
            ):
                return None
        return column.sql(dialect=DIALECTS[self.family])

    def plain_column(self, output_name: str) -> tuple[str | None, str] | None:
        """(qualifier, column name as the server stores it) when the output is a plain
        column, else None."""
        column = self._column(output_name)
        if column is None:
            return None
        return column.table or None, normal_name(column.this, self.family)

    def _column(self, output_name: str) -> exp.Column | None:
        if isinstance(self.tree, exp.SetOperation):
            return None  # another branch may put anything in that column
        try:
            found = self.expressions[self.columns.index(output_name)]
        except (ValueError, IndexError):
            return None
        if isinstance(found, exp.Column) and not found.is_star and found.name:
            return found
        return None

    # --- what the query reads ------------------------------------------------------------

    def table_refs(self) -> list[TableRef]:
        """The tables of the top-level FROM and JOINs (not CTEs, not subqueries)."""
        if not isinstance(self.tree, exp.Select):
            return []
        ctes = ctes_of(self.tree, {})
        refs = sources_of(self.tree, ctes, self.family)
        return [s for _, s, _ in refs if isinstance(s, TableRef)]

    def trace(self, output_name: str, columns_of: ColumnsOf) -> tuple[TableRef, str] | None:
        """The table column an output is, followed through CTEs and subqueries in FROM,
        when that is certain: (the table, outer-joined or not, and the column's name).
        `columns_of` reflects a table (column -> nullable; None when it cannot)."""
        plain = self.plain_column(output_name)
        if plain is None or not isinstance(self.tree, exp.Select):
            return None
        tracer = Tracer(self.family, columns_of)
        return tracer.follow(self.tree, plain[0], plain[1], {}, False, 0)

    def not_null(self, output_name: str, columns_of: ColumnsOf) -> bool:
        """Is this output column certainly never NULL? (A literal, or a NOT NULL table
        column not filled by an outer join, in every branch of a UNION.)"""
        tracer = Tracer(self.family, columns_of)
        if isinstance(self.tree, exp.SetOperation):
            return tracer.not_null(self.tree, self.columns.index(output_name), {}, 0)
        value = self.expressions[self.columns.index(output_name)]
        if value is None or not isinstance(self.tree, exp.Select):
            return False
        return tracer.expression_not_null(self.tree, value, ctes_of(self.tree, {}), 0)

    def unique_by_form(self) -> list[str]:
        """Output columns the rows are unique over by the query's own form: all of them
        after DISTINCT or a UNION, INTERSECT or EXCEPT without ALL; the grouped ones after
        a plain GROUP BY. Empty when the form says nothing."""
        tree = self.tree
        if isinstance(tree, exp.SetOperation):
            return list(self.columns) if tree.args.get("distinct") else []
        if not isinstance(tree, exp.Select):
            return []
        distinct = tree.args.get("distinct")
        if distinct is not None:
            return [] if distinct.args.get("on") else list(self.columns)
        group = tree.args.get("group")
        if _may_return_sets(tree, self.family):
            return []  # e.g. unnest() in the select list: several rows per group
        if group is None or any(v for k, v in group.args.items() if k != "expressions"):
            return []  # none, or ROLLUP / CUBE / GROUPING SETS: several rows per group
        key = []
        for grouped in group.expressions:
            if grouped.is_int and 0 < int(grouped.name) <= len(self.columns):
                key.append(self.columns[int(grouped.name) - 1])
                continue
            same = [
                c
                for c, e in zip(self.columns, self.expressions, strict=True)
                if e is not None and e == grouped
            ]
            if not same:
                return []
            key.append(same[0])
        return key

    def single_table(self) -> TableRef | None:
        """The one table a single SELECT reads (no join, no set operation), if so: its rows
        map one to one onto the query's (or, grouped, fewer), so its key stays unique."""
        tree = self.tree
        if not isinstance(tree, exp.Select) or tree.args.get("joins"):
            return None
        if _may_return_sets(tree, self.family):
            return None  # unnest(tags) AS tag: one row of the table, several of the query
        refs = self.table_refs()
        return refs[0] if len(refs) == 1 else None

    # --- SQL to run ----------------------------------------------------------------------

    def sql(self) -> str:
        """The query as it runs (without its ORDER BY), for the schema phase's view."""
        return self.tree.sql(dialect=DIALECTS[self.family])

    def derived(self, placeholder: str) -> str:
        """`(<query>) AS _milepost_q`: the query as a table, FROM-able anywhere."""
        return f"({self._text(self.tree, placeholder)}) AS {ALIAS}"

    def keyset_columns(self, cursor: Sequence[str], placeholder: str) -> list[str]:
        """The cursor's source expressions, for KeysetSql over a merged query."""
        out = []
        for name in cursor:
            source = self.source_expression(name)
            if source is None:
                raise ValueError(f"cursor column {name!r} has no source expression")
            out.append(_escaped(source, placeholder))
        return out

    def rewrite(
        self,
        projection: Sequence[str] | None,
        where: str,
        order: str,
        tail: str = "",
        placeholder: str = "%s",
    ) -> str:
        """The merged query reading one range: `where` ANDed into its WHERE, ORDER BY
        `order`, then `tail` (e.g. `LIMIT 1 OFFSET %s`). `projection` None keeps the select
        list; otherwise it lists output columns, each selected as its source expression.
        `where` and `order` are SQL over the source expressions (KeysetSql over
        `keyset_columns`), with the driver's placeholders."""
        if not self.merged:
            raise ValueError(f"query of stream {self.stream!r} is wrapped: {self.why_wrapped}")
        tree = self.tree.copy()
        if projection is not None:
            tree.set("expressions", [self._expression(name).copy() for name in projection])
        tree = tree.where(exp.column(_WHERE), append=True, copy=False)
        tree = tree.order_by(exp.column(_ORDER), copy=False)
        text = self._text(tree, placeholder)
        text = text.replace(_WHERE, f"({where})", 1).replace(_ORDER, order, 1)
        return f"{text} {tail}" if tail else text

    def _expression(self, output_name: str) -> exp.Expression:
        found = self.expressions[self.columns.index(output_name)]
        if found is None:
            raise ValueError(f"output column {output_name!r} has no known expression")
        return found

    def _text(self, tree: exp.Expression, placeholder: str) -> str:
        return _escaped(tree.sql(dialect=DIALECTS[self.family]), placeholder)


# A quoted table name, or a user's query (connectors/base.py reads a merged one rewritten).
Relation = Union[str, ParsedQuery]  # noqa: UP007 (a runtime alias, used with isinstance)


def _escaped(sql: str, placeholder: str) -> str:
    """Drivers with %s placeholders read a lone % as the start of one (keyset.verbatim)."""
    return sql.replace("%", "%%") if placeholder == "%s" else sql


def _parse_error(exc: SqlglotError) -> str:
    if isinstance(exc, ParseError) and exc.errors:
        e = exc.errors[0]
        near = (e.get("highlight") or "").strip()
        where = f" near '{near}'" if near else ""
        return f"{e.get('description')}{where} (line {e.get('line')}, column {e.get('col')})"
    text = " ".join(str(exc).split())
    return text[:200] + ("…" if len(text) > 200 else "")


def _refuse_writes_and_locks(tree: exp.Expression, refuse: _Refuse) -> None:
    written = tree.find(*_WRITES)
    if written is not None:
        raise refuse(
            f"writes ({written.key.upper()} inside it)",
            "A query stream only reads; do the writing elsewhere.",
        )
    if tree.args.get("into") is not None:
        raise refuse(
            "is a SELECT ... INTO, which creates a table",
            "Drop the INTO: milepost writes the rows into the destination itself.",
        )
    if tree.find(exp.Lock) is not None:
        raise refuse(
            "locks rows (FOR UPDATE / FOR SHARE)",
            "Drop the locking clause: milepost reads in many short transactions, and a "
            "lock would only block writers for the length of one batch.",
        )


def _refuse_positions(tree: exp.Expression, refuse: _Refuse) -> None:
    """LIMIT, OFFSET and FETCH at the top pick rows by their position in the result."""
    limit = tree.args.get("limit")
    what = None
    if isinstance(limit, exp.Fetch):
        what = "FETCH FIRST"
    elif limit is not None:
        what = "LIMIT"
    elif tree.args.get("offset") is not None:
        what = "OFFSET"
    if what:
        raise refuse(
            f"ends in {what}, which picks rows by their position; milepost reads the query "
            "in batches of its own, and which rows sit at a position changes as rows are "
            "added or removed, so rows would be lost or copied twice",
            f"Remove the {what}: milepost pages the query itself, by its cursor. If you mean "
            f"to copy only those rows, put the query with its {what} in a view and copy the "
            "view as a table.",
        )


def _check_names(items: tuple[exp.Expression, ...], family: str, refuse: _Refuse) -> None:
    """Every output column needs a name of its own: it becomes a destination column."""
    seen: dict[str, str] = {}
    for position, item in enumerate(items, start=1):
        if item.is_star:
            continue
        name = output_name(item)
        if not name:
            shown = item.sql(dialect=DIALECTS[family])
            raise refuse(
                f"has an output column without a name (column {position}: `{shown}`)",
                f"Name it with AS, e.g. `{shown} AS some_name`: it becomes a destination column.",
            )
        ident = item.args.get("alias") if isinstance(item, exp.Alias) else item.this
        key = normal_name(ident, family) if family == "postgresql" else name.casefold()
        if key in seen:
            raise refuse(
                f"has two output columns named '{name}'",
                "Give each output column a name of its own (with AS).",
            )
        seen[key] = name


def _may_return_sets(tree: exp.Select, family: str) -> bool:
    """May the select list turn one row into several? PostgreSQL runs set-returning
    functions there (unnest, generate_series, jsonb_array_elements, a user's function):
    then neither the table's key nor the grouped columns are a key of the query's rows.
    A function sqlglot does not know is taken to be one."""
    if family != "postgresql":
        return False
    sets = (exp.UDTF, exp.GenerateSeries, exp.Anonymous)
    for item in tree.expressions:
        for node in item.walk(prune=lambda n: isinstance(n, exp.Subquery | exp.Query)):
            if isinstance(node, sets):
                return True
    return False


def _why_wrapped(tree: exp.Query) -> str | None:
    """Why a keyset condition cannot go into the query's own WHERE (None: it can)."""
    if isinstance(tree, exp.SetOperation):
        return f"it is a {tree.key.upper()}"
    assert isinstance(tree, exp.Select)
    for arg, what in _WRAPPING.items():
        if tree.args.get(arg):
            return f"it uses {what}"
    for arg, value in tree.args.items():
        if value and arg not in _MERGEABLE:
            return f"it uses {arg.rstrip('_').upper()}"
    scope = [*tree.expressions, tree.args.get("where")]
    for node in scope:
        if node is None:
            continue
        for inner in node.walk(prune=lambda n: isinstance(n, exp.Subquery | exp.Query)):
            if isinstance(inner, exp.Window):
                return "it uses a window function"
            if isinstance(inner, exp.AggFunc):
                return f"it computes an aggregate ({inner.key.upper()})"
    if any(item.is_star for item in tree.expressions) and tree.args.get("joins"):
        return "it selects * over a join"
    return None
