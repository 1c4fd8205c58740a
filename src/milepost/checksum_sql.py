"""Row checksums computed inside the database: no row leaves the server, only two numbers.

Two ways, both summing a 64-bit hash per row (modulo 2**64, so order does not matter
and a doubled row counts twice):

- **native** (PostgreSQL on both sides, identical column types): each column is
  hashed by its type's own 64-bit hash function (the one hash indexes use, looked up
  in the catalog), and the column hashes are chained through `hashint8extended`, so
  moving a value to another column or row changes the result. No text is formatted,
  which is what makes it cheap (bench/results/verify.md).
- **canonical text** (every other pair): each engine writes
  every row as the same text (numbers as digits, timestamps as UTC
  `YYYY-MM-DD HH:MM:SS.ffffff`, bytes as hex, text length-prefixed, JSON as stored)
  and hashes it with MD5, of which 64 bits are kept. Equal text means equal values;
  text that differs where the values are equal (JSON with another key order, a float
  written in another notation) is settled by the client-side checksum
  (`milepost.checksum`), which compares by value.

SQLite writes the canonical text in SQL too; MD5 is a Python function registered on
the connection (SQLite is embedded: its rows never cross a network either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from milepost.typemap import Logical

SEPARATOR_PG = "chr(31)"
SEPARATOR_MYSQL = "CHAR(31 USING utf8mb4)"

_NUMBERS = {"int16", "int32", "int64", "decimal"}
_FLOATS = {"float32", "float64"}
_TEXTS = {"text", "varchar", "uuid"}


# Extended hash functions whose equal results mean equal values (up to the type's own
# equality where noted in docs/verify.md: numeric scale, -0.0 and 0.0).
EXACT_HASHES = {
    "hashint2extended",
    "hashint4extended",
    "hashint8extended",
    "hash_numeric_extended",
    "hashfloat4extended",
    "hashfloat8extended",
    "timestamp_hash_extended",
    "time_hash_extended",
    "uuid_hash_extended",
    "jsonb_hash_extended",
    "hashcharextended",
    "hashenumextended",
    "hashoidextended",
}


def native_row_hash(conn: Any, table: str, columns: Sequence[str]) -> str:
    """A PostgreSQL expression: each column through its type's extended hash, chained."""
    functions = _hash_functions(conn, table)
    h = "0::bigint"
    for position, name in enumerate(columns):
        col = conn.quote(name)
        function, arg_type, column_type, callable_ = functions[name]
        if function == "hashtextextended":
            # Compared byte for byte, whatever the column's collation: a nondeterministic
            # one would hash 'Hello' and 'hello' alike.
            value = f'hashtextextended({col}::text COLLATE "C", 0)'
        elif function not in EXACT_HASHES or not (callable_ or arg_type.startswith("any")):
            # A type without a hash opclass (json, point, ...), one whose equality is looser
            # than identity (interval: '1 mon' = '30 days'; citext), or whose hash function
            # takes a type SQL cannot cast to (date: integer, bytea: internal): its text.
            value = f'hashtextextended({col}::text COLLATE "C", 0)'
        elif arg_type != column_type and not arg_type.startswith("any"):
            value = f"{function}({col}::{arg_type}, 0)"
        else:
            value = f"{function}({col}, 0)"
        # NULL hashes to its own constant, different for each column position.
        h = f"hashint8extended(COALESCE({value}, {-1 - position}), {h})"
    return h


def _hash_functions(conn: Any, table: str) -> dict[str, tuple[str | None, str, str, bool]]:
    """Per column: its type's extended hash function (or None), that function's argument
    type, the column's own (base) type, and whether SQL can pass the column to it."""
    rows = conn.query(
        """
        SELECT a.attname, p.amproc::regproc::text,
               format_type(pr.proargtypes[0], NULL), format_type(base.oid, NULL),
               pr.proargtypes[0] = base.oid OR EXISTS (
                   SELECT 1 FROM pg_cast c
                   WHERE c.castsource = base.oid AND c.casttarget = pr.proargtypes[0])
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_type base ON base.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype
                                             ELSE t.oid END
        LEFT JOIN pg_opclass o ON o.opcintype = base.oid AND o.opcdefault
             AND o.opcmethod = (SELECT oid FROM pg_am WHERE amname = 'hash')
        LEFT JOIN pg_amproc p ON p.amprocfamily = o.opcfamily AND p.amprocnum = 2
             AND p.amproclefttype = o.opcintype AND p.amprocrighttype = o.opcintype
        LEFT JOIN pg_proc pr ON pr.oid = p.amproc
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        """,
        [conn.name_value(table)],
    )
    return {name: (fn, arg or "", own, bool(ok)) for name, fn, arg, own, ok in rows}


