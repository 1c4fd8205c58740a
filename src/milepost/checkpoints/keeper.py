"""A pipeline's checkpoints: taking them, their life cycle, reading them back, retention.

The keeper is the one place that joins the parts: snapshot (from the ledger), codec
(JSON -> zstd -> AES-GCM, integrity-checked), store (bytes under names) and retention.

A new checkpoint is validated before it is trusted: its bytes are decoded again in
memory and, once written, read back from the store and compared. Only then is it
`active`, and the checkpoint that was active before becomes `superseded`. A document
that cannot be read (a flipped byte, a cut file, a wrong key) is reported by name and
passed over: whoever asks for the latest good checkpoint gets the previous good one,
and the ledger, which is the truth, is never changed by a bad document.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any

from milepost.checkpoints.codec import (
    ChainCodec,
    codec_for,
    identity_of,
    read_header,
    serialize,
)
from milepost.checkpoints.errors import (
    CheckpointError,
    CheckpointNotFound,
    CheckpointUnreadable,
)
from milepost.checkpoints.model import (
    Checkpoint,
    CheckpointMeta,
    Kind,
    document_name,
    id_from_name,
)
from milepost.checkpoints.retention import select_for_deletion
from milepost.checkpoints.snapshot import take_snapshot
from milepost.checkpoints.stores import CheckpointStore, open_store
from milepost.config import Pipeline
from milepost.events import Event, Listener, ignore


@dataclass(frozen=True)
class Listed:
    """One document in the store: readable (with its checkpoint) or not (with why)."""

    id: str
    checkpoint: Checkpoint | None
    problem: str | None = None


class CheckpointKeeper:
    def __init__(self, pipeline: Pipeline, emit: Listener = ignore) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.checkpoints
        self.emit = emit
        self._lock = threading.RLock()  # one writer at a time: runner thread, trigger thread
        self._store: CheckpointStore | None = None
        self._codec: ChainCodec | None = None
        # Metadata of documents already read (None: unreadable), so that taking a
        # checkpoint decodes only what is new in the store, not every document again.
        self._metas: dict[str, CheckpointMeta | None] = {}
        self._active: Checkpoint | None = None  # the last one this keeper made active

    # --- opening (lazily, but `open` lets a run fail before it writes anything) ---

    def open(self) -> None:
        """Load the key and open the store now: a missing key or a bad store URL is bad
        input, reported before the run writes anything."""
        with self._lock:
            if self._codec is None:
                self._codec = codec_for(self.settings)
            if self._store is None:
                self._store = open_store(
                    self.settings.store, self.pipeline.name, **self.settings.store_options
                )

    @property
    def store(self) -> CheckpointStore:
        self.open()
        assert self._store is not None
        return self._store

    @property
    def codec(self) -> ChainCodec:
        self.open()
        assert self._codec is not None
        return self._codec

    @property
    def location(self) -> str:
        return self.store.location

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # --- taking one ---

    def take(
        self,
        conn: Any,
        kind: Kind,
        *,
        reason: str | None = None,
        retries: int = 0,
        errors: int = 0,
        run_id: str | None = None,
    ) -> Checkpoint:
        """Snapshot the ledger in `conn`, validate, write, activate; apply retention."""
        with self._lock:
            names = self.store.list()
            newest = id_from_name(names[-1]) if names else None
            made = take_snapshot(
                self.pipeline,
                conn,
                kind=kind,
                reason=reason,
                retries=retries,
                errors=errors,
                after=newest,
                run_id=run_id,
            )
            now = _now()
            active = made.with_status("validated", at=now).with_status("active", at=now)
            data = self._sealed_and_checked(active)
            self.store.put(active.name, data)
            if self.store.get(active.name) != data:
                failed = active.with_status("failed", at=now, detail="read back differently")
                self.store.put(failed.name, self.codec.encode(failed))
                raise CheckpointError(
                    f"Checkpoint {active.id} did not read back as written from "
                    f"{self.store.location}.",
                    hint="The store is not keeping what it is given; check it.",
                )
            self._metas[active.id] = active.meta
            self._supersede(active, now)
            self._active = active
            self._apply_retention(active.run_id, now)
            self.emit(
                Event(
                    "checkpoint",
                    text=f"checkpoint {active.id} ({kind}"
                    + (f": {reason}" if reason else "")
                    + f", {len(data):,} bytes)",
                    data={"id": active.id, "kind": kind, "bytes": len(data)},
                )
            )
            return active

    def _sealed_and_checked(self, checkpoint: Checkpoint) -> bytes:
        """The document's bytes, once they have survived their own codec: unsealed again
        (every check of the envelope, decryption, decompression) they must give back the
        same JSON, byte for byte, before the document may be written as `active`."""
        payload = serialize(checkpoint)
        data = self.codec.seal(payload, identity_of(checkpoint))
        _, back = self.codec.unseal(
            data,
            pipeline=checkpoint.pipeline,
            checkpoint_id=checkpoint.id,
            run_id=checkpoint.run_id,
        )
        if back != payload:
            raise CheckpointError(f"Checkpoint {checkpoint.id} did not decode to what was encoded.")
        return data

    def _supersede(self, active: Checkpoint, now: dt.datetime) -> None:
        for cid, meta in self._known(self.store.list()).items():
            if meta is not None and meta.status == "active" and cid != active.id:
                mine = self._active is not None and self._active.id == cid
                older = self._active if mine and self._active else self.load(cid)
                self.write(older.with_status("superseded", at=now, detail=f"by {active.id}"))

    def _apply_retention(self, run_id: str, now: dt.datetime) -> None:
        known = self._known(self.store.list())
        metas = [m for m in known.values() if m is not None]
        policy = self.settings.retention
        for cid in select_for_deletion(metas, policy, now, current_run_id=run_id):
            self.store.delete(document_name(cid))
            self._metas.pop(cid, None)

    def _known(self, names: list[str]) -> dict[str, CheckpointMeta | None]:
        """Metadata of every document named, reading only those not read before."""
        ids = [cid for cid in map(id_from_name, names) if cid is not None]
        for gone in set(self._metas) - set(ids):
            del self._metas[gone]
        for cid in ids:
            if cid not in self._metas:
                try:
                    self._metas[cid] = self.load(cid).meta
                except CheckpointUnreadable:
                    self._metas[cid] = None
        return {cid: self._metas[cid] for cid in ids}

    # --- reading ---

    def write(self, checkpoint: Checkpoint) -> None:
        """Write a checkpoint over its own document (a status change, an audit entry)."""
        with self._lock:
            self.store.put(checkpoint.name, self.codec.encode(checkpoint))
            self._metas[checkpoint.id] = checkpoint.meta
            if self._active is not None and self._active.id == checkpoint.id:
                self._active = checkpoint

    def load(self, checkpoint_id: str) -> Checkpoint:
        name = document_name(checkpoint_id)
        with self._lock:
            if name not in self.store.list():
                raise CheckpointNotFound(
                    f"Pipeline '{self.pipeline.name}' has no checkpoint {checkpoint_id} in "
                    f"{self.store.location}.",
                    hint="`milepost checkpoints list` shows the ones there are.",
                )
            data = self.store.get(name)
        return self.codec.decode(data, pipeline=self.pipeline.name, checkpoint_id=checkpoint_id)

    def list(self) -> list[Listed]:
        """Every document in the store, oldest first; unreadable ones say why."""
        out = []
        for name in self.store.list():
            cid = id_from_name(name)
            if cid is None:
                continue
            try:
                out.append(Listed(cid, self.load(cid)))
            except CheckpointUnreadable as exc:
                out.append(Listed(cid, None, exc.message))
        return out

    def latest_good(self, run_id: str | None = None) -> Checkpoint | None:
        """The newest readable, not failed checkpoint (of `run_id` when given). A newer
        document that cannot be read is reported and passed over, never trusted."""
        for entry in reversed(self.list()):
            if entry.checkpoint is None:
                self.emit(
                    Event(
                        "message",
                        text=f"checkpoint {entry.id} is unreadable and is passed over: "
                        f"{entry.problem}",
                    )
                )
                continue
            cp = entry.checkpoint
            if cp.status != "failed" and (run_id is None or cp.run_id == run_id):
                return cp
        return None

    def clear(self, run_id: str | None = None) -> list[str]:
        """Delete the checkpoints of `run_id` (every one when None); returns their ids.

        The run is read from each document's envelope, which needs neither the key nor
        a full decode: clearing at the end of every run stays cheap."""
        removed = []
        with self._lock:
            for name in self.store.list():
                cid = id_from_name(name)
                if cid is None:
                    continue
                if run_id is not None and self._run_of(name, cid) != run_id:
                    continue
                self.store.delete(name)
                self._metas.pop(cid, None)
                removed.append(cid)
        return removed

    def _run_of(self, name: str, checkpoint_id: str) -> str | None:
        try:
            return read_header(self.store.get(name), checkpoint_id=checkpoint_id).identity.run_id
        except CheckpointError:
            return None  # its envelope is damaged: it names no run

    def ids(self) -> set[str]:
        """The ids of every document in the store, readable or not."""
        return {cid for cid in map(id_from_name, self.store.list()) if cid is not None}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
