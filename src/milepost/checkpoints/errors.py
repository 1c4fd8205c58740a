"""What can go wrong with a checkpoint, one class per cause.

The runner treats every `CheckpointUnreadable` the same way (report it, fall back to the
previous good checkpoint or the ledger: the ledger is the truth, DESIGN "The guarantee"
point 3), but the operator needs to know *which* thing went wrong, so each cause is its
own class with its own message. Messages name the checkpoint and what was wrong, never a
key or a password.
"""

from __future__ import annotations

from milepost.errors import EXIT_FAILED, EXIT_USAGE, MilepostError


class CheckpointError(MilepostError):
    """Base of every checkpoint problem."""

    exit_code = EXIT_FAILED


class CheckpointUnreadable(CheckpointError):
    """This one document cannot be used; an older one, or the ledger, can.

    Raised out of milepost only when an operator names the document (`checkpoints show`,
    `restore`, `rollback`): nothing was attempted, and another checkpoint (or the right
    key) is the way on, so it exits as a refused request, not as a failed run."""

    exit_code = EXIT_USAGE


class CheckpointCorrupt(CheckpointUnreadable):
    """The bytes changed after they were written (integrity hash or authentication failed)."""


class CheckpointTruncated(CheckpointUnreadable):
    """The document is shorter than its header says: a write cut short, or a partial copy."""


class CheckpointVersionError(CheckpointUnreadable):
    """Written by a newer milepost, in a format this version does not know."""


class CheckpointMismatch(CheckpointUnreadable):
    """The document belongs to another pipeline, run or checkpoint id (swapped or renamed)."""


class CheckpointWrongKey(CheckpointUnreadable):
    """The document was encrypted with a different key than the one configured."""


class CheckpointNotEncrypted(CheckpointUnreadable):
    """Encryption is on, but this document is plaintext: it could have been planted."""


class CheckpointKeyError(CheckpointError):
    """The configured encryption key is missing, unreadable or not 32 bytes."""

    exit_code = EXIT_USAGE


class CheckpointNotFound(CheckpointError):
    """No checkpoint of that name in the store."""

    exit_code = EXIT_USAGE


class CheckpointNameError(CheckpointError):
    """A name or pipeline that cannot be a checkpoint name (e.g. one with a '/')."""

    exit_code = EXIT_USAGE


class CheckpointStoreError(CheckpointError):
    """The store could not be reached or refused the operation; trying again may help."""

    retryable = True


class CheckpointStateError(CheckpointError):
    """A status change the checkpoint life cycle does not allow (e.g. reviving a failed one)."""

    exit_code = EXIT_USAGE
