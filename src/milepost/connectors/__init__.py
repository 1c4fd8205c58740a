"""Connectors register by URL family; the runner asks for one by URL and role."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from milepost.connectors.base import Connection
from milepost.errors import ConnectorError, MilepostError
from milepost.urls import DatabaseUrl

# family -> (module, the extra that installs its driver)
_REGISTRY = {
    "postgresql": ("milepost.connectors.postgres", "postgres"),
    "mysql": ("milepost.connectors.mysql", "mysql"),
    "sqlite": ("milepost.connectors.sqlite", None),
    # Sources only: an HTTP API (docs/sources/http.md), and none at all for a pipeline of
    # Python generators (docs/sources/python.md).
    "http": ("milepost.connectors.http", None),
    "python": ("milepost.python_source", None),
}


def connect(url: DatabaseUrl, role: str) -> Connection:
    """Open a connection for `role` ('source' or 'destination')."""
    module_name, extra = _REGISTRY[url.family]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConnectorError(
            f"The {role} {url.masked} needs a driver that is not installed ({exc.name}).",
            hint=f"Install it with: pip install 'milepost[{extra}]'.",
        ) from None
    return module.connect(url, role)


def new_sqlite_file(url: DatabaseUrl) -> Path | None:
    """The SQLite file that opening `url` would create, or None if it exists (or isn't SQLite)."""
    if url.family != "sqlite":
        return None
    path = Path(url.url.database or "")
    return None if path.exists() else path


def remove_sqlite_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# --- what an error means, asked of the engine whose driver raised it -----------------

_DRIVER_MODULES = {
    "psycopg": "milepost.connectors.postgres",
    "pymysql": "milepost.connectors.mysql",
    "sqlite3": "milepost.connectors.sqlite",
    "httpx": "milepost.connectors.http",
}


def transient_reason(exc: BaseException) -> str | None:
    """Why trying again may succeed (a dropped connection, a restart, a deadlock), or None.

    Looks through the chain of causes, so a driver error wrapped in a milepost error
    is still recognised; each engine classifies its own driver's errors.
    """
    for e in _causes(exc):
        if isinstance(e, MilepostError):
            if e.final:
                return None
            if e.transient:
                return e.transient
            continue
        engine = _engine_of(e)
        reason = engine.transient_reason(e) if engine is not None else None
        if reason:
            return reason
        if isinstance(e, ConnectionError | TimeoutError):
            return "network error"
    return None


def rejection(exc: BaseException) -> str | None:
    """Why the destination refused a row (a constraint, a value out of range), or None."""
    for e in _causes(exc):
        engine = _engine_of(e)
        reason = engine.rejection(e) if engine is not None else None
        if reason:
            return " ".join(reason.split())
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )


def _engine_of(exc: BaseException) -> Any:
    """The connector module that knows this driver's errors (its driver is installed: it
    raised)."""
    name = _DRIVER_MODULES.get(type(exc).__module__.split(".", 1)[0])
    return importlib.import_module(name) if name else None
