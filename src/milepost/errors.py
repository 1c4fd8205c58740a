"""The errors milepost raises, and the exit code each one means.

The library raises these; the CLI (and later the API) turns them into one clear
paragraph and an exit code in a single place. Each error carries a hint that tells
the operator what to do next and whether trying again can help.
"""

from __future__ import annotations

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PAUSED = 3
EXIT_MISMATCH = 4


class MilepostError(Exception):
    """Base of every error milepost reports to a person."""

    exit_code = EXIT_FAILED
    # Why trying again may help (e.g. "connection lost"), set where a driver error is
    # wrapped; None means retrying would only repeat the failure.
    transient: str | None = None
    # Settled outcomes (a lease lost, retries given up, a pause) are never retried, even
    # when the driver error they wrap would be.
    final = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(MilepostError):
    """The pipeline file or the command line asks for something that cannot be done."""

    exit_code = EXIT_USAGE


class ConnectorError(MilepostError):
    """A server could not be reached, refused the login, or lacks what the pipeline names."""

    exit_code = EXIT_USAGE


class SchemaError(MilepostError):
    """A table or column cannot be carried faithfully to the destination."""

    exit_code = EXIT_USAGE


class LeaseHeld(MilepostError):
    """Another live runner owns the pipeline; starting a second would race it."""

    exit_code = EXIT_USAGE


class LeaseLost(MilepostError):
    """Our lease was taken over while we ran; we stop before writing anything more."""

    exit_code = EXIT_FAILED
    final = True


class ResumeRefused(MilepostError):
    """The recorded progress does not match the pipeline any more."""

    exit_code = EXIT_USAGE


class Paused(MilepostError):
    """The run stopped on request after a committed batch and can be resumed."""

    exit_code = EXIT_PAUSED
    final = True


class CopyFailed(MilepostError):
    """A batch could not be written; progress up to the last committed batch is kept."""

    exit_code = EXIT_FAILED


class RowRejected(MilepostError):
    """The destination refused a row (`on_row_error: fail`); the message names it."""

    exit_code = EXIT_FAILED
    final = True


class RetriesExhausted(MilepostError):
    """A transient fault outlasted the retries: the run pauses, resumable once it clears."""

    exit_code = EXIT_PAUSED
    final = True
    stream: str | None = None  # the stream that gave up, when one did


class VerificationFailed(MilepostError):
    """The destination does not hold what the source holds (`milepost verify`, the verify
    phase). Nothing is lost: the differing ranges are named, and `--repair` re-copies them."""

    exit_code = EXIT_MISMATCH
    final = True
