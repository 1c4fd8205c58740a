"""Reflected column types to logical kinds, kinds to destination types, and widening rules.

The reflected types below are the instances SQLAlchemy's reflection returns on
PostgreSQL 15 and MariaDB 10.11 (checked against the real servers), built by hand so
these tests need no server.
"""

from __future__ import annotations

import pytest
import sqlalchemy.types as sa
from sqlalchemy.dialects import mysql, postgresql

from milepost.typemap import Declared, Logical, classify, destination_type, holds

POSTGRES = [
    (postgresql.SMALLINT(), Logical("int16")),
    (postgresql.INTEGER(), Logical("int32")),
    (postgresql.BIGINT(), Logical("int64")),
    (postgresql.NUMERIC(12, 2), Logical("decimal", precision=12, scale=2)),
    (postgresql.NUMERIC(), Logical("decimal")),
    (postgresql.REAL(), Logical("float32")),
    (postgresql.DOUBLE_PRECISION(precision=53), Logical("float64")),
    (postgresql.TEXT(), Logical("text")),
    (postgresql.VARCHAR(40), Logical("varchar", length=40)),
    (postgresql.VARCHAR(), Logical("text")),
    (postgresql.CHAR(5), Logical("varchar", length=5)),
    (postgresql.BYTEA(), Logical("bytes")),
    (postgresql.BOOLEAN(), Logical("bool")),
    (postgresql.DATE(), Logical("date")),
    (postgresql.TIME(), Logical("time")),
    (postgresql.TIMESTAMP(), Logical("timestamp")),
    (postgresql.TIMESTAMP(timezone=True), Logical("timestamptz")),
    (postgresql.JSON(), Logical("json")),
    (postgresql.JSONB(), Logical("jsonb")),
    (postgresql.UUID(), Logical("uuid")),
    (postgresql.ENUM("a", "b", name="e"), Logical("text")),
]

MYSQL = [
    (mysql.TINYINT(display_width=1), Logical("bool")),
    (mysql.TINYINT(display_width=4), Logical("int16")),
    (mysql.SMALLINT(display_width=6), Logical("int16")),
    (mysql.MEDIUMINT(display_width=9), Logical("int32")),
    (mysql.INTEGER(display_width=11), Logical("int32")),
    (mysql.BIGINT(display_width=20), Logical("int64")),
    (mysql.SMALLINT(unsigned=True), Logical("int32")),
    (mysql.MEDIUMINT(unsigned=True), Logical("int64")),
    (mysql.INTEGER(unsigned=True), Logical("int64")),
    (mysql.BIGINT(unsigned=True), Logical("decimal", precision=20, scale=0)),
    (mysql.DECIMAL(12, 2), Logical("decimal", precision=12, scale=2)),
    (mysql.FLOAT(), Logical("float32")),
    (mysql.DOUBLE(), Logical("float64")),
    (mysql.TEXT(), Logical("text")),
    (mysql.LONGTEXT(charset="utf8mb4", collation="utf8mb4_bin"), Logical("text")),
    (mysql.VARCHAR(40), Logical("varchar", length=40)),
    (mysql.CHAR(36), Logical("varchar", length=36)),
    (mysql.LONGBLOB(), Logical("bytes")),
    (mysql.VARBINARY(16), Logical("bytes")),
    (mysql.DATE(), Logical("date")),
    (mysql.TIME(fsp=6), Logical("time")),
    (mysql.DATETIME(fsp=6), Logical("timestamp")),
    (mysql.TIMESTAMP(fsp=6), Logical("timestamp")),
    (mysql.JSON(), Logical("json")),
    (mysql.ENUM("a", "b"), Logical("text")),
    (sa.Uuid(), Logical("uuid")),  # MariaDB 10.7+ UUID reflects as this
]

