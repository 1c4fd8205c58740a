"""Python sources: a generator decorated with `@milepost.source` as a resumable stream.

    @milepost.source(columns={"id": "bigint", "kind": "text", "at": "timestamptz"}, key=["id"])
    def events(cursor):
        while True:
            rows, cursor = fetch_after(cursor)       # the rows after `cursor`, and the new one
            if not rows:
                return
            yield rows, cursor

The generator receives the cursor that the last committed batch handed back (None the
first time) and yields `(rows, cursor)`: rows as tuples in column order or as dicts by
column name. Each batch, and the cursor after it, commit in one destination transaction
with the ledger (milepost/pages.py), and the generator is only asked for the next batch
once the previous one has committed. After a crash the next run calls it again with the
last committed cursor: nothing lost, nothing doubled. With `mode: incremental` the
cursor a completed run ended with is where the next run starts.

A cursor is any JSON value (numbers, text, lists, dicts) or a date, time, datetime,
Decimal or UUID; it is stored in the ledger, so it must not hold secrets.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from milepost.config import DECLARED_TYPES, StreamConfig
from milepost.errors import ConfigError, CopyFailed
from milepost.keyset import key_from_values, key_to_values
from milepost.pages import Page, RowShape
from milepost.urls import DatabaseUrl


class PythonSource:
    """A generator function with the columns (and key) of the rows it yields."""

    def __init__(
        self, fn: Callable[[Any], Any], columns: Mapping[str, str], key: list[str] | None
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.columns = dict(columns)
        self.key = key

    def __call__(self, cursor: Any = None) -> Any:
        return self.fn(cursor)

    def __repr__(self) -> str:
        return f"<milepost source {self.__module__}:{self.__qualname__}>"


def source(
    *, columns: Mapping[str, str], key: list[str] | str | None = None
) -> Callable[[Callable[[Any], Any]], PythonSource]:
    """Declare a generator `fn(cursor)` yielding `(rows, cursor)` as a milepost source."""
    if not columns:
        raise ConfigError("@milepost.source needs `columns` (name: type).")
    for name, kind in columns.items():
        if kind not in DECLARED_TYPES:
            raise ConfigError(
                f"@milepost.source: column '{name}' has type '{kind}'; expected one of "
                f"{', '.join(DECLARED_TYPES)}."
            )
    keys = [key] if isinstance(key, str) else list(key) if key else None
    for name in keys or []:
        if name not in columns:
            raise ConfigError(f"@milepost.source: the key column '{name}' is not in `columns`.")

    def decorate(fn: Callable[[Any], Any]) -> PythonSource:
        return PythonSource(fn, columns, keys)

    return decorate


def resolve(stream: StreamConfig) -> PythonSource:
    """The decorated generator a stream names ("module:function", or the object itself)."""
    ref = stream.python
    if isinstance(ref, PythonSource):
        return ref
    if not isinstance(ref, str):
        raise ConfigError(
            f"Stream '{stream.target}': `python:` is {type(ref).__name__}, not a function "
            "decorated with @milepost.source nor a 'module:function' path."
        )
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"Stream '{stream.target}': `python: {ref}` is not a 'module:function' path.",
            hint="Write it as package.module:function.",
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the pipeline
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            f"Stream '{stream.target}': `python: {ref}` could not be imported: "
            f"{type(exc).__name__}: {exc}.",
            hint="The module must be importable from the working directory or PYTHONPATH.",
        ) from None
    found = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ConfigError(
                f"Stream '{stream.target}': the module '{module_name}' has no '{attr}' "
                f"(`python: {ref}`)."
            )
    if not isinstance(found, PythonSource):
        raise ConfigError(
            f"Stream '{stream.target}': `python: {ref}` is not decorated with "
            "@milepost.source(columns=..., key=...).",
            hint="Decorate the generator so milepost knows its columns.",
        )
    return found


# --- the cursor in the ledger ------------------------------------------------------------


def encode_cursor(stream: str, cursor: Any) -> Any:
    """A JSON-ready form of a cursor that reads back as the same typed value."""
    if isinstance(cursor, dict | list):
        try:
            back = json.loads(json.dumps(cursor, sort_keys=True))  # as the ledger keeps it
        except (TypeError, ValueError) as exc:
            raise _bad_cursor(stream, cursor, str(exc)) from None
        if back != cursor:
            # {0: 17} reads back as {"0": 17}, a tuple as a list: a resumed generator
            # would not know its own cursor and start over, copying rows twice.
            why = "it would read back changed: JSON keys are text and has no tuples"
            raise _bad_cursor(stream, cursor, why)
        return {"json": cursor}
    try:
        return {"v": key_to_values((cursor,))[0]}
    except TypeError as exc:
        raise _bad_cursor(stream, cursor, str(exc)) from None


def decode_cursor(stored: Any) -> Any:
    if stored is None:
        return None
    if "json" in stored:
        return stored["json"]
    return key_from_values([stored["v"]])[0]


def _bad_cursor(stream: str, cursor: Any, why: str) -> CopyFailed:
    error = CopyFailed(
        f"Stream '{stream}': the generator handed back a cursor of type "
        f"{type(cursor).__name__}, which cannot be recorded ({why}).",
        hint="Hand back JSON values (numbers, text, lists, dicts) or dates, times, "
        "decimals or UUIDs.",
    )
    error.final = True
    return error


# --- pages -------------------------------------------------------------------------------


def read_pages(
    src: PythonSource,
    shape: RowShape,
    state: dict[str, Any] | None,
    start: dict[str, Any] | None,
    incremental: bool,
) -> Iterator[Page]:
    """The generator's batches after the recorded state as pages; `start` is the high water
    of the last completed run (incremental streams) when this run has no state yet."""
    name = shape.stream
    stored = (state or {}).get("cursor") if state else (start or {}).get("cursor")
    cursor_doc = stored
    done = int((state or {}).get("n", 0))
    generator = src.fn(decode_cursor(stored))
    if not isinstance(generator, Iterator):
        raise _not_a_generator(name, generator)
    try:
        for item in generator:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise _not_a_pair(name, item)
            rows, cursor = item
            done += 1
            where = f"batch {done}"
            converted = [
                shape.from_record(r, where)
                if isinstance(r, Mapping)
                else shape.from_tuple(r, where)
                for r in rows
            ]
            cursor_doc = encode_cursor(name, cursor)
            yield Page(converted, {"cursor": cursor_doc, "n": done}, False, None, where)
    finally:
        generator.close()
    end = {"cursor": cursor_doc}
    yield Page([], {**end, "n": done}, True, end if incremental else None, "the end")


def _not_a_generator(stream: str, value: Any) -> CopyFailed:
    error = CopyFailed(
        f"Stream '{stream}': the source function returned {type(value).__name__}, not a "
        "generator of (rows, cursor) pairs."
    )
    error.final = True
    return error


def _not_a_pair(stream: str, item: Any) -> CopyFailed:
    error = CopyFailed(
        f"Stream '{stream}': the generator yielded {type(item).__name__}; it must yield "
        "(rows, cursor) pairs."
    )
    error.final = True
    return error


# --- the "connection" of a pipeline without a source -------------------------------------


class NoSource:
    """`source: {url: "python:"}` (or no source at all): every stream is a generator."""

    family = "python"

    def __init__(self, url: DatabaseUrl) -> None:
        self.url = url

    def close(self) -> None:
        """Nothing to close."""


def connect(url: DatabaseUrl, role: str) -> NoSource:
    return NoSource(url)