def client_select(conn: Any, column: str, logical: Logical | None) -> str:
    """How the client reads a column to hash it by value, where the driver's own reading
    would lose what tells two values apart: MySQL sends a FLOAT as 6 digits (read its
    exact double); psycopg cannot load 'infinity' or BC timestamps, and reads an interval
    or a type milepost has no kind for approximately (read their text)."""
    col = conn.quote(column)
    kind = logical.kind if logical else None
    if conn.family == "mysql" and kind == "float32":
        return f"CAST({col} AS DOUBLE)"
    if conn.family == "postgresql" and kind in (None, "date", "timestamp", "timestamptz"):
        return f"{col}::text"
    return col


def canonical_text(conn: Any, columns: Sequence[str], kinds: Sequence[Logical | None]) -> str:
    """An expression that writes a row as its canonical text, in this engine's SQL."""
    render = {"postgresql": _render_pg, "mysql": _render_mysql, "sqlite": _render_sqlite}[
        conn.family
    ]
    parts = [render(conn.quote(c), k) for c, k in zip(columns, kinds, strict=True)]
    if conn.family == "mysql":
        return f"CONCAT({f', {SEPARATOR_MYSQL}, '.join(parts)})"
    separator = SEPARATOR_PG if conn.family == "postgresql" else "char(31)"
    return f" || {separator} || ".join(parts)


def text_sum_query(conn: Any, table: str, text: str, where: str) -> str:
    """SELECT the count and the sum of 64 bits of the MD5 of each row's `text`, exactly.

    SQLite has neither MD5 nor a 64-bit sum that cannot overflow: an aggregate written
    in Python (`milepost_md5_sum`, registered on the connection) does both, once per row.
    """
    if conn.family == "postgresql":
        h = f"('x' || substr(md5({text}), 1, 16))::bit(64)::bigint"
        return f"SELECT count(*), SUM({h}) FROM {table} WHERE {where}"
    if conn.family == "mysql":
        h = f"CAST(CONV(SUBSTR(MD5({text}), 1, 16), 16, 10) AS UNSIGNED)"
        return f"SELECT count(*), SUM({h}) FROM {table} WHERE {where}"
    conn.add_md5_sum()
    # As a BLOB the text reaches Python as its UTF-8 bytes, with no decoding and encoding.
    return f"SELECT count(*), milepost_md5_sum(CAST({text} AS BLOB)) FROM {table} WHERE {where}"


def _render_pg(col: str, logical: Logical | None) -> str:
    kind = logical.kind if logical else "text"
    if kind in _NUMBERS:
        text = f"{col}::text"
    elif kind in _FLOATS:
        text = f"{col}::float8::text"
    elif kind == "bool":
        # NULL falls through to the marker below, never to '0'.
        text = f"CASE WHEN {col} THEN '1' WHEN NOT {col} THEN '0' END"
    elif kind == "bytes":
        text = f"encode({col}, 'hex')"
    elif kind == "date":
        text = _finite_ad(col, f"to_char({col}, 'YYYY-MM-DD')", "'0001-01-01'::date")
    elif kind == "time":
        text = f"to_char({col}::interval, 'HH24:MI:SS.US')"
    elif kind in ("timestamp", "timestamptz"):
        # The session runs in UTC: a timestamptz is written as its UTC wall time.
        formatted = f"to_char({col}, 'YYYY-MM-DD HH24:MI:SS.US')"
        text = _finite_ad(col, formatted, "'0001-01-01 00:00:00'")
    elif kind in ("json", "jsonb"):
        text = f"{col}::text"  # valid JSON holds no raw control character: no prefix needed
    else:
        text = f"length({col}::text) || ':' || {col}::text"
    return f"COALESCE({text}, 'N')"


