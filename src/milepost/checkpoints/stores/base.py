"""The checkpoint store seam: named byte strings in one pipeline's namespace.

A store knows nothing about checkpoints: it keeps bytes under names. The codec
checks every document it reads, so a store only has to be atomic per name (a reader
sees the old bytes or the new, never a mix) and to list what it holds. A store is
opened for one pipeline; two pipelines sharing a directory, bucket or database never
see each other's names, only each other's pipeline names (`pipelines`), so that
`milepost checkpoints clear --all` can reach every pipeline kept there.

Names are restricted to letters, digits, '.', '_' and '-', starting with a letter or
digit, up to 200 characters: safe as a file name, an object key and a SQL value
everywhere, and never confused with a temporary file (those start with '.').
"""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from milepost.checkpoints.errors import CheckpointNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
_PIPELINE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoint documents live (DESIGN.md: directory, SQLite, PostgreSQL, fsspec)."""

    @property
    def location(self) -> str:
        """Where the store is, for messages (passwords masked)."""
        ...

    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, replacing what was there, atomically."""
        ...

    def get(self, name: str) -> bytes:
        """The bytes under `name`; CheckpointNotFound when there are none."""
        ...

    def list(self) -> list[str]:
        """Every name in this pipeline's namespace, sorted."""
        ...

    def pipelines(self) -> list[str]:
        """Every pipeline with a checkpoint in this directory, file, database or URL, sorted."""
        ...

    def delete(self, name: str) -> None:
        """Remove `name`; removing a name that is not there is not an error."""
        ...

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def is_valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CheckpointNameError(
            f"{name!r} is not a checkpoint name.",
            hint="Checkpoint names are letters, digits, '.', '_' and '-', as "
            "`milepost checkpoints list` shows them.",
        )
    return name


def is_valid_pipeline(pipeline: str) -> bool:
    # The pipeline becomes a directory or key prefix: '.' and '..' would escape it.
    return (
        isinstance(pipeline, str) and bool(_PIPELINE.fullmatch(pipeline)) and set(pipeline) != {"."}
    )


def check_pipeline(pipeline: str) -> str:
    if not is_valid_pipeline(pipeline):
        raise CheckpointNameError(
            f"{pipeline!r} cannot name a pipeline's checkpoints.",
            hint="A pipeline name is letters, digits, '_', '.' and '-', and not '.' or '..'.",
        )
    return pipeline
