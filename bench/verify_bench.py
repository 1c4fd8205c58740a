"""Verify benchmark: what `milepost verify` costs, against the copy it checks.

Run it with `make bench` (after the copy benchmark), i.e.
`.venv/bin/python bench/verify_bench.py [--rows N] [--repeat K] [--first M]`.

The figures the verify issue asks for: verifying the copy benchmark's 2,000,000-row
table takes at most 25% of the time of copying it when source and destination are the
same engine, and at most 100% across engines. Per pair of engines, into PostgreSQL:

- PostgreSQL -> PostgreSQL, same engine (method "in-database" when milepost created the
  source's column types: each type's own hash, summed inside both servers);
- MariaDB -> PostgreSQL, cross engine ("in-database (canonical text)": MD5 of one
  canonical text per row, inside each server);
- SQLite -> PostgreSQL, cross engine ("client" when this was written: rows streamed and
  hashed by milepost).

The method is milepost's choice, not this script's: each run's is read from the JSON
and reported.

Each round runs, per pair and in that order, into a freshly created destination
database (after a CHECKPOINT):

1. the copy: `milepost run <pipeline> --progress none`, with `verify: {mode: off}` in the
   pipeline so that the run's own verify phase is skipped and the copy is timed alone;
   then its row count and a content fingerprint (sums over every column) are checked
   against the source, so that a verdict of the verification can be judged;
2. the verification: `milepost verify <pipeline> --json`, timed as a whole process
   (start-up included) under `/usr/bin/time` for its peak RSS and CPU time. Its JSON
   must say `equal` with source_rows == destination_rows == the source's rows; the
   method and `settled_by_value` (ranges whose canonical text differed but whose values
   were equal when compared on the client) are recorded.

Both commands use the pipeline's default workers (2) and batch size (10,000). Each figure
is the median of K rounds; the ratio is median verify time / median copy time per pair.
A verification that is not equal is not a benchmark failure to stop on but a bug: it is
logged, its JSON kept in bench/work/, and the report marks it.

--first M copies and verifies only the rows with id <= M (a `where` on the stream, the
same on every engine), for a quick end-to-end check of the script; such a run is labelled
a smoke run in its report and is not the issue's figure.

It reuses the copy benchmark's cached sources and helpers, and, like it, measures a copy
of src/milepost taken when it starts. Results go to bench/results/verify.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_bench as cb

RESULTS = cb.REPO / "bench" / "results" / "verify.md"
WORKERS = 2  # the pipeline default
EXIT_MISMATCH = 4  # `milepost verify` when the sides differ


@dataclass(frozen=True)
class Pair:
    key: str  # as in copy_bench.SOURCES
    title: str
    engines: str  # "same engine" or "cross engine"
    target: float  # verify time / copy time, at most


PAIRS = [
    Pair("pg", "PostgreSQL → PostgreSQL", "same engine", 0.25),
    Pair("mariadb", "MariaDB → PostgreSQL", "cross engine", 1.00),
    Pair("sqlite", "SQLite → PostgreSQL", "cross engine", 1.00),
]


@dataclass
class Round:
    """One copy and the verification of it."""

    copy_s: float
    copy_rss_mb: float
    copy_cpu_s: float
    content_ok: bool
    verify_s: float
    verify_rss_mb: float
    verify_cpu_s: float
    compare_s: float  # the JSON's `seconds`: the comparing alone, start-up excluded
    equal: bool
    rows_ok: bool
    method: str
    settled_by_value: int
    chunks_compared: int
    load: float

    @property
    def ok(self) -> bool:
        return self.equal and self.rows_ok


@dataclass
class Outcome:
    pair: Pair
    pipeline: Path
    rounds: list[Round] = field(default_factory=list)

    def values(self, name: str) -> list[float]:
        return [getattr(r, name) for r in self.rounds]

    def median(self, name: str) -> float:
        return statistics.median(self.values(name))

    @property
    def ratio(self) -> float:
        return self.median("verify_s") / self.median("copy_s")


def write_pipeline(pair: Pair, where: str | None) -> Path:
    """The copy benchmark's pipeline for this pair (2 workers, batch size 10,000), with
    the run's own verify phase off."""
    path = cb.write_pipeline(
        f"bench_verify_{pair.key}", cb.SOURCES[pair.key], cb.TABLE, WORKERS, where
    )
    doc = json.loads(path.read_text())
    doc["verify"] = {"mode": "off"}
    path.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
    return path