SQLITE = [
    ("INTEGER", Logical("int64")),
    ("SMALLINT", Logical("int64")),
    ("bigint", Logical("int64")),
    ("NUMERIC(12,2)", Logical("decimal", precision=12, scale=2)),
    ("NUMERIC(12, 2)", Logical("decimal", precision=12, scale=2)),
    ("DECIMAL(10)", Logical("decimal", precision=10, scale=None)),
    ("NUMERIC", Logical("decimal")),
    ("REAL", Logical("float64")),
    ("DOUBLE PRECISION", Logical("float64")),
    ("FLOAT", Logical("float64")),
    ("TEXT", Logical("text")),
    ("CLOB", Logical("text")),
    ("VARCHAR(40)", Logical("varchar", length=40)),
    ("NVARCHAR(10)", Logical("varchar", length=10)),
    ("CHARACTER", Logical("text")),
    ("BLOB", Logical("bytes")),
    ("BOOLEAN", Logical("bool")),
    ("DATE", Logical("date")),
    ("TIME", Logical("time")),
    ("DATETIME", Logical("timestamp")),
    ("TIMESTAMP", Logical("timestamp")),
    ("TIMESTAMPTZ", Logical("timestamptz")),
    ("TIMESTAMP WITH TIME ZONE", Logical("timestamptz")),
    ("JSON", Logical("json")),
    ("UUID", Logical("uuid")),
]


@pytest.mark.parametrize(("reflected", "kind"), POSTGRES, ids=lambda v: repr(v))
def test_postgres_reflected_types_classify(reflected: sa.TypeEngine, kind: Logical) -> None:
    assert classify(reflected) == kind


@pytest.mark.parametrize(("reflected", "kind"), MYSQL, ids=lambda v: repr(v))
def test_mysql_reflected_types_classify(reflected: sa.TypeEngine, kind: Logical) -> None:
    assert classify(reflected) == kind


@pytest.mark.parametrize(("declared", "kind"), SQLITE, ids=lambda v: str(v))
def test_sqlite_declared_names_classify(declared: str, kind: Logical) -> None:
    # SQLAlchemy's reflected type is ignored for SQLite: the declared name is the truth.
    assert classify(sa.NullType(), declared) == kind


UNSUPPORTED = [
    sa.NullType(),  # what PostgreSQL point or xml reflect as
    postgresql.INT4RANGE(),
    postgresql.INTERVAL(),
    postgresql.MONEY(),
    postgresql.INET(),
    postgresql.ARRAY(postgresql.INTEGER()),
    postgresql.BIT(3),
    postgresql.TSVECTOR(),
    postgresql.OID(),
    mysql.YEAR(),
    mysql.BIT(1),
]


@pytest.mark.parametrize("reflected", UNSUPPORTED, ids=lambda v: repr(v))
def test_types_without_a_faithful_kind_are_refused(reflected: sa.TypeEngine) -> None:
    assert classify(reflected) is None


def test_time_with_time_zone_is_refused_not_stripped_of_its_offset() -> None:
    """MySQL TIME has no zone: 12:00+05:00 would arrive as 12:00, a different instant."""
    assert classify(postgresql.TIME(timezone=True)) is None


@pytest.mark.parametrize("declared", ["", "  ", "GEOMETRY"])
def test_sqlite_declared_names_without_a_kind_are_refused(declared: str) -> None:
    assert classify(sa.NullType(), declared) is None


ALL_KINDS = [
    Logical("int16"), Logical("int32"), Logical("int64"), Logical("decimal", precision=12, scale=2),
    Logical("decimal"), Logical("float32"), Logical("float64"), Logical("text"),
    Logical("varchar", length=40), Logical("bytes"), Logical("bool"), Logical("date"),
    Logical("time"), Logical("timestamp"), Logical("timestamptz"), Logical("json"),
    Logical("jsonb"), Logical("uuid"),
]  # fmt: skip


def _reclassify(made: sa.TypeEngine) -> Logical | None:
    return classify(made, made.spec if isinstance(made, Declared) else None)


