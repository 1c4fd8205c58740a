"""The checkpoint document: what a snapshot of a run holds, its ids, its life cycle, its versions.

A checkpoint is derived from the ledger (the ledger is the truth) and is written whole,
never patched: a status change or an audit entry makes a new frozen object, which the
caller writes over the old document. The document is plain JSON data so the codec can
serialise it canonically and any later milepost can read it; `load_document` is the one
way in, and it upgrades older formats.

Cursor keys (chunk bounds, watermarks, min/max cursors) are stored as the tagged JSON
lists of `milepost.keyset.encode_key`, so a watermark reads back as exactly the typed
values the ledger holds; `key_to_doc` and `key_from_doc` convert.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from milepost.checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointStateError,
    CheckpointVersionError,
)
from milepost.checkpoints.redact import redact, redact_text
from milepost.keyset import Key, key_from_values, key_to_values

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SUFFIX = ".ckpt"

Kind = Literal["automatic", "manual", "phase", "before_risky", "pause", "failure"]
Status = Literal["created", "validated", "active", "superseded", "failed"]
Progress = Literal["pending", "in_progress", "done"]
Phase = Literal["schema", "copy", "catchup", "verify", "finalize", "done"]

# Which status may follow which. `failed` is final: a document that did not validate is
# never trusted again. `superseded -> active` is a restore to an older checkpoint.
TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"validated", "active", "superseded", "failed"}),
    "validated": frozenset({"active", "superseded", "failed"}),
    "active": frozenset({"superseded", "failed"}),
    "superseded": frozenset({"active", "failed"}),
    "failed": frozenset(),
}

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$"
_ID_TIME = re.compile(r"^(\d{8}T\d{6})(?:\.(\d{3}))?Z")


# --- small types ---------------------------------------------------------------------


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("a time in a checkpoint must carry its time zone")
    return value.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_utc)]


def _valid_key_doc(value: list[Any] | None) -> list[Any] | None:
    if value is not None:
        try:
            key_from_values(value)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an encoded cursor key ({type(exc).__name__})") from None
    return value


KeyDoc = Annotated[list[Any] | None, AfterValidator(_valid_key_doc)]


def key_to_doc(key: Key | None) -> list[Any] | None:
    """A cursor key as the tagged JSON list a checkpoint stores."""
    return None if key is None else key_to_values(key)


def key_from_doc(doc: list[Any] | None) -> Key | None:
    """The cursor key a stored tagged list stands for."""
    return None if doc is None else key_from_values(doc)


def _progress(value: Any) -> Any:
    # The ledger calls a chunk being copied "copying"; the document says "in_progress".
    return "in_progress" if value == "copying" else value


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the parts -----------------------------------------------------------------------


class Position(_Doc):
    """Where the run stood: the phase and, while copying, the last committed batch."""

    phase: Phase
    stream: str | None = None
    chunk: int | None = Field(default=None, ge=0)
    batch: int | None = Field(default=None, ge=0)
    watermark: KeyDoc = None
    rows_done: int = Field(default=0, ge=0)


class ChunkState(_Doc):
    """One cursor range [lo, hi] of a stream and how far it got."""

    index: int = Field(ge=0)
    lo: KeyDoc = None
    hi: KeyDoc = None
    watermark: KeyDoc = None
    rows_written: int = Field(default=0, ge=0)
    batches: int = Field(default=0, ge=0)
    status: Annotated[Progress, BeforeValidator(_progress)] = "pending"
    checksum: str | None = None


class StreamState(_Doc):
    """One stream: its progress, its chunks and its checksum so far."""

    name: str = Field(min_length=1)
    cursor: list[str] | None = None  # its cursor columns, to rewrite the plan on rollback
    state: Annotated[Progress, BeforeValidator(_progress)] = "pending"
    rows_done: int = Field(default=0, ge=0)
    rows_total: int | None = Field(default=None, ge=0)
    checksum: str | None = None
    chunks: list[ChunkState] = Field(default_factory=list)

    @field_validator("chunks")
    @classmethod
    def _chunk_indexes_unique(cls, chunks: list[ChunkState]) -> list[ChunkState]:
        if len({c.index for c in chunks}) != len(chunks):
            raise ValueError("two chunks share an index")
        return chunks


class ErrorState(_Doc):
    """What went wrong so far: errors seen, rows set aside, retries spent."""

    error_count: int = Field(default=0, ge=0)
    rows_set_aside: int = Field(default=0, ge=0)
    retries: int = Field(default=0, ge=0)


class SourceStream(_Doc):
    """What the source looked like for one stream, to notice drift on resume."""

    rows_estimate: int | None = Field(default=None, ge=0)
    min_cursor: KeyDoc = None
    max_cursor: KeyDoc = None


class AuditEntry(_Doc):
    """One thing that happened to the checkpoint: created, status_changed, restored, ..."""

    at: UtcDatetime
    action: str = Field(pattern=r"^[a-z][a-z_]{0,39}$")
    detail: Annotated[str, AfterValidator(redact_text)] = ""


class CheckpointMeta(_Doc):
    """What listing and retention need, without the rest of the document."""

    id: str
    run_id: str
    kind: Kind
    status: Status
    created_at: UtcDatetime


class Checkpoint(_Doc):
    """A whole, immutable snapshot of a run (DESIGN.md, "Checkpoint documents")."""

    format_version: Literal[2] = FORMAT_VERSION
    id: str = Field(pattern=ID_PATTERN)
    pipeline: str = Field(min_length=1, max_length=100)
    run_id: str = Field(min_length=1, max_length=64)
    created_at: UtcDatetime
    kind: Kind
    status: Status = "created"
    reason: Annotated[str, AfterValidator(redact_text)] | None = None
    position: Position
    streams: list[StreamState] = Field(default_factory=list)
    errors: ErrorState = Field(default_factory=ErrorState)
    # Redacted on the way in, whoever builds the document: nothing unmasked can be stored.
    config: Annotated[dict[str, Any], AfterValidator(redact)] = Field(default_factory=dict)
    source: dict[str, SourceStream] = Field(default_factory=dict)
    change_capture: dict[str, Any] | None = None
    pipeline_fingerprint: str
    audit: list[AuditEntry] = Field(default_factory=list)

    @field_validator("streams")
    @classmethod
    def _stream_names_unique(cls, streams: list[StreamState]) -> list[StreamState]:
        if len({s.name for s in streams}) != len(streams):
            raise ValueError("two streams share a name")
        return streams

    @property
    def name(self) -> str:
        """The document's name in a checkpoint store."""
        return document_name(self.id)

    @property
    def meta(self) -> CheckpointMeta:
        return CheckpointMeta(
            id=self.id,
            run_id=self.run_id,
            kind=self.kind,
            status=self.status,
            created_at=self.created_at,
        )

    def stream(self, name: str) -> StreamState:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_document(self) -> dict[str, Any]:
        """Plain JSON data, as the codec serialises it."""
        return self.model_dump(mode="json")

    def with_audit(self, action: str, *, at: dt.datetime, detail: str = "") -> Checkpoint:
        """A copy with one more audit entry (e.g. `restored`, `rolled_back`)."""
        entry = AuditEntry(at=at, action=action, detail=detail)
        return self.model_copy(update={"audit": [*self.audit, entry]})

    def with_status(self, status: Status, *, at: dt.datetime, detail: str = "") -> Checkpoint:
        """A copy in `status`, with the change in the audit trail.

        Raises CheckpointStateError for a change the life cycle does not allow (see
        TRANSITIONS); setting the status it already has is a no-op.
        """
        if status == self.status:
            return self
        if status not in TRANSITIONS[self.status]:
            raise CheckpointStateError(
                f"Checkpoint {self.id} is {self.status} and cannot become {status}.",
                hint="A failed checkpoint is never trusted again; restore another one."
                if self.status == "failed"
                else None,
            )
        text = f"{self.status} -> {status}" + (f": {detail}" if detail else "")
        changed = self.model_copy(update={"status": status})
        return changed.with_audit("status_changed", at=at, detail=text)


