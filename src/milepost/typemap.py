"""Column types across engines: reflected type -> logical kind -> destination type.

Same-engine copies keep the reflected type exactly. Across engines every column is
classified into a small set of logical kinds whose values all three engines can hold
faithfully; a type outside that set is refused by name rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy.types as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import UserDefinedType


@dataclass(frozen=True)
class Logical:
    """What a column holds, independent of any engine's spelling."""

    kind: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None

    def __str__(self) -> str:
        if self.kind == "decimal" and self.precision is not None:
            return f"decimal({self.precision},{self.scale or 0})"
        if self.kind == "varchar" and self.length:
            return f"varchar({self.length})"
        return self.kind


class Declared(UserDefinedType):
    """A column type written out verbatim (an exact PostgreSQL type, or SQLite's declared name)."""

    cache_ok = True

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def get_col_spec(self, **kw: object) -> str:
        return self.spec


_INT_ORDER = ["int16", "int32", "int64"]


def classify(col_type: sa.TypeEngine, declared: str | None = None) -> Logical | None:
    """The logical kind of a reflected column, or None when milepost cannot carry it."""
    if declared is not None:
        return _classify_sqlite(declared)
    t = col_type
    if isinstance(t, mysql.TINYINT) and getattr(t, "display_width", None) == 1:
        return Logical("bool")
    if isinstance(t, sa.Boolean):
        return Logical("bool")
    if getattr(t, "unsigned", False) and isinstance(t, sa.Integer):
        if isinstance(t, sa.BigInteger):
            return Logical("decimal", precision=20, scale=0)
        if isinstance(t, mysql.INTEGER | mysql.MEDIUMINT) or type(t) is sa.Integer:
            return Logical("int64")
        return Logical("int32")
    if isinstance(t, sa.BigInteger):
        return Logical("int64")
    if isinstance(t, sa.SmallInteger | mysql.TINYINT):
        return Logical("int16")
    if isinstance(t, sa.Integer):
        return Logical("int32")
    if isinstance(t, sa.Float):
        single = isinstance(t, sa.REAL | sa.FLOAT) and not isinstance(t, sa.Double)
        return Logical("float32" if single else "float64")
    if isinstance(t, sa.Numeric):
        return Logical("decimal", precision=t.precision, scale=t.scale)
    if isinstance(t, postgresql.JSONB):
        return Logical("jsonb")
    if isinstance(t, sa.JSON):
        return Logical("json")
    if isinstance(t, sa.Uuid):
        return Logical("uuid")
    if isinstance(t, sa.Enum):
        return Logical("text")
    if isinstance(t, sa.Text):
        return Logical("text")
    if isinstance(t, sa.String):
        return Logical("varchar", length=t.length) if t.length else Logical("text")
    if isinstance(t, sa._Binary):
        return Logical("bytes")
    if isinstance(t, sa.DateTime):
        return Logical("timestamptz" if t.timezone else "timestamp")
    if isinstance(t, sa.Date):
        return Logical("date")
    if isinstance(t, sa.Time):
        # A zoned time of day (PostgreSQL timetz) has no faithful kind: its offset would go.
        return None if t.timezone else Logical("time")
    return None


def _classify_sqlite(declared: str) -> Logical | None:
    """SQLite keeps the declared type name as written; it is the only type information."""
    d = declared.strip().upper()
    m = re.search(r"\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", d)
    a, b = (int(m.group(1)), int(m.group(2)) if m.group(2) else None) if m else (None, None)
    if not d:
        return None
    if "TIMESTAMPTZ" in d or "WITH TIME ZONE" in d:
        return Logical("timestamptz")
    if "BOOL" in d:
        return Logical("bool")
    if "INT" in d:
        return Logical("int64")
    if "DATETIME" in d or "TIMESTAMP" in d:
        return Logical("timestamp")
    if d.startswith("DATE"):
        return Logical("date")
    if d.startswith("TIME"):
        return Logical("time")
    if "JSON" in d:
        return Logical("json")
    if "UUID" in d:
        return Logical("uuid")
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return Logical("varchar", length=a) if a and "CHAR" in d else Logical("text")
    if "BLOB" in d or "BINARY" in d or "BYTEA" in d:
        return Logical("bytes")
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return Logical("float64")
    if "DEC" in d or "NUMERIC" in d:
        return Logical("decimal", precision=a, scale=b if a is not None else None)
    return None


def destination_type(logical: Logical, family: str) -> sa.TypeEngine:
    """The type that holds `logical` faithfully in a `family` database."""
    k = logical.kind
    if family == "postgresql":
        return _POSTGRES[k](logical)
    if family == "mysql":
        return _MYSQL[k](logical)
    return _SQLITE[k](logical)


def _numeric(lg: Logical) -> sa.TypeEngine:
    return sa.Numeric(lg.precision, lg.scale) if lg.precision else sa.Numeric()


