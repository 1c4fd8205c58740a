"""Checkpoints: immutable, versioned, integrity-checked snapshots of a run (DESIGN.md).

The building blocks, each in its own module: the document (`model`), secret masking
for its config snapshot (`redact`), its bytes (`codec`), where they are kept
(`stores`), which to delete (`retention`) and the pipeline's `checkpoints:` section
(`settings`). The runner decides when to make one; nothing here touches the ledger.
"""

from milepost.checkpoints.codec import (
    ChainCodec,
    Codec,
    Identity,
    codec_for,
    generate_key,
    key_id,
    load_key,
    parse_key,
    read_header,
)
from milepost.checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointKeyError,
    CheckpointMismatch,
    CheckpointNameError,
    CheckpointNotEncrypted,
    CheckpointNotFound,
    CheckpointStateError,
    CheckpointStoreError,
    CheckpointTruncated,
    CheckpointUnreadable,
    CheckpointVersionError,
    CheckpointWrongKey,
)
from milepost.checkpoints.model import (
    FORMAT_VERSION,
    AuditEntry,
    Checkpoint,
    CheckpointMeta,
    ChunkState,
    ErrorState,
    Position,
    SourceStream,
    StreamState,
    checkpoint_time,
    document_name,
    id_from_name,
    key_from_doc,
    key_to_doc,
    load_document,
    new_checkpoint,
    new_checkpoint_id,
)
from milepost.checkpoints.redact import redact, redact_text
from milepost.checkpoints.retention import RetentionPolicy, newest_good, select_for_deletion
from milepost.checkpoints.settings import CheckpointSettings, EncryptSettings
from milepost.checkpoints.stores import CheckpointStore, open_store

__all__ = [
    "FORMAT_VERSION",
    "AuditEntry",
    "ChainCodec",
    "Checkpoint",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointKeyError",
    "CheckpointMeta",
    "CheckpointMismatch",
    "CheckpointNameError",
    "CheckpointNotEncrypted",
    "CheckpointNotFound",
    "CheckpointSettings",
    "CheckpointStateError",
    "CheckpointStore",
    "CheckpointStoreError",
    "CheckpointTruncated",
    "CheckpointUnreadable",
    "CheckpointVersionError",
    "CheckpointWrongKey",
    "ChunkState",
    "Codec",
    "EncryptSettings",
    "ErrorState",
    "Identity",
    "Position",
    "RetentionPolicy",
    "SourceStream",
    "StreamState",
    "checkpoint_time",
    "codec_for",
    "document_name",
    "generate_key",
    "id_from_name",
    "key_from_doc",
    "key_id",
    "key_to_doc",
    "load_document",
    "load_key",
    "new_checkpoint",
    "new_checkpoint_id",
    "newest_good",
    "open_store",
    "parse_key",
    "read_header",
    "redact",
    "redact_text",
    "select_for_deletion",
]
