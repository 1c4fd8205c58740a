"""Checkpoints in any fsspec filesystem: `s3://bucket/prefix`, `gs://…`, `memory://…`.

Documents live at `<url>/<pipeline>/<name>`. Storage options (credentials, an
`endpoint_url` for S3-compatible servers, `client_kwargs`) are passed to fsspec as
they are.

On object stores a single PUT is atomic: readers see the old object or the new one,
never part of one, so `put` writes the object directly. On other filesystems (sftp,
smb, ...) a write can be seen half done, so `put` writes a temporary `.tmp-` name and
moves it over the target; `list` never shows those. Local paths and `file://` URLs
go to the directory store instead, which also fsyncs.

Object stores and fsspec cache listings; `list` drops the cache first, so a name put
a moment ago, by this process or another, is listed.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

from milepost.checkpoints.errors import CheckpointNotFound, CheckpointStoreError
from milepost.checkpoints.redact import mask_url, redact_text
from milepost.checkpoints.stores.base import (
    check_name,
    check_pipeline,
    is_valid_name,
    is_valid_pipeline,
)

# Filesystems whose single write is atomic and visible only when complete.
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"}


class FsspecStore:
    """Checkpoint documents as objects or files under a prefix of an fsspec URL."""

    def __init__(self, url: str, pipeline: str, **storage_options: Any) -> None:
        self.pipeline = check_pipeline(pipeline)
        self._masked = f"{mask_url(url.rstrip('/'))}/{pipeline}"
        import fsspec.core  # ~60 ms of imports: not paid by the other stores

        try:
            self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            raise CheckpointStoreError(
                f"The checkpoint store {self._masked} needs a package that is not installed "
                f"({exc.name or exc}).",
                hint="For s3:// install milepost[s3] (s3fs); other schemes name their "
                "fsspec package in the fsspec documentation.",
            ) from None
        except (ValueError, TypeError, OSError) as exc:
            raise self._error("opened", exc) from None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._atomic = any(p in ATOMIC_PUT for p in protocols)
        self.root = root.rstrip("/")
        self.prefix = f"{self.root}/{pipeline}"

    @property
    def location(self) -> str:
        return self._masked

    def put(self, name: str, data: bytes) -> None:
        target = f"{self.prefix}/{check_name(name)}"
        try:
            if self._atomic:
                self.fs.pipe_file(target, bytes(data))
                return
            tmp = f"{self.prefix}/.tmp-{secrets.token_hex(4)}-{name}"
            self.fs.makedirs(self.prefix, exist_ok=True)
            self.fs.pipe_file(tmp, bytes(data))
            try:
                self.fs.mv(tmp, target)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.rm_file(tmp)
                raise
        except Exception as exc:
            raise self._error("written", exc, name) from None
        finally:
            self.fs.invalidate_cache(self.prefix)

    def get(self, name: str) -> bytes:
        path = f"{self.prefix}/{check_name(name)}"
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            raise CheckpointNotFound(
                f"There is no checkpoint {name} in {self.location}.",
                hint="`milepost checkpoints list` shows the ones there are.",
            ) from None
        except Exception as exc:
            raise self._error("read", exc, name) from None

    def list(self) -> list[str]:
        return self._names_under(self.prefix)

    def pipelines(self) -> list[str]:
        # Every folder under the root that holds a checkpoint: a filesystem with real
        # directories keeps a pipeline's folder after its last checkpoint is deleted.
        candidates = [
            name
            for name, kind in self._entries_under(self.root or "/")
            if kind == "directory" and is_valid_pipeline(name)
        ]
        return sorted(p for p in candidates if self._names_under(f"{self.root}/{p}"))

    def delete(self, name: str) -> None:
        path = f"{self.prefix}/{check_name(name)}"
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._error("deleted", exc, name) from None
        finally:
            self.fs.invalidate_cache(self.prefix)

    def close(self) -> None:
        pass  # fsspec keeps its filesystems (and their connection pools) per process

    def __enter__(self) -> FsspecStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _names_under(self, prefix: str) -> list[str]:
        """The checkpoint names in the folder `prefix`, sorted: temp and stray objects are not."""
        return sorted(
            name
            for name, kind in self._entries_under(prefix)
            if kind == "file" and is_valid_name(name)
        )

    def _entries_under(self, prefix: str) -> list[tuple[str, str]]:
        """(last path part, type) of what `prefix` holds, listed afresh, not from the cache."""
        try:
            self.fs.invalidate_cache(prefix)
            entries = self.fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._error("listed", exc) from None
        return [
            (entry["name"].rstrip("/").rsplit("/", 1)[-1], entry.get("type", ""))
            for entry in entries
        ]

    def _error(self, verb: str, exc: Exception, name: str = "") -> CheckpointStoreError:
        what = f"Checkpoint {name} in {self.location}" if name else self.location
        detail = redact_text(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        return CheckpointStoreError(
            f"{what} could not be {verb}: {detail or type(exc).__name__}.",
            hint="Check the URL, the credentials in checkpoints.store_options and that the "
            "bucket or path exists; the ledger keeps the run's progress meanwhile.",
        )
