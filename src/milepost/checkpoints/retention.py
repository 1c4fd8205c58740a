"""Which checkpoints to delete: a pure function of their metadata, a policy and the time.

The rules, in the order they are applied (DESIGN.md: keep the last N, keep phase
boundaries, drop those older than a maximum age), with the protections an operator who
may need to restore or roll back would expect:

1. **The newest good checkpoint is never deleted**, however old: "good" means status
   `validated` or `active`; when there is none, the newest that is not `failed`. A
   run paused for a month still has its restore point.
2. **An `active` checkpoint is never deleted**: the run stands on it (it was just
   made, or the run was restored to it).
3. **The current run's rollback points are never deleted** by count or age, unless
   they failed validation: its `before_risky` checkpoints (a rollback of a destructive
   step needs them) and, with `keep_phase_boundaries`, its `phase` checkpoints
   (rollback undoes a phase). They go when the run is over: `keep_after_success`
   decides that, not retention. The current run is the newest good checkpoint's run
   unless the caller names it.
4. Among the rest, only those younger than `max_age_hours` (no limit when None) can be
   kept, and of those:
   a. `manual` ones: an operator asked for each by name; a stream of automatic
      checkpoints must not push them out.
   b. `phase` ones of earlier runs, with `keep_phase_boundaries`.
   c. the `keep_last` newest of everything else that did not fail (`automatic`,
      `pause`, `failure`, `before_risky` of earlier runs, `phase` without
      `keep_phase_boundaries`). The newest good checkpoint, when it is one of these,
      takes one of the places ("keep 5" keeps 5, not 6); rollback points, manual and
      phase checkpoints do not.
   d. the newest `failed` one, so the latest problem can still be inspected; failed
      documents never take a `keep_last` place and never protect anything.

Everything else is deleted. Ages are measured from `created_at`; exactly
`max_age_hours` old is still kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from milepost.checkpoints.model import CheckpointMeta

_GOOD = ("validated", "active")


class RetentionPolicy(BaseModel):
    """The `checkpoints.retention` section of a pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: int = Field(default=5, ge=1, le=10_000)
    keep_phase_boundaries: bool = True
    max_age_hours: float | None = Field(default=168, gt=0)


def newest_good(checkpoints: Sequence[CheckpointMeta]) -> CheckpointMeta | None:
    """The checkpoint a restore would pick by default (rule 1)."""
    ordered = sorted(checkpoints, key=_order, reverse=True)
    for c in ordered:
        if c.status in _GOOD:
            return c
    return next((c for c in ordered if c.status != "failed"), None)


def select_for_deletion(
    checkpoints: Sequence[CheckpointMeta],
    policy: RetentionPolicy,
    now: dt.datetime,
    *,
    current_run_id: str | None = None,
) -> list[str]:
    """The ids to delete, oldest first (see the module's rules)."""
    ordered = sorted(checkpoints, key=_order, reverse=True)  # newest first
    best = newest_good(ordered)
    current = current_run_id if current_run_id is not None else (best.run_id if best else None)
    limit = None if policy.max_age_hours is None else dt.timedelta(hours=policy.max_age_hours)

    keep: set[str] = set()
    pool: list[CheckpointMeta] = []
    newest_failed: CheckpointMeta | None = None
    for c in ordered:
        young = limit is None or now - c.created_at <= limit
        if c is best or c.status == "active":  # rules 1 and 2
            keep.add(c.id)
        if c.status == "failed":
            if newest_failed is None:
                newest_failed = c
                if young:
                    keep.add(c.id)
        elif c.run_id == current and (
            c.kind == "before_risky" or (c.kind == "phase" and policy.keep_phase_boundaries)
        ):
            keep.add(c.id)
        elif not young:
            continue
        elif c.kind == "manual" or (c.kind == "phase" and policy.keep_phase_boundaries):
            keep.add(c.id)
        else:
            pool.append(c)  # the newest good one takes a place too: "keep 5" keeps 5
    keep.update(c.id for c in pool[: policy.keep_last])
    return [c.id for c in reversed(ordered) if c.id not in keep]


def _order(c: CheckpointMeta) -> tuple[dt.datetime, str]:
    # Ids sort by time too; they break ties between equal created_at.
    return (c.created_at, c.id)
