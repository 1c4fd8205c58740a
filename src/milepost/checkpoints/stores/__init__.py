"""Checkpoint stores, and `open_store`, which picks one by the URL's scheme.

| `checkpoints.store`                        | store                               |
| ------------------------------------------ | ----------------------------------- |
| a path (`.milepost/checkpoints`), `file://` | DirectoryStore: `<path>/<pipeline>/` |
| `sqlite:///path.db`, `sqlite:////abs.db`   | SqliteStore                         |
| `postgresql://…` (`postgres`, `+driver`)   | PostgresStore                       |
| any other fsspec URL (`s3://bucket/prefix`) | FsspecStore: `<url>/<pipeline>/`    |

A relative path is relative to the working directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import make_url

from milepost.checkpoints.redact import mask_url
from milepost.checkpoints.stores.base import CheckpointStore, check_name, check_pipeline
from milepost.checkpoints.stores.directory import DirectoryStore
from milepost.checkpoints.stores.fsspec_store import FsspecStore
from milepost.checkpoints.stores.sqlite import SqliteStore
from milepost.errors import ConfigError

__all__ = [
    "CheckpointStore",
    "DirectoryStore",
    "FsspecStore",
    "SqliteStore",
    "check_name",
    "check_pipeline",
    "open_store",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def open_store(
    url_or_path: str | os.PathLike[str], pipeline: str, **options: Any
) -> CheckpointStore:
    """The store `url_or_path` names, opened for `pipeline`'s checkpoints.

    `options` are storage options for fsspec URLs (e.g. `endpoint_url`, `key`,
    `secret`, `client_kwargs`); the other stores take none.
    """
    text = os.fspath(url_or_path)
    m = _SCHEME.match(text)
    if m is None:
        _no_options(options, text)
        return DirectoryStore(Path(text), pipeline)
    scheme = m.group(1).lower()
    family = scheme.split("+", 1)[0]
    if family == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"checkpoints.store: {text} names another host; use a local path.")
        _no_options(options, text)
        return DirectoryStore(Path(unquote(parts.path)), pipeline)
    if family == "sqlite":
        database = make_url(text).database
        if not database or database == ":memory:":
            raise ConfigError(
                f"checkpoints.store: {text} names no file; in-memory checkpoints would be "
                "lost with the process.",
                hint="Use sqlite:///relative/path.db or sqlite:////absolute/path.db.",
            )
        _no_options(options, text)
        return SqliteStore(database, pipeline)
    if family in ("postgresql", "postgres"):
        from milepost.checkpoints.stores.postgres import PostgresStore  # psycopg is optional

        _no_options({k: v for k, v in options.items() if k != "connect_timeout"}, text)
        return PostgresStore(text, pipeline, **options)
    if family in ("mysql", "mariadb"):
        raise ConfigError(
            f"checkpoints.store: {mask_url(text)} is not a checkpoint store.",
            hint="Keep checkpoints in a directory, sqlite:///, postgresql:// or an object "
            "store such as s3://bucket/prefix.",
        )
    import fsspec  # ~60 ms of imports, paid only by object-store checkpoints

    if scheme not in fsspec.available_protocols():
        raise ConfigError(
            f"checkpoints.store: the scheme '{scheme}' of {mask_url(text)} is not known.",
            hint="Use a path, sqlite:///…, postgresql://… or an fsspec URL such as "
            "s3://bucket/prefix.",
        )
    return FsspecStore(text, pipeline, **options)


def _no_options(options: dict[str, Any], text: str) -> None:
    if options:
        raise ConfigError(
            f"checkpoints.store_options ({', '.join(sorted(options))}) apply to object "
            f"store URLs only, not to {mask_url(text)}."
        )