def timed(
    args: list[str], label: str, ok_codes: tuple[int, ...] = (0,)
) -> tuple[float, float, float, str, int]:
    """Wall time, peak RSS (MB), CPU (user + sys) of one milepost process; its stdout and
    exit code. /usr/bin/time reports the process it waits for, not this script."""
    stats = cb.WORK / "time.txt"
    stats.unlink(missing_ok=True)
    command = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(stats), str(cb.MILEPOST), *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in ok_codes:
        raise SystemExit(
            f"{label}: `{' '.join(command[5:])}` exited {done.returncode}\n{done.stderr.strip()}"
        )
    rss_kb, user, system = stats.read_text().split()[-3:]
    return seconds, int(rss_kb) / 1024, float(user) + float(system), done.stdout, done.returncode


def one_round(o: Outcome, rows: int, expected: tuple[Any, ...], round_: int, repeat: int) -> Round:
    label = f"round {round_}/{repeat} {o.pair.key}"
    load = os.getloadavg()[0]
    cb.fresh_destination()
    copy_s, copy_rss, copy_cpu, _, _ = timed(
        ["run", str(o.pipeline), "--progress", "none"], f"{label} copy"
    )
    content_ok = cb.check_copy(cb.TABLE, expected, f"{label} copy")
    verify_s, verify_rss, verify_cpu, out, code = timed(
        ["verify", str(o.pipeline), "--json"], f"{label} verify", (0, EXIT_MISMATCH)
    )
    try:
        doc = json.loads(out)
    except json.JSONDecodeError as exc:
        raise SystemExit(
            f"{label}: `milepost verify --json` printed no JSON ({exc}):\n{out}"
        ) from None
    streams = doc["streams"]
    src_rows = sum(s["source_rows"] for s in streams)
    dst_rows = sum(s["destination_rows"] for s in streams)
    rows_ok = src_rows == dst_rows == rows
    equal = bool(doc["equal"]) and code == 0
    if not (equal and rows_ok):
        kept = cb.WORK / f"verify-{o.pair.key}-round{round_}.json"
        kept.write_text(out)
        cb.log(
            f"WARNING {label}: verify says equal={doc['equal']} (exit {code}), source_rows "
            f"{src_rows:,}, destination_rows {dst_rows:,}, expected {rows:,}; JSON kept in "
            f"{kept.relative_to(cb.REPO)}"
        )
    methods = sorted({s["method"] for s in streams})
    r = Round(
        copy_s=copy_s,
        copy_rss_mb=copy_rss,
        copy_cpu_s=copy_cpu,
        content_ok=content_ok,
        verify_s=verify_s,
        verify_rss_mb=verify_rss,
        verify_cpu_s=verify_cpu,
        compare_s=float(doc["seconds"]),
        equal=equal,
        rows_ok=rows_ok,
        method=", ".join(methods),
        settled_by_value=sum(s["settled_by_value"] for s in streams),
        chunks_compared=sum(s["chunks_compared"] for s in streams),
        load=load,
    )
    cb.log(
        f"{label}: copy {copy_s:.2f} s, verify {verify_s:.2f} s "
        f"({verify_s / copy_s:.2f}x, {r.method}, peak RSS {verify_rss:.0f} MB, "
        f"{'equal' if r.ok else 'NOT EQUAL'})"
    )
    return r


