"""Every column type the issue names survives a copy between every pair of engines.

Each source engine gets its own native DDL. After the copy the destination is read
back with a plain driver and each value is normalised to its *meaning* before it is
compared, because drivers differ in representation, not in content:

- MySQL/MariaDB and SQLite return booleans as 0/1; SQLite keeps dates, times and
  timestamps as ISO text, decimals as REAL (NUMERIC affinity) and UUIDs as text;
  MySQL returns TIME as a timedelta and JSON as text; PostgreSQL returns jsonb parsed.
- A timestamp *with* time zone means an instant: PostgreSQL's timestamptz, MySQL's
  DATETIME(6) holding UTC (the convention; MySQL has no zoned type), SQLite's
  TIMESTAMPTZ text with an offset. A naive value read from a UTC-convention column
  is therefore read as UTC.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import milepost
from conftest import Database

COLUMNS = [
    "id", "i16", "i32", "i64", "amount", "f64", "txt", "vc", "bin",
    "flag", "d", "t", "ts", "tstz", "doc", "uid",
]  # fmt: skip

DDL = {
    "postgresql": """
        CREATE TABLE types (
            id integer PRIMARY KEY, i16 smallint, i32 integer, i64 bigint,
            amount numeric(12,2), f64 double precision, txt text, vc varchar(40), bin bytea,
            flag boolean, d date, t time, ts timestamp, tstz timestamptz, doc jsonb, uid uuid)
    """,
    "mysql": """
        CREATE TABLE types (
            id INT PRIMARY KEY, i16 SMALLINT, i32 INT, i64 BIGINT,
            amount DECIMAL(12,2), f64 DOUBLE, txt TEXT, vc VARCHAR(40), bin LONGBLOB,
            flag BOOLEAN, d DATE, t TIME(6), ts DATETIME(6), tstz DATETIME(6), doc JSON,
            uid UUID)
    """,
    "sqlite": """
        CREATE TABLE types (
            id INTEGER PRIMARY KEY, i16 SMALLINT, i32 INTEGER, i64 BIGINT,
            amount NUMERIC(12,2), f64 DOUBLE PRECISION, txt TEXT, vc VARCHAR(40), bin BLOB,
            flag BOOLEAN, d DATE, t TIME, ts TIMESTAMP, tstz TIMESTAMPTZ, doc JSON, uid UUID)
    """,
}

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
PST = dt.timezone(dt.timedelta(hours=-8))
TRICKY_TEXT = "tab\there\nnewline\rcr \\ backslash \\N \\. \\t end"

ROWS: list[tuple[Any, ...]] = [
    (
        1, -32768, -2147483648, -9223372036854775808, Decimal("0.10"), 0.1,
        "emoji 🎉🧪 CJK 日本語中文 combining e\u0301 a\u0308", "Ünïcode ✓",
        b"\x00\xff\x00abc\xff", True,
        dt.date(2024, 2, 29), dt.time(23, 59, 59, 999999),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=IST),
        {"a": {"b": [1, 2.5, None, True]}, "ü": "日本語 🎉", "esc": "t\tn\nq\"b\\"},
        uuid.UUID("12345678-1234-5678-9abc-def012345678"),
    ),
    (
        2, 32767, 2147483647, 9223372036854775807, Decimal("-12345678.90"), 1e-300,
        TRICKY_TEXT, "a\tb\nc\rd\\e", bytes(range(256)), False,
        dt.date(1970, 1, 1), dt.time(0, 0, 0, 1),
        dt.datetime(1999, 12, 31, 0, 0, 0, 1),
        dt.datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=PST),
        [{"deep": {"er": {"est": []}}}, "x", 0],
        uuid.UUID("ffffffff-0000-4000-8000-000000000001"),
    ),
    (
        3, 0, 0, 0, Decimal("9999999999.99"), 1.7976931348623157e308,
        "", "", b"", True,
        dt.date(9999, 12, 31), dt.time(12, 0),
        dt.datetime(2038, 1, 19, 3, 14, 8),
        dt.datetime(2038, 1, 19, 3, 14, 8, tzinfo=dt.UTC),
        {}, uuid.UUID(int=0),
    ),
    (
        4, 1, 2, 3, Decimal("0.00"), 0.30000000000000004,
        "x", "y", b"\\", False,
        dt.date(2000, 1, 1), dt.time(1, 2, 3, 4),
        dt.datetime(2000, 1, 1, 1, 2, 3, 4),
        dt.datetime(2000, 1, 1, 1, 2, 3, 4, tzinfo=dt.UTC),
        "just a string", uuid.UUID(int=2**128 - 1),
    ),
    (5, *([None] * (len(COLUMNS) - 1))),
]  # fmt: skip


def _source_param(family: str, col: str, value: Any) -> Any:
    """A Python value as each engine's own client would insert it."""
    if value is None:
        return None
    if col == "doc":
        return json.dumps(value, ensure_ascii=False)
    if family == "postgresql":
        return value
    if col == "tstz" and family == "mysql":
        return value.astimezone(dt.UTC).replace(tzinfo=None)  # DATETIME(6) holds UTC
    if family == "mysql":
        return str(value) if col == "uid" else value
    if col in ("amount", "d", "t", "ts", "tstz", "uid"):
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    if col == "flag":
        return int(value)
    return value


