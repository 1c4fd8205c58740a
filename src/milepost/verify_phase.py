"""The verify phase: the gate between copy and finalize.

`verify.mode` says how much of each stream is compared (full, a sample of its chunks,
or nothing). One rule overrides it: a stream that was resumed (its copy interrupted
and continued, by a new run or after a lost connection) is verified in full, because
that is where a mistake in resuming would show. A difference stops the run before
finalize with exit code 4; the run stays in the verify phase, so after
`milepost verify --repair` the next `milepost run` verifies again and finalizes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from milepost import ledger
from milepost.config import Pipeline
from milepost.errors import VerificationFailed
from milepost.events import Event, Listener
from milepost.keyset import show_key
from milepost.schema import SourceTable
from milepost.verify import Report, Verifier


def resumed_streams(dst: Any, pipeline: str) -> set[str]:
    """Streams the ledger shows as started before this process took over."""
    return {c.stream for c in ledger.read_chunks(dst, pipeline) if c.batches or c.status == "done"}


def verify_phase(
    pipeline: Pipeline,
    src: Any,
    dst: Any,
    lease: ledger.Lease,
    resumed: set[str],
    emit: Listener,
    stop: threading.Event,
    origin: str | None,
    tables: Sequence[SourceTable] | None = None,
) -> Report | None:
    """Compare what the settings and the resumes ask for; raise when anything differs.

    Raises InterruptedError when asked to stop in the middle."""
    settings = pipeline.verify
    targets = [s.target for s in pipeline.streams]
    if settings.mode == "off" and not resumed:
        emit(Event("message", text="verify phase skipped (verify.mode: off)"))
        return None
    only = targets if settings.mode != "off" else [t for t in targets if t in resumed]
    full = targets if settings.mode == "full" else [t for t in targets if t in resumed]
    report = Verifier(pipeline, on_event=emit, stop=stop).run(
        src, dst, full=full, fraction=settings.sample, only=only, run_holder=lease, tables=tables
    )
    if not report.equal:
        first = report.differences[0]
        streams = sorted({d.stream for d in report.differences})
        where = f" '{origin}'" if origin else ""
        raise VerificationFailed(
            f"Pipeline '{pipeline.name}': the verify phase found {len(report.differences)} "
            f"range(s) where the destination differs from the source, in "
            f"{', '.join(streams)} (the first: {first.stream} after "
            f"{show_key(first.lo)} up to {show_key(first.hi, 'the end')}, "
            f"{first.source_rows:,} row(s) in the source, {first.destination_rows:,} in the "
            "destination). The run stopped before finalize.",
            hint=f"See them with `milepost verify{where}`, re-copy them with "
            f"`milepost verify{where} --repair`, then run again to finalize.",
        )
    return report
