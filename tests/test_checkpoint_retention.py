"""Retention: one test per rule of `milepost.checkpoints.retention`, then properties that
must hold for any set of checkpoints and any policy."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milepost.checkpoints import CheckpointMeta, RetentionPolicy, newest_good, select_for_deletion

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
KINDS = ["automatic", "manual", "phase", "before_risky", "pause", "failure"]
STATUSES = ["created", "validated", "active", "superseded", "failed"]


def meta(
    cid: str,
    hours_ago: float,
    kind: str = "automatic",
    status: str = "validated",
    run: str = "r2",
) -> CheckpointMeta:
    return CheckpointMeta(
        id=cid,
        run_id=run,
        kind=kind,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        created_at=NOW - dt.timedelta(hours=hours_ago),
    )


def deleted(cps: list[CheckpointMeta], **policy: object) -> list[str]:
    return select_for_deletion(cps, RetentionPolicy(**policy), NOW)  # type: ignore[arg-type]


def test_keep_last_keeps_the_newest_and_deletes_oldest_first() -> None:
    cps = [meta(f"c{i}", hours_ago=10 - i) for i in range(8)]  # c7 newest
    assert deleted(cps, keep_last=3) == ["c0", "c1", "c2", "c3", "c4"]


def test_the_newest_good_checkpoint_survives_any_age() -> None:
    cps = [meta("old", 1000), meta("older", 2000)]
    assert deleted(cps, max_age_hours=24) == ["older"]


def test_good_means_validated_or_active_before_merely_created() -> None:
    cps = [
        meta("good", 500, status="validated"),
        meta("unchecked", 400, status="created"),
        meta("broken", 300, status="failed"),
    ]
    assert newest_good(cps).id == "good"  # type: ignore[union-attr]
    assert deleted(cps, max_age_hours=24) == ["unchecked", "broken"]
    only_created = [meta("a", 500, status="created"), meta("b", 400, status="created")]
    assert deleted(only_created, max_age_hours=24) == ["a"]


def test_an_active_checkpoint_is_never_deleted() -> None:
    cps = [meta("restored-to", 900, status="active"), *[meta(f"n{i}", i) for i in range(5)]]
    assert "restored-to" not in deleted(cps, keep_last=1, max_age_hours=1)


def test_the_current_runs_rollback_points_stay_whatever_their_age_or_number() -> None:
    cps = [
        meta("risky", 900, kind="before_risky"),
        meta("phase", 800, kind="phase"),
        meta("risky-failed", 700, kind="before_risky", status="failed"),
        *[meta(f"n{i}", i) for i in range(5)],
    ]
    gone = deleted(cps, keep_last=1, max_age_hours=24)
    assert "risky" not in gone and "phase" not in gone
    assert "risky-failed" in gone
    # Without keep_phase_boundaries a phase checkpoint is an ordinary one.
    assert "phase" in deleted(cps, keep_last=1, max_age_hours=24, keep_phase_boundaries=False)


def test_earlier_runs_rollback_points_age_out() -> None:
    cps = [
        meta("old-risky", 30, kind="before_risky", run="r1"),
        meta("old-phase-young", 10, kind="phase", run="r1"),
        meta("old-phase-old", 300, kind="phase", run="r1"),
        meta("now", 1),
    ]
    assert deleted(cps, keep_last=1, max_age_hours=100) == ["old-phase-old", "old-risky"]


def test_the_current_run_can_be_named() -> None:
    cps = [meta("r1-risky", 300, kind="before_risky", run="r1"), meta("r2-now", 1, run="r2")]
    policy = RetentionPolicy(keep_last=1, max_age_hours=24)
    assert select_for_deletion(cps, policy, NOW) == ["r1-risky"]
    assert select_for_deletion(cps, policy, NOW, current_run_id="r1") == []


def test_manual_checkpoints_are_not_pushed_out_by_automatic_ones() -> None:
    cps = [meta("by-hand", 5, kind="manual"), *[meta(f"n{i}", i / 10) for i in range(10)]]
    gone = deleted(cps, keep_last=2, max_age_hours=24)
    assert "by-hand" not in gone and len(gone) == 8
    assert "by-hand" in deleted(cps, keep_last=2, max_age_hours=4)  # but they do age out


def test_only_the_newest_failed_one_is_kept_for_inspection() -> None:
    cps = [
        meta("good", 3),
        meta("f-old", 2, status="failed"),
        meta("f-new", 1, status="failed"),
    ]
    assert deleted(cps, keep_last=5) == ["f-old"]
    assert deleted(cps, keep_last=5, max_age_hours=0.5) == ["f-old", "f-new"]


def test_failed_ones_do_not_take_keep_last_places() -> None:
    cps = [
        meta("a", 3),
        meta("b", 2),
        *[meta(f"f{i}", 1 - i / 10, status="failed") for i in range(3)],
    ]
    assert deleted(cps, keep_last=2) == ["f0", "f1"]


def test_exactly_max_age_is_still_kept() -> None:
    cps = [meta("edge", 24), meta("past", 24.001), meta("now", 0)]
    assert deleted(cps, max_age_hours=24) == ["past"]


def test_no_age_limit_and_nothing_to_do() -> None:
    cps = [meta(f"c{i}", 10_000 + i) for i in range(3)]
    assert deleted(cps, max_age_hours=None) == []
    assert deleted([], keep_last=1) == []


def test_policy_defaults_and_limits() -> None:
    policy = RetentionPolicy()
    assert (policy.keep_last, policy.keep_phase_boundaries, policy.max_age_hours) == (5, True, 168)
    with pytest.raises(ValueError):
        RetentionPolicy(keep_last=0)
    with pytest.raises(ValueError):
        RetentionPolicy(max_age_hours=0)


# --- properties ------------------------------------------------------------------------------


@st.composite
def checkpoint_sets(draw: st.DrawFn) -> list[CheckpointMeta]:
    n = draw(st.integers(0, 25))
    return [
        meta(
            f"c{i:02d}",
            hours_ago=draw(st.floats(0, 400, allow_nan=False)),
            kind=draw(st.sampled_from(KINDS)),
            status=draw(st.sampled_from(STATUSES)),
            run=draw(st.sampled_from(["r1", "r2"])),
        )
        for i in range(n)
    ]


policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(1, 6),
    keep_phase_boundaries=st.booleans(),
    max_age_hours=st.none() | st.floats(0.5, 300),
)


def protected(c: CheckpointMeta, cps: list[CheckpointMeta], policy: RetentionPolicy) -> bool:
    best = newest_good(cps)
    current = best.run_id if best else None
    return (
        c is best
        or c.status == "active"
        or c.status == "failed"  # at most one is kept; it takes no keep_last place
        or c.kind == "manual"
        or (c.kind == "phase" and policy.keep_phase_boundaries)
        or (c.kind == "before_risky" and c.run_id == current)
    )


@settings(max_examples=300, deadline=None)
@given(cps=checkpoint_sets(), policy=policies)
def test_retention_properties(cps: list[CheckpointMeta], policy: RetentionPolicy) -> None:
    gone = select_for_deletion(cps, policy, NOW)
    ids = {c.id for c in cps}
    assert set(gone) <= ids and len(gone) == len(set(gone))
    kept = [c for c in cps if c.id not in gone]

    best = newest_good(cps)
    if best is not None:
        assert best.id not in gone  # the newest good checkpoint is never deleted
    assert all(c.id not in gone for c in cps if c.status == "active")
    if any(c.status != "failed" for c in cps):
        assert any(c.status != "failed" for c in kept)  # a restore point always remains

    ordinary = [c for c in kept if not protected(c, cps, policy)]
    assert len(ordinary) <= policy.keep_last
    # ... and the keep_last newest young ones of those kinds are all kept.
    limit = policy.max_age_hours
    candidates = sorted(
        (
            c
            for c in cps
            if c.status != "failed"
            and (limit is None or NOW - c.created_at <= dt.timedelta(hours=limit))
            and not (c.kind == "manual" or (c.kind == "phase" and policy.keep_phase_boundaries))
        ),
        key=lambda c: (c.created_at, c.id),
        reverse=True,
    )
    assert all(c.id not in gone for c in candidates[: policy.keep_last])
    # Past max_age only the newest good, active ones and the current run's rollback
    # points remain.
    if limit is not None:
        current = best.run_id if best else None
        for c in kept:
            if NOW - c.created_at > dt.timedelta(hours=limit):
                assert (
                    c is best
                    or c.status == "active"
                    or (
                        c.run_id == current
                        and c.status != "failed"
                        and (
                            c.kind == "before_risky"
                            or (c.kind == "phase" and policy.keep_phase_boundaries)
                        )
                    )
                ), c
    assert len([c for c in kept if c.status == "failed"]) <= 1

    # Deleting is done in one pass: the survivors are all kept next time.
    assert select_for_deletion(kept, policy, NOW) == []
    # More room never deletes more.
    roomier = policy.model_copy(update={"keep_last": policy.keep_last + 1})
    assert set(select_for_deletion(cps, roomier, NOW)) <= set(gone)