def _mysql_decimal(lg: Logical) -> sa.TypeEngine:
    if lg.precision:
        return mysql.DECIMAL(min(lg.precision, 65), min(lg.scale or 0, 30))
    return mysql.DECIMAL(65, 30)


def _mysql_varchar(lg: Logical) -> sa.TypeEngine:
    return mysql.VARCHAR(lg.length) if lg.length and lg.length <= 16000 else mysql.LONGTEXT()


_POSTGRES = {
    "int16": lambda lg: sa.SmallInteger(),
    "int32": lambda lg: sa.Integer(),
    "int64": lambda lg: sa.BigInteger(),
    "decimal": _numeric,
    "float32": lambda lg: postgresql.REAL(),
    "float64": lambda lg: postgresql.DOUBLE_PRECISION(),
    "text": lambda lg: sa.Text(),
    "varchar": lambda lg: sa.String(lg.length),
    "bytes": lambda lg: postgresql.BYTEA(),
    "bool": lambda lg: sa.Boolean(),
    "date": lambda lg: sa.Date(),
    "time": lambda lg: postgresql.TIME(),
    "timestamp": lambda lg: postgresql.TIMESTAMP(),
    "timestamptz": lambda lg: postgresql.TIMESTAMP(timezone=True),
    "json": lambda lg: postgresql.JSONB(),
    "jsonb": lambda lg: postgresql.JSONB(),
    "uuid": lambda lg: postgresql.UUID(),
}

_MYSQL = {
    "int16": lambda lg: mysql.SMALLINT(),
    "int32": lambda lg: mysql.INTEGER(),
    "int64": lambda lg: mysql.BIGINT(),
    "decimal": _mysql_decimal,
    "float32": lambda lg: mysql.FLOAT(),
    "float64": lambda lg: mysql.DOUBLE(),
    "text": lambda lg: mysql.LONGTEXT(),
    "varchar": _mysql_varchar,
    "bytes": lambda lg: mysql.LONGBLOB(),
    "bool": lambda lg: mysql.BOOLEAN(create_constraint=False),
    "date": lambda lg: mysql.DATE(),
    "time": lambda lg: mysql.TIME(fsp=6),
    "timestamp": lambda lg: mysql.DATETIME(fsp=6),
    "timestamptz": lambda lg: mysql.DATETIME(fsp=6),
    "json": lambda lg: mysql.JSON(),
    "jsonb": lambda lg: mysql.JSON(),
    "uuid": lambda lg: mysql.CHAR(36),
}

_SQLITE = {
    "int16": lambda lg: Declared("SMALLINT"),
    "int32": lambda lg: Declared("INTEGER"),
    "int64": lambda lg: Declared("BIGINT"),
    "decimal": lambda lg: Declared(
        f"NUMERIC({lg.precision}, {lg.scale or 0})" if lg.precision else "NUMERIC"
    ),
    "float32": lambda lg: Declared("REAL"),
    "float64": lambda lg: Declared("DOUBLE"),
    "text": lambda lg: Declared("TEXT"),
    "varchar": lambda lg: Declared(f"VARCHAR({lg.length})" if lg.length else "TEXT"),
    "bytes": lambda lg: Declared("BLOB"),
    "bool": lambda lg: Declared("BOOLEAN"),
    "date": lambda lg: Declared("DATE"),
    "time": lambda lg: Declared("TIME"),
    "timestamp": lambda lg: Declared("DATETIME"),
    "timestamptz": lambda lg: Declared("TIMESTAMPTZ"),
    "json": lambda lg: Declared("JSON"),
    "jsonb": lambda lg: Declared("JSON"),
    "uuid": lambda lg: Declared("UUID"),
}


def holds(dest: Logical, src: Logical) -> bool:
    """Can an existing destination column of kind `dest` hold every value of `src`?"""
    if dest == src or dest.kind == src.kind == "text":
        return True
    s, d = src.kind, dest.kind
    if s in _INT_ORDER and d in _INT_ORDER:
        return _INT_ORDER.index(d) >= _INT_ORDER.index(s)
    if s in _INT_ORDER and d == "decimal":
        return dest.precision is None or (dest.precision - (dest.scale or 0)) >= 19
    if s == "float32" and d == "float64":
        return True
    if s == "decimal" and d == "decimal":
        if dest.precision is None:
            return True
        if src.precision is None:
            return False
        return (dest.scale or 0) >= (src.scale or 0) and (dest.precision - (dest.scale or 0)) >= (
            src.precision - (src.scale or 0)
        )
    if d == "text" and s in {"varchar", "json", "jsonb", "uuid"}:
        return True
    if d == "varchar" and s == "varchar":
        return dest.length is None or (src.length is not None and dest.length >= src.length)
    if d == "varchar" and s == "uuid":
        return dest.length is None or dest.length >= 36
    if {s, d} <= {"json", "jsonb"}:
        return True
    return d == "bool" and s == "bool"