def _finite_ad(col: str, formatted: str, first_day: str) -> str:
    """to_char gives NULL for ±infinity and drops the era of a BC date: those values are
    written in PostgreSQL's own spelling instead, which no other engine produces."""
    return (
        f"CASE WHEN isfinite({col}) AND {col} >= {first_day} THEN {formatted} ELSE {col}::text END"
    )


def _render_mysql(col: str, logical: Logical | None) -> str:
    kind = logical.kind if logical else "text"
    # Every statement is sent with bound parameters (ConnectionBase.bind): % is doubled.
    if kind in _NUMBERS or kind == "bool":
        text = f"CAST({col} AS CHAR)"
    elif kind in _FLOATS:
        text = f"CAST(CAST({col} AS DOUBLE) AS CHAR)"
    elif kind == "bytes":
        text = f"LOWER(HEX({col}))"
    elif kind == "date":
        text = f"DATE_FORMAT({col}, '%%Y-%%m-%%d')"
    elif kind == "time":
        text = f"TIME_FORMAT({col}, '%%H:%%i:%%s.%%f')"
    elif kind in ("timestamp", "timestamptz"):
        text = f"DATE_FORMAT({col}, '%%Y-%%m-%%d %%H:%%i:%%s.%%f')"
    elif kind in ("json", "jsonb"):
        text = f"CAST({col} AS CHAR)"
    else:
        text = f"CONCAT(CHAR_LENGTH({col}), ':', {col})"
    return f"COALESCE({text}, 'N')"


def _render_sqlite(col: str, logical: Logical | None) -> str:
    """SQLite holds what milepost (or another writer) stored: integers, REALs, ISO text.

    Each rendering is injective (two different stored values never give the same text),
    so equal text still means equal values; where it cannot match the other engine's
    (a decimal without a declared scale, a float PostgreSQL writes shorter, a time zone
    other than UTC), the range is settled by value on the client.
    """
    kind = logical.kind if logical else "text"
    if kind in ("int16", "int32", "int64", "bool"):
        text = f"CAST({col} AS TEXT)"
    elif kind == "decimal" and logical is not None and logical.precision is not None:
        # At the declared scale (as the other engines write it) only when that is the
        # stored value exactly: 0.125 in a scale-2 column is not written as 0.13.
        at_scale = f"printf('%.{logical.scale or 0}f', {col})"
        text = (
            f"CASE WHEN CAST({at_scale} AS REAL) = {col} THEN {at_scale} "
            f"ELSE printf('%!.17g', {col}) END"
        )
    elif kind in ("decimal", *_FLOATS):
        text = f"printf('%!.17g', {col})"
    elif kind == "bytes":
        text = f"lower(hex({col}))"
    elif kind in ("date", "json", "jsonb"):
        text = f"CAST({col} AS TEXT)"
    elif kind in ("time", "timestamp", "timestamptz"):
        # ISO text as milepost (or a COPY export) stores it: a UTC offset spelled +00:00,
        # +00 or Z is dropped, and the fraction padded to microseconds. Text in another
        # form (another offset, a 'T') renders differently from the other engine's, and
        # the range is then settled by value.
        bare = (
            f"CASE WHEN substr({col}, -6) = '+00:00' THEN substr({col}, 1, length({col}) - 6) "
            f"WHEN substr({col}, -3) = '+00' THEN substr({col}, 1, length({col}) - 3) "
            f"WHEN substr({col}, -1) = 'Z' THEN substr({col}, 1, length({col}) - 1) "
            f"ELSE CAST({col} AS TEXT) END"
        )
        whole = 8 if kind == "time" else 19  # HH:MM:SS, or YYYY-MM-DD HH:MM:SS
        text = (
            f"CASE WHEN {col} IS NULL THEN NULL ELSE substr({bare}, 1, {whole}) || '.' || "
            f"substr(substr({bare}, {whole + 2}) || '000000', 1, 6) END"
        )
    else:
        text = f"length({col}) || ':' || {col}"
    return f"COALESCE({text}, 'N')"