@pytest.mark.parametrize("family", ["postgresql", "mysql", "sqlite"])
@pytest.mark.parametrize("kind", ALL_KINDS, ids=str)
def test_created_destination_column_holds_its_kind(kind: Logical, family: str) -> None:
    """What milepost creates, reflected back, must hold the source (MySQL's zone-less
    DATETIME and bounded DECIMAL are the conventions, so they are compared as created)."""
    made = destination_type(kind, family)
    back = _reclassify(made)
    assert back is not None
    if (family, kind.kind) == ("mysql", "timestamptz"):
        assert back == Logical("timestamp")
    elif (family, str(kind)) == ("mysql", "decimal"):
        assert back == Logical("decimal", precision=65, scale=30)
    else:
        assert holds(back, kind), (made, back)


# --- widening rules ----------------------------------------------------------------------


def L(kind: str, *args: int | None) -> Logical:
    if kind == "varchar":
        return Logical(kind, length=args[0] if args else None)
    if kind == "decimal":
        return Logical(kind, precision=args[0] if args else None, scale=args[1] if args else None)
    return Logical(kind)


@pytest.mark.parametrize(
    ("dest", "src"),
    [
        (L("int32"), L("int16")),
        (L("int64"), L("int16")),
        (L("int64"), L("int64")),
        (L("decimal", 19, 0), L("int64")),
        (L("decimal", 21, 2), L("int64")),
        (L("decimal"), L("int64")),
        (L("float64"), L("float32")),
        (L("decimal", 14, 2), L("decimal", 12, 2)),
        (L("decimal", 14, 4), L("decimal", 12, 2)),
        (L("decimal"), L("decimal", 12, 2)),
        (L("decimal"), L("decimal")),
        (L("text"), L("varchar", 40)),
        (L("text"), L("json")),
        (L("text"), L("jsonb")),
        (L("text"), L("uuid")),
        (L("varchar", 50), L("varchar", 40)),
        (L("varchar", 40), L("varchar", 40)),
        (L("varchar"), L("varchar", 40)),
        (L("varchar", 36), L("uuid")),
        (L("json"), L("jsonb")),
        (L("jsonb"), L("json")),
        (L("bool"), L("bool")),
        (L("bytes"), L("bytes")),
        (L("timestamptz"), L("timestamptz")),
    ],
    ids=lambda v: str(v),
)
def test_wider_or_equal_destination_holds(dest: Logical, src: Logical) -> None:
    assert holds(dest, src)


@pytest.mark.parametrize(
    ("dest", "src"),
    [
        (L("int16"), L("int32")),
        (L("int32"), L("int64")),
        (L("decimal", 18, 0), L("int64")),
        (L("decimal", 20, 2), L("int64")),
        (L("float32"), L("float64")),
        (L("int64"), L("float64")),
        (L("decimal", 12, 2), L("float64")),
        (L("decimal", 12, 3), L("decimal", 12, 2)),
        (L("decimal", 14, 1), L("decimal", 12, 2)),
        (L("decimal", 65, 30), L("decimal")),
        (L("varchar", 30), L("varchar", 40)),
        (L("varchar", 40), L("text")),
        (L("varchar", 40), L("varchar")),
        (L("varchar", 35), L("uuid")),
        (L("uuid"), L("text")),
        (L("text"), L("int64")),
        (L("text"), L("bytes")),
        (L("bytes"), L("text")),
        (L("bool"), L("int16")),
        (L("int16"), L("bool")),
        (L("timestamp"), L("timestamptz")),
        (L("timestamptz"), L("timestamp")),
        (L("timestamp"), L("date")),
        (L("time"), L("timestamp")),
        (L("json"), L("text")),
    ],
    ids=lambda v: str(v),
)
def test_narrower_or_different_destination_does_not_hold(dest: Logical, src: Logical) -> None:
    assert not holds(dest, src)


def test_logical_kinds_print_with_their_parameters() -> None:
    assert str(L("decimal", 12, 2)) == "decimal(12,2)"
    assert str(L("decimal", 10, None)) == "decimal(10,0)"
    assert str(L("varchar", 40)) == "varchar(40)"
    assert str(L("decimal")) == "decimal"
