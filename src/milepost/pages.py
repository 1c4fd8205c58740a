"""Page sources: what an HTTP resource or a Python generator hands over, and how it lands.

A page source has no keyset to read ranges of. Instead, given the state recorded after
its last committed page (None at first), it yields one `Page` at a time: the rows (tuples
in the stream's column order), the state after them, and whether the resource is done.

`copy_resource` is the guarantee for such sources, the counterpart of copier.py: a page's
rows, its resource's new state (resource_ledger) and its stream's chunk row (ledger)
commit in one destination transaction. A crash before the commit leaves none of them;
after it, all. The next run asks the source for the pages after the recorded state, so
nothing is lost and nothing is written twice.

`RowShape` turns records (JSON objects, or a generator's dicts and tuples) into rows of
the declared column types (`columns:`), so each engine receives values it can store.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from milepost import ledger, resource_ledger
from milepost.copier import BatchDone
from milepost.crash import crash_point
from milepost.errors import CopyFailed, LeaseLost
from milepost.write_modes import write_rows


@dataclass
class Page:
    """One page of a resource: rows in column order, and where the next page starts."""

    rows: list[tuple[Any, ...]]
    state: dict[str, Any] | None
    final: bool
    # With the final page of an incremental resource: what the next run starts after.
    high_water: dict[str, Any] | None = None
    # Shown in errors: "page 5", "the page after cursor 'abc'".
    label: str = ""


class PageSource(Protocol):
    """A resource that can be read page by page from a recorded state."""

    def pages(self, state: dict[str, Any] | None) -> Iterator[Page]: ...


@dataclass(frozen=True)
class Target:
    """Where a page stream's rows go, and how."""

    stream: str  # the destination table (unquoted) and the stream's name
    chunk: int
    columns: list[str]
    write: str
    key: list[str] | None


def copy_resource(
    dst: Any,
    lease: ledger.Lease,
    target: Target,
    position: int,
    resource: str,
    pages: Iterator[Page],
    stop: threading.Event,
    on_page: Callable[[BatchDone], None],
    *,
    last: bool,
) -> bool:
    """Copy the pages of one resource. True when it is complete, False when asked to stop.

    `last`: this is the stream's last resource, so its final page completes the stream's
    chunk in the same transaction."""
    for page in pages:
        try:
            with dst.transaction():
                rows = write_rows(
                    dst, target.stream, target.columns, page.rows, target.write, target.key
                )
                crash_point("pages.before_commit")
                resource_ledger.advance(
                    dst,
                    lease,
                    target.stream,
                    position,
                    page.state,
                    rows,
                    page.final,
                    page.high_water,
                )
                ledger.advance(
                    dst, lease, target.stream, target.chunk, None, rows, page.final and last
                )
        except LeaseLost:
            raise
        except Exception as exc:
            raise CopyFailed(
                f"Stream '{target.stream}', resource {resource}: {page.label or 'a page'} "
                f"could not be written: {_reason(exc)}",
                hint="Every page before it is committed; fix the cause and run again to "
                "continue from there.",
            ) from exc
        crash_point("pages.after_commit")
        on_page(BatchDone(target.stream, target.chunk, rows, None, page.final and last))
        if page.final:
            return True
        if stop.is_set():
            return False
    raise CopyFailed(
        f"Stream '{target.stream}', resource {resource}: the source ended without a final page."
    )


def finish_empty(
    dst: Any, lease: ledger.Lease, target: Target, on_page: Callable[[BatchDone], None]
) -> None:
    """A stream with nothing to read (a parent without records): its chunk is done."""
    with dst.transaction():
        ledger.advance(dst, lease, target.stream, target.chunk, None, 0, True)
    on_page(BatchDone(target.stream, target.chunk, 0, None, True))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())[:500]


# --- records to rows -------------------------------------------------------------------


class BadValue(CopyFailed):
    """A record does not fit the declared columns: retrying would read the same value."""

    final = True


def _integer(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    raise ValueError(f"not an integer: {v!r}")


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    return float(v)


def _numeric(v: Any) -> Decimal:
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    try:
        # Through str: a float 0.1 is the decimal the API wrote, not its binary neighbour.
        return v if isinstance(v, Decimal) else Decimal(str(v))
    except InvalidOperation:
        raise ValueError(f"not a number: {v!r}") from None


def _text(v: Any) -> str:
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


_TRUTH = {"true": True, "false": False, "1": True, "0": False, "t": True, "f": False}


def _boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUTH:
        return _TRUTH[v.strip().lower()]
    raise ValueError(f"not a boolean: {v!r}")


def _date(v: Any) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    return dt.date.fromisoformat(str(v))


def _timestamp(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v.replace(tzinfo=None) if v.tzinfo else v
    value = dt.datetime.fromisoformat(str(v))
    # A zone given to a zoneless column: its wall time in UTC, never the local clock's.
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def _timestamptz(v: Any) -> dt.datetime:
    value = v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(str(v))
    # A time without a zone is read as UTC: APIs that omit the zone almost always mean it.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _json(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def _uuid(v: Any) -> str:
    return str(v if isinstance(v, uuid.UUID) else uuid.UUID(str(v)))


CONVERT: dict[str, Callable[[Any], Any]] = {
    "integer": _integer,
    "bigint": _integer,
    "float": _float,
    "numeric": _numeric,
    "text": _text,
    "boolean": _boolean,
    "date": _date,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
    "json": _json,
    "uuid": _uuid,
}

# What a declared type compares by, for the incremental cursor's largest value.
ORDER: dict[str, Callable[[Any], Any]] = {
    **CONVERT,
    "text": str,
    "json": _json,
    "uuid": _uuid,
}


class RowShape:
    """The declared columns of a page stream, and records turned into rows of them."""

    def __init__(self, stream: str, columns: Mapping[str, str]) -> None:
        self.stream = stream
        self.columns = list(columns)
        self.types = dict(columns)
        self._convert = [(c, CONVERT[self.types[c]]) for c in self.columns]

    def from_record(self, record: Any, where: str) -> tuple[Any, ...]:
        """A JSON object's fields by column name; a missing field or null is NULL."""
        if not isinstance(record, Mapping):
            raise BadValue(
                f"Stream '{self.stream}', {where}: a record is {type(record).__name__}, "
                "not an object"
            )
        return tuple(self._value(c, f, record.get(c), where) for c, f in self._convert)

    def from_tuple(self, row: Sequence[Any], where: str) -> tuple[Any, ...]:
        """A tuple already in column order (Python sources)."""
        if len(row) != len(self.columns):
            raise BadValue(
                f"Stream '{self.stream}', {where}: a row has {len(row)} values for "
                f"{len(self.columns)} columns ({', '.join(self.columns)})"
            )
        return tuple(
            self._value(c, f, v, where) for (c, f), v in zip(self._convert, row, strict=True)
        )

    def _value(self, column: str, convert: Callable[[Any], Any], value: Any, where: str) -> Any:
        if value is None:
            return None
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise BadValue(
                f"Stream '{self.stream}', {where}: field '{column}' holds {shown}, which is not "
                f"a {self.types[column]} ({exc})"
            ) from None
