"""kill -9 at random moments loses nothing and doubles nothing, on every engine.

The real `milepost run` process is SIGKILLed after a random event (usually the k-th committed
batch, plus up to two batches' time, at most 30 ms, so the kill lands somewhere inside the next
batch or its ledger write; sometimes in the schema phase, at the start of the copy phase or
before the first batch; in the torture runs also once just after the last batch), then run
again, until a run exits 0. Each run after a kill must report that it took over the dead
runner's lease. The destination table has no primary key, so a batch written twice would stay
twice; it is compared with the source row by row, as a multiset, and the ledger's row count
with the source's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from faults import (
    assert_same_rows,
    create_destination,
    create_source,
    database,
    kill_and_resume,
    ledger_rows,
    make_rows,
    seeded,
    write_pipeline,
)

# (source, destination, workers, kills): every engine is a source and a destination; the
# PostgreSQL and MariaDB destinations take two chunks at once, so kills land with parallel
# batches in flight.
DEFAULT_PAIRS = [
    ("postgresql", "postgresql", 2, 1),
    ("mysql", "postgresql", 2, 1),
    ("sqlite", "postgresql", 2, 1),
    ("postgresql", "mysql", 2, 2),
    ("mysql", "sqlite", 1, 2),
]
ENGINES = ["postgresql", "mysql", "sqlite"]
TORTURE_PAIRS = [(s, d, 1 if d == "sqlite" else 2, 11) for s in ENGINES for d in ENGINES]


def _kill_copy_resume(
    tmp_path: Path,
    source_family: str,
    dest_family: str,
    *,
    rows: int,
    batch_size: int,
    workers: int,
    kills: int,
    max_batches: int,
    aim_at_the_end: bool = False,
) -> None:
    label = f"{source_family}->{dest_family}"
    rng, seed = seeded(label)
    context = f"{label} (seed {seed})"
    with (
        database(source_family, tmp_path, "src") as source,
        database(dest_family, tmp_path, "dst") as dest,
    ):
        create_source(source, make_rows(rows, seed))
        create_destination(dest)
        pipeline = write_pipeline(
            tmp_path, "kill", source, dest, batch_size=batch_size, workers=workers
        )
        started = time.monotonic()
        log = kill_and_resume(
            pipeline,
            dest,
            rng,
            kills,
            rows=rows,
            batch_size=batch_size,
            max_batches=max_batches,
            context=context,
            aim_at_the_end=aim_at_the_end,
        )
        print(f"{context}: {log} in {time.monotonic() - started:.1f} s")
        assert log.kills >= kills, f"{context}: the copy ended before every kill: {log}"
        copied = assert_same_rows(source, dest, f"{context} after {log}")
        assert copied == rows
        assert ledger_rows(dest, "kill") == rows, f"{context}: the ledger disagrees"


@pytest.mark.parametrize(
    ("source_family", "dest_family", "workers", "kills"),
    DEFAULT_PAIRS,
    ids=[f"{s}->{d}" for s, d, _, _ in DEFAULT_PAIRS],
)
def test_sigkill_then_rerun_copies_every_row_exactly_once(
    tmp_path: Path, source_family: str, dest_family: str, workers: int, kills: int
) -> None:
    _kill_copy_resume(
        tmp_path,
        source_family,
        dest_family,
        rows=30_000,
        batch_size=500,
        workers=workers,
        kills=kills,
        max_batches=12,
    )


@pytest.mark.torture
@pytest.mark.parametrize(
    ("source_family", "dest_family", "workers", "kills"),
    TORTURE_PAIRS,
    ids=[f"{s}->{d}" for s, d, _, _ in TORTURE_PAIRS],
)
def test_torture_many_sigkills_then_rerun_copies_every_row_exactly_once(
    tmp_path: Path, source_family: str, dest_family: str, workers: int, kills: int
) -> None:
    _kill_copy_resume(
        tmp_path,
        source_family,
        dest_family,
        rows=60_000,
        batch_size=250,
        workers=workers,
        kills=kills,
        max_batches=16,
        aim_at_the_end=True,
    )