def fill_source(db: Database) -> None:
    db.script(DDL[db.family])
    marks = "?" if db.family == "sqlite" else "%s"
    doc_mark = "%s::jsonb" if db.family == "postgresql" else marks
    values = ", ".join(doc_mark if c == "doc" else marks for c in COLUMNS)
    for row in ROWS:
        params = tuple(_source_param(db.family, c, v) for c, v in zip(COLUMNS, row, strict=True))
        db.sql(f"INSERT INTO types ({', '.join(COLUMNS)}) VALUES ({values})", params)


def _utc(value: dt.datetime) -> dt.datetime:
    """An instant; naive values come from UTC-convention columns."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def select_list(family: str) -> str:
    """Every column; JSON as its text, since psycopg would parse jsonb but not a text column."""
    doc = "doc::text" if family == "postgresql" else "doc"
    return ", ".join(doc if c == "doc" else c for c in COLUMNS)


def meaning(col: str, value: Any) -> Any:
    """What a value read back from any engine means, in one Python representation."""
    if value is None:
        return None
    if col == "amount":
        return Decimal(repr(value) if isinstance(value, float) else str(value)).quantize(
            Decimal("0.01")
        )
    if col == "flag":
        return value if isinstance(value, bool) else {0: False, 1: True}[value]
    if col == "bin":
        return bytes(value)
    if col == "d":
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
    if col == "t":
        if isinstance(value, dt.timedelta):
            return (dt.datetime.min + value).time()
        return value if isinstance(value, dt.time) else dt.time.fromisoformat(value)
    if col in ("ts", "tstz"):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return _utc(value) if col == "tstz" else value
    if col == "doc":
        return json.loads(value)  # read back as text: see select_list
    if col == "uid":
        return uuid.UUID(str(value))
    return value


# Destination type spellings, by logical kind; see typemap.destination_type.
SPELLING = {
    "postgresql": {
        "int16": "smallint", "int32": "integer", "int64": "bigint", "decimal": "numeric(12,2)",
        "float64": "double precision", "text": "text", "varchar": "character varying(40)",
        "bytes": "bytea", "bool": "boolean", "date": "date",
        "time": "time without time zone", "timestamp": "timestamp without time zone",
        "timestamptz": "timestamp with time zone", "json": "jsonb", "uuid": "uuid",
    },
    "mysql": {
        "int16": "smallint(6)", "int32": "int(11)", "int64": "bigint(20)",
        "decimal": "decimal(12,2)", "float64": "double", "text": "longtext",
        "varchar": "varchar(40)", "bytes": "longblob", "bool": "tinyint(1)", "date": "date",
        "time": "time(6)", "timestamp": "datetime(6)", "timestamptz": "datetime(6)",
        "json": "longtext", "uuid": "char(36)",
    },
    "sqlite": {
        "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT", "decimal": "NUMERIC(12, 2)",
        "float64": "DOUBLE", "text": "TEXT", "varchar": "VARCHAR(40)", "bytes": "BLOB",
        "bool": "BOOLEAN", "date": "DATE", "time": "TIME", "timestamp": "DATETIME",
        "timestamptz": "TIMESTAMPTZ", "json": "JSON", "uuid": "UUID",
    },
}  # fmt: skip

KINDS = {
    "id": "int32", "i16": "int16", "i32": "int32", "i64": "int64", "amount": "decimal",
    "f64": "float64", "txt": "text", "vc": "varchar", "bin": "bytes", "flag": "bool",
    "d": "date", "t": "time", "ts": "timestamp", "tstz": "timestamptz", "doc": "json",
    "uid": "uuid",
}  # fmt: skip


def source_kinds(family: str) -> dict[str, str]:
    """What each source column is known to hold, given what its engine can declare."""
    kinds = dict(KINDS)
    if family == "sqlite":  # SQLite's INTEGER affinity has one width
        kinds.update(id="int64", i16="int64", i32="int64")
    if family == "mysql":
        # DATETIME(6) carries no zone. (MariaDB's JSON is LONGTEXT with a CHECK, which
        # milepost reads to know it holds JSON.)
        kinds.update(tstz="timestamp")
    return kinds


def column_types(db: Database, table: str = "types") -> dict[str, str]:
    if db.family == "postgresql":
        rows = db.sql(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
    elif db.family == "mysql":
        rows = db.sql(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        )
    else:
        rows = [(r[1], r[2]) for r in db.sql(f"PRAGMA table_info({table})")]
    return dict(rows)


def copy(source: Database, dest: Database, table: str, batch_size: int = 2) -> None:
    pipeline = milepost.build_pipeline(
        {
            "name": "types",
            "source": {"url": source.url},
            "destination": {"url": dest.url},
            "streams": [{"table": table}],
            "batch_size": batch_size,
        }
    )
    assert milepost.run(pipeline).status == "done"


def test_every_type_round_trips_by_meaning_into_a_faithful_column(
    source_db: Database, dest_db: Database
) -> None:
    fill_source(source_db)
    copy(source_db, dest_db, "types")

    if source_db.family == dest_db.family:
        expected = column_types(source_db)  # same engine: the exact declared type
    else:
        spelling = SPELLING[dest_db.family]
        expected = {c: spelling[k] for c, k in source_kinds(source_db.family).items()}
    assert column_types(dest_db) == expected

    got = dest_db.sql(f"SELECT {select_list(dest_db.family)} FROM types ORDER BY id")
    assert len(got) == len(ROWS)
    for want_row, got_row in zip(ROWS, got, strict=True):
        for col, want, have in zip(COLUMNS, want_row, got_row, strict=True):
            expected = want if col == "doc" else meaning(col, want)
            assert meaning(col, have) == expected, (want_row[0], col, have)


# --- awkward names ---------------------------------------------------------------------

AWKWARD_TABLE = 'order items "x"'
AWKWARD_COLUMNS = ["select", "from", "Ünïcode col", 'a"b', "back`tick"]


def _q(family: str, name: str) -> str:
    if family == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def test_awkward_table_and_column_names_copy(source_db: Database, dest_db: Database) -> None:
    f = source_db.family
    q = [_q(f, c) for c in AWKWARD_COLUMNS]
    cols = ", ".join(q)
    source_db.sql(
        f"CREATE TABLE {_q(f, AWKWARD_TABLE)} ({q[0]} INTEGER PRIMARY KEY, {q[1]} VARCHAR(20), "
        f"{q[2]} VARCHAR(20), {q[3]} INTEGER, {q[4]} VARCHAR(20))"
    )
    rows = [(i, f"from {i}", f"ü{i}", i * 10, f"`{i}`") for i in range(1, 6)]
    mark = "?" if f == "sqlite" else "%s"
    for row in rows:
        source_db.sql(
            f"INSERT INTO {_q(f, AWKWARD_TABLE)} ({cols}) VALUES ({', '.join([mark] * 5)})", row
        )

    copy(source_db, dest_db, AWKWARD_TABLE)

    d = dest_db.family
    got = dest_db.sql(
        f"SELECT {', '.join(_q(d, c) for c in AWKWARD_COLUMNS)} FROM {_q(d, AWKWARD_TABLE)} "
        f"ORDER BY {_q(d, 'select')}"
    )
    assert [tuple(r) for r in got] == rows


PERCENT_TABLE = "50% off {x}"
PERCENT_COLUMNS = ["id", "pct%s", "{b}"]


def test_percent_signs_and_braces_in_names_copy(source_db: Database, dest_db: Database) -> None:
    f = source_db.family
    source_db.sql(
        f"CREATE TABLE {_q(f, PERCENT_TABLE)} ({_q(f, 'id')} INTEGER PRIMARY KEY, "
        f"{_q(f, 'pct%s')} INTEGER, {_q(f, '{b}')} INTEGER)"
    )
    source_db.sql(f"INSERT INTO {_q(f, PERCENT_TABLE)} VALUES (1, 2, 3)")  # no parameters

    copy(source_db, dest_db, PERCENT_TABLE)

    d = dest_db.family
    cols = ", ".join(_q(d, c) for c in PERCENT_COLUMNS)
    assert dest_db.sql(f"SELECT {cols} FROM {_q(d, PERCENT_TABLE)}") == [(1, 2, 3)]