def measure(outcomes: list[Outcome], rows: int, expected: tuple[Any, ...], repeat: int) -> None:
    """Per round every pair once, copy then verify: drift hits copy and verify alike."""
    for round_ in range(1, repeat + 1):
        for o in outcomes:
            o.rounds.append(one_round(o, rows, expected, round_, repeat))


# --- the report -------------------------------------------------------------------------


def verdict(o: Outcome) -> str:
    ok = o.ratio <= o.pair.target and all(r.ok for r in o.rounds)
    return "✅" if ok else "❌"


def result(o: Outcome) -> str:
    bad = [r for r in o.rounds if not r.ok]
    if not bad:
        return "equal, rows match"
    return f"**NOT EQUAL in {len(bad)}/{len(o.rounds)} rounds**"


def content(o: Outcome) -> str:
    bad = sum(not r.content_ok for r in o.rounds)
    return "same as source" if not bad else f"**differs in {bad}/{len(o.rounds)} runs**"


def summary_table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| pair | method | copy, median (min-max) | verify, median (min-max) "
        "| ratio verify/copy | target | verify peak RSS, median (max) | verify CPU, median "
        "| comparing alone (JSON `seconds`) | settled by value | verify result | copy content |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        methods = sorted({r.method for r in o.rounds})
        rss = o.values("verify_rss_mb")
        settled = sorted({r.settled_by_value for r in o.rounds})
        lines.append(
            f"| {o.pair.title} ({o.pair.engines}) | {' / '.join(methods)} "
            f"| {cb.fmt_range(o.values('copy_s'), digits=2)} "
            f"| {cb.fmt_range(o.values('verify_s'), digits=2)} "
            f"| **{cb.fmt_ratio(o.ratio, o.pair.target)}** "
            f"| ≤ {o.pair.target:.2f} {verdict(o)} "
            f"| {statistics.median(rss):.0f} MB ({max(rss):.0f}) "
            f"| {o.median('verify_cpu_s'):.1f} s "
            f"| {cb.fmt_range(o.values('compare_s'), digits=2)} "
            f"| {', '.join(str(s) for s in settled)} | {result(o)} | {content(o)} |"
        )
    return lines