# --- ids -----------------------------------------------------------------------------

_last_ms = 0
_id_lock = threading.Lock()


def new_checkpoint_id(now: dt.datetime | None = None, *, after: str | None = None) -> str:
    """A fresh id such as `20261123T031500.123Z-3f2a9c`: UTC time to the millisecond, then
    random hex, so sorting ids (and store names) sorts checkpoints by time.

    Ids from one process strictly increase even within a millisecond or when the clock
    steps back; pass the newest existing id as `after` to keep that across processes.
    The random part keeps two writers (a runner and a `checkpoints create`) apart.
    """
    global _last_ms
    now = _utc(now) if now is not None else dt.datetime.now(dt.UTC)
    ms = int(now.timestamp() * 1000)
    floor = 0
    if after is not None and (t := checkpoint_time(after)) is not None:
        floor = int(t.timestamp() * 1000) + 1
    with _id_lock:
        ms = max(ms, _last_ms + 1, floor)
        _last_ms = ms
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return f"{stamp:%Y%m%dT%H%M%S}.{ms % 1000:03d}Z-{secrets.token_hex(3)}"


def checkpoint_time(checkpoint_id: str) -> dt.datetime | None:
    """The time an id was made at (to the millisecond), or None for a foreign id."""
    m = _ID_TIME.match(checkpoint_id)
    if not m:
        return None
    stamp = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return stamp + dt.timedelta(milliseconds=int(m.group(2) or 0))


def document_name(checkpoint_id: str) -> str:
    """The name a checkpoint is stored under."""
    return checkpoint_id + SUFFIX


