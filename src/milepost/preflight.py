"""What a run checks before it writes anything: a refused resume, a destination table
that vanished under a run, or rows a fresh copy would duplicate. Each is bad input
(exit 2), reported before the lease is taken and again, under it, before any write."""

from __future__ import annotations

from collections.abc import Collection

from milepost import recovery, schema
from milepost.errors import ConfigError, ResumeRefused


def preflight(
    pipeline: str,
    decision: recovery.Decision,
    plans: list[schema.DestinationPlan],
    fresh: bool,
    copied: Collection[str] = (),
) -> None:
    """Refuse before writing anything when the destination cannot take the run.

    `copied`: streams a completed run of this pipeline copied (milepost/watermarks.py);
    the rows in their tables are accounted for, not strangers a copy would duplicate."""
    if decision.action == "refuse":
        raise ResumeRefused(
            f"Pipeline '{pipeline}': {decision.reason}.",
            hint="Run with --fresh to empty the destination tables and start over, or "
            "restore the pipeline file it was started with.",
        )
    if decision.action == "resume" and decision.phase in ("copy", "verify", "finalize"):
        for plan in plans:
            if not plan.exists:
                raise ResumeRefused(
                    f"Stream '{plan.source.stream.target}': the destination table "
                    f"'{plan.table.name}' that this run was copying into no longer exists.",
                    hint="Run with --fresh to create it again and start over.",
                )
    if decision.action == "fresh" and not fresh:
        for plan in plans:
            stream = plan.source.stream
            if plan.rows_present and stream.write == "append" and stream.target not in copied:
                raise ConfigError(
                    f"Stream '{plan.source.stream.target}': the destination table "
                    f"'{plan.table.name}' already holds rows, and no progress of this "
                    "pipeline is recorded for them; copying would duplicate them.",
                    hint="Empty the table, write into another one with `name:`, or run "
                    "with --fresh to let milepost empty it.",
                )
