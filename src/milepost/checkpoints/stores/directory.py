"""The default store: one file per checkpoint in `<root>/<pipeline>/`.

Writes are atomic (DESIGN.md, "The guarantee" point 4): a temporary file in the same
directory, written, flushed and fsynced, renamed over the name with `os.replace`, then
the directory fsynced so the rename itself survives a power cut.

A temporary file is named `.tmp-<pid>-<host>-<random>-<name>`, so a crash leaves
something recognisable: never listed, and removed when a store is opened if the
process that wrote it is gone (same host) or it is older than an hour (any host, or a
recycled pid). A temporary file of a live writer is left alone: `milepost checkpoints
list` may open the store while the runner is writing to it.

Directories are created 0700 and files 0600: a checkpoint holds cursor values, which
can be customer data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path

import psutil

from milepost.checkpoints.errors import CheckpointNotFound, CheckpointStoreError
from milepost.checkpoints.stores.base import (
    check_name,
    check_pipeline,
    is_valid_name,
    is_valid_pipeline,
)

STALE_AFTER_S = 3600.0
_TEMP = re.compile(r"^\.tmp-(\d+)-([0-9a-f]{8})-[0-9a-f]{8}-")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class DirectoryStore:
    """Checkpoint files in a local directory, one subdirectory per pipeline."""

    def __init__(self, root: str | os.PathLike[str], pipeline: str) -> None:
        self.root = Path(root).expanduser()
        self.pipeline = check_pipeline(pipeline)
        self.path = self.root / pipeline
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CheckpointStoreError(
                f"The checkpoint directory {self.path} cannot be created: {exc.strerror}.",
                hint="Check the path and its permissions, or set checkpoints.store.",
            ) from None
        try:
            self.clear_stale_temp_files()
        except OSError as exc:
            raise self._error("cleaned up", "", exc) from None

    @property
    def location(self) -> str:
        return str(self.path)

    def put(self, name: str, data: bytes) -> None:
        target = self.path / check_name(name)
        tmp = self.path / f".tmp-{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}-{name}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            self._sync_directory()
        except OSError as exc:
            raise self._error("written", name, exc) from None

    def get(self, name: str) -> bytes:
        try:
            return (self.path / check_name(name)).read_bytes()
        except FileNotFoundError:
            raise CheckpointNotFound(
                f"There is no checkpoint {name} in {self.path}.",
                hint="`milepost checkpoints list` shows the ones there are.",
            ) from None
        except OSError as exc:
            raise self._error("read", name, exc) from None

    def list(self) -> list[str]:
        return self._names_in(self.path)

    def pipelines(self) -> list[str]:
        # Every subdirectory of the root that holds a checkpoint: a pipeline whose last
        # checkpoint was deleted leaves its directory behind, and that must not count.
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error("listed", "", exc, self.root) from None
        return sorted(
            e.name
            for e in entries
            if is_valid_pipeline(e.name) and e.is_dir() and self._names_in(Path(e.path))
        )

    def delete(self, name: str) -> None:
        try:
            (self.path / check_name(name)).unlink(missing_ok=True)
            self._sync_directory()
        except OSError as exc:
            raise self._error("deleted", name, exc) from None

    def close(self) -> None:
        pass

    def __enter__(self) -> DirectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clear_stale_temp_files(self, now: float | None = None) -> list[str]:
        """Remove temporary files a crashed writer left behind; returns their names."""
        now = time.time() if now is None else now
        here = _host_tag()
        removed = []
        for entry in os.scandir(self.path):
            if not entry.name.startswith(".tmp-"):
                continue
            m = _TEMP.match(entry.name)
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            except FileNotFoundError:
                continue  # its writer renamed it meanwhile
            orphan = bool(m) and m.group(2) == here and not psutil.pid_exists(int(m.group(1)))
            if old or orphan:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(entry.name)
        return removed

    def _names_in(self, directory: Path) -> list[str]:
        """The checkpoint names in `directory`, sorted: temp and stray files are not."""
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return []  # e.g. a pipeline directory removed while the root was listed
        except OSError as exc:
            raise self._error("listed", "", exc, directory) from None
        return sorted(e.name for e in entries if is_valid_name(e.name) and e.is_file())

    def _sync_directory(self) -> None:
        if not hasattr(os, "O_DIRECTORY"):  # Windows cannot fsync a directory
            return
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _error(
        self, verb: str, name: str, exc: OSError, directory: Path | None = None
    ) -> CheckpointStoreError:
        directory = self.path if directory is None else directory
        what = f"Checkpoint {name} in {directory}" if name else f"The directory {directory}"
        return CheckpointStoreError(
            f"{what} could not be {verb}: {exc.strerror or exc}.",
            hint="Check free space and permissions; the ledger keeps the run's progress.",
        )
