"""Connectors register by URL family; the runner asks for one by URL and role."""

from __future__ import annotations

import importlib
from pathlib import Path

from milepost.connectors.base import Connection
from milepost.errors import ConnectorError
from milepost.urls import DatabaseUrl

# family -> (module, the extra that installs its driver)
_REGISTRY = {
    "postgresql": ("milepost.connectors.postgres", "postgres"),
    "mysql": ("milepost.connectors.mysql", "mysql"),
    "sqlite": ("milepost.connectors.sqlite", None),
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