def id_from_name(name: str) -> str | None:
    """The checkpoint id a store name stands for, or None for a name that is not one."""
    if not name.endswith(SUFFIX):
        return None
    cid = name[: -len(SUFFIX)]
    return cid if re.match(ID_PATTERN, cid) else None


def new_checkpoint(
    *,
    pipeline: str,
    run_id: str,
    kind: Kind,
    position: Position,
    pipeline_fingerprint: str,
    streams: list[StreamState] | None = None,
    config: dict[str, Any] | None = None,
    errors: ErrorState | None = None,
    source: dict[str, SourceStream] | None = None,
    change_capture: dict[str, Any] | None = None,
    reason: str | None = None,
    now: dt.datetime | None = None,
    after: str | None = None,
) -> Checkpoint:
    """A new checkpoint in status `created`, with a fresh id and a `created` audit entry."""
    now = _utc(now) if now is not None else dt.datetime.now(dt.UTC)
    return Checkpoint(
        id=new_checkpoint_id(now, after=after),
        pipeline=pipeline,
        run_id=run_id,
        created_at=now,
        kind=kind,
        reason=reason,
        position=position,
        streams=streams or [],
        errors=errors or ErrorState(),
        config=config or {},
        source=source or {},
        change_capture=change_capture,
        pipeline_fingerprint=pipeline_fingerprint,
        audit=[AuditEntry(at=now, action="created", detail=kind)],
    )


# --- reading, and older formats --------------------------------------------------------


def load_document(data: Any) -> Checkpoint:
    """A Checkpoint from its JSON data, in any readable format version.

    Raises CheckpointVersionError for a version newer than this milepost knows and
    CheckpointCorrupt for anything that is not a valid document.
    """
    cid = data.get("id") if isinstance(data, dict) else None
    label = f"Checkpoint {cid}" if isinstance(cid, str) else "A checkpoint document"
    if not isinstance(data, dict):
        raise CheckpointCorrupt(f"{label} is not a JSON object.")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointCorrupt(f"{label} has no valid format_version.")
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{label} is in format {version}; this milepost reads formats "
            f"{READABLE_VERSIONS[0]} to {FORMAT_VERSION}.",
            hint="It was written by a newer milepost: upgrade milepost to read it.",
        )
    if version not in READABLE_VERSIONS:
        raise CheckpointCorrupt(f"{label} claims format {version}, which never existed.")
    try:
        if version == 1:
            return Checkpoint.model_validate(_upgrade_v1(data))
        return Checkpoint.model_validate(data)
    except ValidationError as exc:
        raise CheckpointCorrupt(
            f"{label} is not a valid format {version} document: {_first_problem(exc)}."
        ) from None
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointCorrupt(
            f"{label} is not a valid format {version} document ({type(exc).__name__})."
        ) from None


def _first_problem(exc: ValidationError) -> str:
    # Location and message only: the input could be a config value.
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"'{where}': {err['msg']}{more}"


def _upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (milepost 0.1) to format 2.

    Format 1 knew streams only as a whole: `streams` mapped a stream name to
    `{"rows_done", "watermark", "done"}`, `created_at` was epoch seconds (as the ledger
    keeps them), the position was just `phase`, the fingerprint was `fingerprint`, and
    there was no status, chunk list, error state, source fingerprint or audit trail. A
    stream becomes one chunk over its whole range; the status is `created`, because this
    version has not validated the document yet; counters it did not keep start at zero.
    """
    created = dt.datetime.fromtimestamp(float(doc["created_at"]), dt.UTC)
    streams = []
    for name, s in doc.get("streams", {}).items():
        done = bool(s.get("done", False))
        rows = int(s.get("rows_done", 0))
        watermark = s.get("watermark")
        state = "done" if done else "in_progress" if rows or watermark is not None else "pending"
        chunk = {"index": 0, "watermark": watermark, "rows_written": rows, "status": state}
        streams.append({"name": name, "state": state, "rows_done": rows, "chunks": [chunk]})
    current = next((s for s in streams if s["state"] == "in_progress"), None)
    position = {
        "phase": doc["phase"],
        "stream": current["name"] if current else None,
        "chunk": 0 if current else None,
        "watermark": current["chunks"][0]["watermark"] if current else None,
        "rows_done": sum(s["rows_done"] for s in streams),
    }
    return {
        "format_version": FORMAT_VERSION,
        "id": doc["id"],
        "pipeline": doc["pipeline"],
        "run_id": doc["run_id"],
        "created_at": created,
        "kind": doc["kind"],
        "status": "created",
        "reason": doc.get("reason"),
        "position": position,
        "streams": streams,
        "config": doc.get("config", {}),
        "pipeline_fingerprint": doc["fingerprint"],
        "audit": [{"at": created, "action": "created", "detail": "upgraded from format 1"}],
    }