def samples_section(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "### Every round",
        "",
        "| pair | round | load (1 min) at its start | copy | copy peak RSS | verify "
        "| verify/copy | verify peak RSS | verify CPU | chunks compared | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        for i, r in enumerate(o.rounds, 1):
            lines.append(
                f"| {o.pair.title} | {i} | {r.load:.2f} | {r.copy_s:.2f} s "
                f"| {r.copy_rss_mb:.0f} MB | {r.verify_s:.2f} s | {r.verify_s / r.copy_s:.3f} "
                f"| {r.verify_rss_mb:.0f} MB | {r.verify_cpu_s:.1f} s | {r.chunks_compared} "
                f"| {'equal' if r.ok else '**NOT EQUAL**'} |"
            )
    return [*lines, ""]


def write_report(
    command: str,
    env: dict[str, str],
    rows: int,
    first: int | None,
    repeat: int,
    outcomes: list[Outcome],
) -> None:
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    if first is None:
        table = f"`{cb.TABLE}`, {rows:,} rows ({env['pg_size']} in PostgreSQL with its primary key)"
        smoke: list[str] = []
    else:
        table = f"`{cb.TABLE}` restricted by `where: id <= {first}`, {rows:,} rows"
        smoke = [
            f"**Smoke run** on the first {rows:,} rows only (`--first {first}`): it shows the "
            "script works end to end, not the issue's figure, which is for the whole table.",
            "",
        ]
    lines = [
        "# Verify benchmark: `milepost verify` against the copy it checks",
        "",
        f"Produced by `{command}` (`make bench` runs it with the defaults), on {env['date']}.",
        "",
        *smoke,
        f"Code measured: {env['code']}, copied aside when the run started.",
        "",
        f"- Machine: `nproc` = {env['nproc']}, shared with other work; load average 1/5/15 min "
        f"at the start {env['load']}, at the end {end_load}. Only ratios measured in this run "
        "are meaningful.",
        f"- Servers: PostgreSQL {env['postgres']}, MariaDB {env['mariadb']}, "
        f"SQLite {env['sqlite']}; all local. The destination is PostgreSQL for every pair.",
        f"- Table: {table}: the copy benchmark's (id bigint key, NULLs, non-ASCII text, tabs, "
        f"newlines, backslashes, numeric(12,2), timestamptz, jsonb of ~{env['payload']} bytes); "
        f"the PostgreSQL source's types: `{env['types']}`.",
        f"- Each figure is the median of {repeat} round(s). One round runs, per pair in the "
        "order listed, into a freshly created database after a CHECKPOINT: the copy, "
        "`milepost run <pipeline.yml> --progress none` with `verify: {mode: off}` (the run's "
        "own verify phase skipped, so the copy is timed alone), then the verification, "
        "`milepost verify <pipeline.yml> --json`. Both are timed as a whole process (start-up, "
        f"reflection, ledger and all), with the pipeline's defaults: {WORKERS} workers, "
        "batch size 10,000.",
        "- Ratio = median verify time / median copy time of the pair.",
        "- Every copy's row count is checked against the source (the script stops otherwise) "
        "and its content compared by sums over every column (copy content). Every "
        "verification's JSON must say `equal`, exit 0, with source_rows == destination_rows "
        "== the source's rows (verify result).",
        "- Peak RSS and CPU (user + sys) are the `milepost verify` process's own, from "
        "`/usr/bin/time`, the servers excluded: the in-database methods sum inside the "
        "servers, the client method in milepost. Comparing alone is the JSON's `seconds`: "
        "the verification without process start-up, connecting and reflecting. Settled by "
        "value: ranges whose canonical text differed but whose values were equal when "
        "re-read and compared on the client (each costs a client pass over the range).",
        "",
        "Targets: same engine, verify ≤ 25% of the copy's time; cross engine, ≤ 100%.",
        "",
        *summary_table(outcomes),
        "",
        *samples_section(outcomes),
        "Pipelines (in bench/work/): "
        + "; ".join(f"{o.pair.title} `{o.pipeline.name}`" for o in outcomes)
        + ".",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines).rstrip() + "\n")


# --- main --------------------------------------------------------------------------------


def expected_fingerprint(where: str | None) -> tuple[Any, ...]:
    """The PostgreSQL source's fingerprint of the rows the pipelines copy (all sources
    hold the same data: MariaDB and SQLite are loaded from it)."""
    if where is None:
        return cb.fingerprint(cb.SRC_DB, cb.TABLE)
    return cb.fingerprint(cb.SRC_DB, f"(SELECT * FROM {cb.TABLE} WHERE {where}) AS subset")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=2_000_000, help="rows in the (cached) source table"
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument(
        "--first",
        type=int,
        default=None,
        metavar="M",
        help="smoke run: copy and verify only the rows with id <= M",
    )
    args = parser.parse_args()
    cb.WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()  # before this script adds its own load
    code = cb.snapshot_code()
    os.environ["PYTHONPATH"] = str(cb.SNAPSHOT)  # inherited by every milepost process
    cb.check_snapshot_imported()
    cb.build_sources(args.rows)
    env = cb.environment(load, code)
    where = None if args.first is None else f"id <= {args.first}"
    expected = expected_fingerprint(where)
    rows = int(expected[0])
    outcomes = [Outcome(p, write_pipeline(p, where)) for p in PAIRS]
    try:
        measure(outcomes, rows, expected, args.repeat)
    finally:
        cb.drop_destination()
    write_report(cb.command_line(), env, rows, args.first, args.repeat, outcomes)
    cb.log(f"wrote {RESULTS.relative_to(cb.REPO)}")
    for o in outcomes:
        cb.log(
            f"{o.pair.title}: verify/copy {o.ratio:.3f} (target ≤ {o.pair.target:.2f}) "
            f"{verdict(o)}; {result(o)}"
        )


if __name__ == "__main__":
    main()
