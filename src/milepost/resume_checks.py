"""The checks a resumed run makes before copying on: has the source drifted since its
rows were copied, and how old is the progress it resumes?

`recovery` judges (a pure function of facts); this gathers the facts from the source
(index lookups, and a count only when the planner's estimate calls for one) and acts
on the verdict. A failure while gathering them is raised like any error (and retried
when transient): it is never taken for drift and never discards progress.
"""

from __future__ import annotations

import time
from typing import Any

from milepost import ledger, recovery, schema
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.config import Pipeline
from milepost.errors import ResumeRefused
from milepost.events import Event, Listener


def check_resume(
    p: Pipeline,
    src: Any,
    dst: Any,
    before: ledger.RunRow,
    plans: list[schema.DestinationPlan],
    keeper: CheckpointKeeper,
    emit: Listener,
) -> None:
    """Resume never trusts blindly: a stream whose source drifted since its rows were
    copied is refused (--strict) or started over, with a warning that says why."""
    recorded = {s.stream: s for s in ledger.read_streams(dst, p.name)}
    chunks = ledger.read_chunks(dst, p.name)
    facts = []
    for plan in plans:
        name = plan.source.stream.target
        mine = [c for c in chunks if c.stream == name]
        if not mine or all(c.status == "done" for c in mine):
            continue
        if plan.source.stream.kind in ("endpoint", "python"):
            continue  # an API or a generator has no cursor range to check (page_streams.py)
        written = sum(c.rows_written for c in mine)
        table = plan.source.relation(src)
        where = plan.source.range()
        low, _ = src.cursor_bounds(plan.source.reader(src), plan.source.cursor, where)
        counted = None
        estimate = plan.source.estimate_rows(src)
        if estimate is not None and estimate < written // 2:
            # Estimates go stale; count before calling it drift.
            query, params = where.sql(src.keyset(plan.source.cursor))
            counted = int(src.query(f"SELECT count(*) FROM {table} WHERE {query}", params)[0][0])
        rec = recorded.get(name)
        facts.append(
            recovery.StreamFacts(
                name, written, rec.min_cursor if rec else None, low, low is None, counted
            )
        )
    for drift in recovery.find_drift(facts):
        if p.strict:
            raise ResumeRefused(
                f"Stream '{drift.stream}': {drift.reason}.",
                hint="Without --strict, milepost warns and copies that stream again from "
                "the start.",
            )
        emit(
            Event(
                "message",
                stream=drift.stream,
                text=f"warning: stream '{drift.stream}': {drift.reason}; copying it again "
                "from the start",
            )
        )
        upsert = any(s.target == drift.stream and s.write == "upsert" for s in p.streams)
        with dst.transaction():
            if not upsert:  # an upsert stream's table holds rows of its own: upserted again
                dst.execute(f"DELETE FROM {dst.quote(drift.stream)}")
            ledger.restart_stream(dst, p.name, drift.stream)
    saved = before.updated_at
    try:
        latest = keeper.latest_good(before.run_id)
        if latest is not None:
            saved = latest.created_at.timestamp()
    except Exception as exc:  # the ledger is the truth; checkpoints only inform here
        emit(Event("message", text=f"checkpoints not read: {exc}"))
    warning = recovery.age_warning(saved, time.time(), p.checkpoints.retention.max_age_hours)
    if warning:
        emit(Event("message", text=f"warning: {warning}"))
