"""Incremental benchmark: query streams, write modes and incremental runs against the raw pipe.

Run it with `make bench` (after the copy benchmark), i.e.
`.venv/bin/python bench/incremental_bench.py [--rows N] [--repeat K] [--first M]`.

What issue 6's features cost on the copy benchmark's 2,000,000-row PostgreSQL table,
copied PostgreSQL -> PostgreSQL with the pipeline defaults (2 workers, batch size
10,000) and `verify: {mode: off}`, so that the copy is timed alone. The cases:

1. `append`: a `table:` stream into an empty table, the baseline milepost copy;
2. `upsert`, into an empty table (each batch COPYed into a TEMP staging table, then
   merged with `INSERT ... ON CONFLICT DO UPDATE`);
3. `upsert` over a destination that already holds every row, each with another
   `quantity` (so every row is an update, and the fingerprint proves it was made); the
   table is filled by a raw pipe, vacuumed and analyzed before the timed run;
4. a `query:` stream selecting the same columns with a WHERE that keeps every row (the
   merged rewrite: the keyset condition ANDed into the query's own WHERE), append into
   an empty table;
5. `mode: incremental`: the second run when nothing is new (an hourly no-op run);
6. `mode: incremental`: the second run after N/100 (20,000) new rows were inserted.

Cases 5 and 6 read their own copy of the source table, `milepost_bench_inc` in the
source database (created when the script starts, dropped when it ends), since rows are
inserted into it; the copy benchmark's cached `orders` is never modified. Their first
run, which copies the whole table, is not timed.

Every case is timed as a whole `milepost run` process (start-up included) under
`/usr/bin/time` for its peak RSS and CPU time. One round runs the raw pipe
(`COPY ... TO STDOUT (FORMAT binary) | COPY ... FROM STDIN (FORMAT binary)`, as in the
copy benchmark) and then every case, each into a freshly created destination database
after a CHECKPOINT; the ratio of a round is milepost's time / that round's pipe time,
and each figure is the median of K rounds. After each case the destination's row count
and content fingerprint (sums over every column) are checked against its source.

At the end, evidence of where upsert's time goes: one batch (10,000 rows) is COPYed into
milepost's own staging table and merged with milepost's own statement under
`EXPLAIN (ANALYZE, BUFFERS, WAL)`, into an empty table and into a full one (rolled back).

--first M restricts every case to the rows with id <= M, for a quick check of the
script (a smoke run, labelled so in its report). Like the other benchmarks it reuses
the copy benchmark's cached sources and helpers and measures a copy of src/milepost
taken when it starts. Results go to bench/results/incremental.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_bench as cb
import verify_bench as vb

RESULTS = cb.REPO / "bench" / "results" / "incremental.md"
WORKERS = 2  # the pipeline default
INC_TABLE = "milepost_bench_inc"
COLUMNS = "id, customer_id, quantity, status, note, amount, created_at, payload"
BATCH = 10_000


# --- the source ---------------------------------------------------------------------------


def subset(where: str | None) -> str:
    """The rows a case copies, as a FROM item."""
    if where is None:
        return cb.TABLE
    return f"(SELECT * FROM {cb.TABLE} WHERE {where}) AS subset"


def build_inc_table(where: str | None) -> int:
    """Our own copy of the source rows, with its primary key; returns its largest id."""
    cb.log(f"creating {cb.SRC_DB}.{INC_TABLE} (a copy of {cb.TABLE})")
    with cb.pg(cb.SRC_DB) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {INC_TABLE}")
        conn.execute(f"CREATE TABLE {INC_TABLE} (LIKE {cb.TABLE} INCLUDING ALL)")
        filt = f" WHERE {where}" if where else ""
        conn.execute(f"INSERT INTO {INC_TABLE} SELECT * FROM {cb.TABLE}{filt}")
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {INC_TABLE}")
    return int(cb.pg_value(cb.SRC_DB, f"SELECT max(id) FROM {INC_TABLE}"))


def reset_inc_table(base_max: int) -> None:
    """Back to the base rows: the new rows of an earlier round are deleted and vacuumed."""
    with cb.pg(cb.SRC_DB) as conn:
        gone = conn.execute(f"DELETE FROM {INC_TABLE} WHERE id > {base_max}").rowcount
        if gone:
            conn.execute(f"VACUUM (ANALYZE) {INC_TABLE}")


def insert_new_rows(base_max: int, count: int) -> None:
    """`count` rows after the largest id, made by the copy benchmark's own generator."""
    generated = "generate_series(1, {rows})"
    assert generated in cb.PG_FILL, "copy_bench.PG_FILL changed shape"
    fill = cb.PG_FILL.replace(generated, f"generate_series({base_max + 1}, {base_max + count})")
    with cb.pg(cb.SRC_DB) as conn:
        conn.execute(fill.format(table=INC_TABLE))
        conn.execute("CHECKPOINT")


def drop_inc_table() -> None:
    with cb.pg(cb.SRC_DB) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {INC_TABLE}")


# --- the pipelines ------------------------------------------------------------------------


def pipeline(name: str, table: str, where: str | None, /, **stream: Any) -> Path:
    """The copy benchmark's pipeline (defaults, verify off) with the stream's keys changed."""
    path = cb.write_pipeline(f"bench_inc_{name}", cb.SOURCES["pg"], table, WORKERS, where)
    doc = json.loads(path.read_text())
    doc["streams"][0].update(stream)
    doc["streams"][0] = {k: v for k, v in doc["streams"][0].items() if v is not None}
    doc["workers"] = WORKERS
    path.write_text(json.dumps(doc, indent=2) + "\n")  # JSON is YAML
    return path


def query_text(where: str | None) -> str:
    """Same columns as the table, a WHERE evaluated on every row that keeps them all."""
    cond = "quantity > 0" + (f" AND {where}" if where else "")
    return f"SELECT {COLUMNS} FROM {cb.TABLE} WHERE {cond}"


def fill_stale(where: str | None, expected: tuple[Any, ...]) -> None:
    """A fresh destination holding every source row with another quantity; vacuumed and
    analyzed, as a live table is. An upsert over it must update every row."""
    changed = COLUMNS.replace("quantity", "quantity + 1")
    cb.fresh_destination(cb.TABLE)
    cb.shell(
        f"{cb._SRC_PG} -c 'COPY (SELECT {changed} FROM {subset(where)}) TO STDOUT "
        f"(FORMAT binary)' | {cb._DST_PG} -c 'COPY {cb.TABLE} FROM STDIN (FORMAT binary)'"
    )
    with cb.pg(cb.DST_DB) as conn:
        conn.execute(f"VACUUM (ANALYZE) {cb.TABLE}")
        conn.execute("CHECKPOINT")
    stale = cb.fingerprint(cb.DST_DB, cb.TABLE)
    if stale[0] != expected[0] or stale == expected:
        raise SystemExit(f"the stale destination is not what case 3 needs: {stale}")


# --- the cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    table: str  # destination table, checked afterwards
    pipeline: Path | None  # None: the raw pipe
    pipe: str | None
    prepare: Callable[[], None]  # untimed: a fresh destination and whatever else
    expected: Callable[[], tuple[Any, ...]]  # the source's fingerprint, after prepare


@dataclass
class Sample:
    seconds: float
    rss_mb: float = 0.0
    cpu_s: float = 0.0
    content_ok: bool = True
    ratio: float = 0.0  # seconds / the round's pipe seconds
    load: float = 0.0


@dataclass
class Outcome:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    path: str = ""

    def values(self, name: str) -> list[float]:
        return [getattr(s, name) for s in self.samples]


class Bench:
    """The cases and the state they share: the subset copied and the inc table's size."""

    def __init__(self, where: str | None, base_max: int, new_rows: int) -> None:
        self.where = where
        self.base_max = base_max
        self.new_rows = new_rows
        self.expected = cb.fingerprint(cb.SRC_DB, subset(where))
        select = f"SELECT * FROM {cb.TABLE}" + (f" WHERE {where}" if where else "")
        self.pipe = (
            f"{cb._SRC_PG} -c 'COPY ({select}) TO STDOUT (FORMAT binary)' | "
            f"{cb._DST_PG} -c 'COPY {cb.TABLE} FROM STDIN (FORMAT binary)'"
        )
        if where is None:
            assert self.pipe == cb.PIPES["pg"], "the pipe must be the copy benchmark's"
        self.inc = pipeline("incremental", INC_TABLE, None, cursor=["id"], mode="incremental")

    def cases(self) -> list[Case]:
        exp = lambda: self.expected  # noqa: E731
        fresh = cb.fresh_destination
        return [
            Case("pipe", "raw binary COPY pipe", cb.TABLE, None, self.pipe, self.pipe_prepare, exp),
            Case(
                "append",
                "1. table stream, append, into an empty table",
                cb.TABLE,
                pipeline("append", cb.TABLE, self.where),
                None,
                fresh,
                exp,
            ),
            Case(
                "upsert-empty",
                "2. table stream, upsert, into an empty table",
                cb.TABLE,
                pipeline("upsert", cb.TABLE, self.where, write="upsert"),
                None,
                fresh,
                exp,
            ),
            Case(
                "upsert-full",
                "3. table stream, upsert, over a table holding every row (all updates)",
                cb.TABLE,
                pipeline("upsert", cb.TABLE, self.where, write="upsert"),
                None,
                self.full_prepare,
                exp,
            ),
            Case(
                "query",
                "4. query stream (merged rewrite), append, into an empty table",
                cb.TABLE,
                pipeline(
                    "query",
                    cb.TABLE,
                    None,
                    table=None,
                    name=cb.TABLE,
                    query=query_text(self.where),
                    cursor=["id"],
                ),
                None,
                fresh,
                exp,
            ),
            Case(
                "inc-noop",
                "5. incremental, second run, nothing new",
                INC_TABLE,
                self.inc,
                None,
                self.noop_prepare,
                self.inc_expected,
            ),
            Case(
                "inc-new",
                f"6. incremental, second run, {self.new_rows:,} new rows",
                INC_TABLE,
                self.inc,
                None,
                self.new_prepare,
                self.inc_expected,
            ),
        ]

    def pipe_prepare(self) -> None:
        cb.fresh_destination(cb.TABLE)

    def full_prepare(self) -> None:
        fill_stale(self.where, self.expected)

    def first_inc_run(self) -> None:
        """The untimed first incremental run, which copies the whole table."""
        reset_inc_table(self.base_max)
        cb.fresh_destination()
        cb.shell(f"{cb.MILEPOST} run {self.inc} --progress none")
        cb.check_copy(INC_TABLE, self.inc_expected(), "first incremental run")

    def noop_prepare(self) -> None:
        self.first_inc_run()
        with cb.pg() as conn:
            conn.execute("CHECKPOINT")

    def new_prepare(self) -> None:
        self.first_inc_run()
        insert_new_rows(self.base_max, self.new_rows)

    def inc_expected(self) -> tuple[Any, ...]:
        return cb.fingerprint(cb.SRC_DB, INC_TABLE)


def run_once(case: Case) -> Sample:
    if case.pipe is not None:
        start = time.perf_counter()
        cb.shell(case.pipe)
        return Sample(time.perf_counter() - start)
    assert case.pipeline is not None
    seconds, rss, cpu, _, _ = vb.timed(
        ["run", str(case.pipeline), "--progress", "none"], f"case {case.key}"
    )
    return Sample(seconds, rss, cpu)


def measure(cases: list[Case], repeat: int) -> list[Outcome]:
    """Per round the pipe, then every case: drift on a shared machine hits each alike."""
    outcomes = [Outcome(c) for c in cases]
    for round_ in range(1, repeat + 1):
        pipe_s = 0.0
        for o in outcomes:
            o.case.prepare()
            expected = o.case.expected()
            load = os.getloadavg()[0]
            sample = run_once(o.case)
            label = f"round {round_}/{repeat} {o.case.key}"
            sample.content_ok = cb.check_copy(o.case.table, expected, label)
            sample.load = load
            if o.case.pipe is not None:
                pipe_s = sample.seconds
            sample.ratio = sample.seconds / pipe_s
            if o.case.pipeline is not None and not o.path:
                o.path = cb.transfer_path()
            o.samples.append(sample)
            shown = f", peak RSS {sample.rss_mb:.0f} MB, CPU {sample.cpu_s:.1f} s"
            cb.log(
                f"{label}: {sample.seconds:.2f} s ({sample.ratio:.2f}x the pipe)"
                + (shown if o.case.pipeline else "")
            )
    return outcomes


# --- where upsert's time goes -------------------------------------------------------------


class _Capture:
    """Stands in for milepost's PostgreSQL connector to capture the SQL the stage runs."""

    family = "postgresql"

    def __init__(self) -> None:
        self.sql: list[str] = []

    def quote(self, name: str) -> str:
        return name  # plain lowercase names: SQLAlchemy quotes none of them

    def execute(self, sql: str) -> None:
        self.sql.append(sql)


def stage_sql() -> tuple[str, str, str]:
    """milepost's own staging DDL, merge statement and staging table name (the snapshot's)."""
    sys.path.insert(0, str(cb.SNAPSHOT))
    from milepost.write_modes import PostgresStage

    columns = [c.strip() for c in COLUMNS.split(",")]
    capture = _Capture()
    stage = PostgresStage(capture, cb.TABLE, columns, ["id"])
    stage.ensure()
    stage.merge()
    create, merge = capture.sql
    return create, merge, stage.name


def explain_merge(where: str | None) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS, WAL) of one batch's merge, into an empty and a full table.

    The batch (the first 10,000 ids) is COPYed from the source into milepost's staging
    table exactly as a worker does; each measurement is rolled back. Also timed: the
    same batch COPYed straight into the target (what append does).
    """
    create, merge, stage = stage_sql()
    batch = f"SELECT {COLUMNS} FROM {cb.TABLE} WHERE id <= {BATCH} ORDER BY id"
    out = ["```sql", merge, "```", ""]
    for state in ("empty", "full"):
        if state == "empty":
            cb.fresh_destination(cb.TABLE)
        else:
            fill_stale(where, cb.fingerprint(cb.SRC_DB, subset(where)))
        with cb.pg(cb.SRC_DB) as src, cb.pg(cb.DST_DB) as dst:
            timings = {}
            # Append's write, COPY straight into the target, only fits the empty table.
            for target in ("direct", "stage") if state == "empty" else ("stage",):
                dst.execute("BEGIN")
                dst.execute(create)
                into = cb.TABLE if target == "direct" else stage
                start = time.perf_counter()
                with (
                    src.cursor().copy(f"COPY ({batch}) TO STDOUT (FORMAT binary)") as cin,
                    dst.cursor().copy(f"COPY {into} ({COLUMNS}) FROM STDIN (FORMAT binary)") as co,
                ):
                    for data in cin:
                        co.write(data)
                timings[target] = time.perf_counter() - start
                if target == "direct":
                    dst.execute("ROLLBACK")
                    continue
                start = time.perf_counter()
                plan = dst.execute(f"EXPLAIN (ANALYZE, BUFFERS, WAL) {merge}").fetchall()
                timings["merge"] = time.perf_counter() - start
                dst.execute("ROLLBACK")
        direct = (
            f"COPY of the batch straight into the target (append's write) "
            f"{timings['direct'] * 1000:.0f} ms; "
            if "direct" in timings
            else ""
        )
        out += [
            f"Into the {state} table ({'no rows' if state == 'empty' else 'every row present'}"
            f"): {direct}COPY into the staging table {timings['stage'] * 1000:.0f} ms, "
            f"then the merge {timings['merge'] * 1000:.0f} ms (under EXPLAIN ANALYZE):",
            "",
            "```",
            *(row[0] for row in plan),
            "```",
            "",
        ]
        cb.log(f"explained the merge into the {state} table")
    return out


# --- the report ---------------------------------------------------------------------------


def summary_table(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| case | time, median (min-max) | ratio to the pipe (milepost / pipe, per round), "
        "median (min-max) | pipe / milepost | peak RSS, median (max) | CPU, median "
        "| transfer path | content |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        times = cb.fmt_range(o.values("seconds"), digits=2)
        bad = sum(not s.content_ok for s in o.samples)
        content = "same as source" if not bad else f"**differs in {bad}/{len(o.samples)}**"
        if o.case.pipeline is None:
            lines.append(f"| {o.case.label} | {times} | 1 (reference) | | | | | {content} |")
            continue
        ratio = statistics.median(o.values("ratio"))
        rss = o.values("rss_mb")
        lines.append(
            f"| {o.case.label} | {times} | **{ratio:.2f}x** ({min(o.values('ratio')):.2f}-"
            f"{max(o.values('ratio')):.2f}) "
            f"| {1 / ratio:.2f}x | {statistics.median(rss):.0f} MB ({max(rss):.0f}) "
            f"| {statistics.median(o.values('cpu_s')):.1f} s | `{o.path}` | {content} |"
        )
    return lines


def samples_section(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "### Every sample",
        "",
        "| case | round | load (1 min) at its start | seconds | ratio to the round's pipe "
        "| peak RSS | CPU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        for i, s in enumerate(o.samples, 1):
            rss = f"{s.rss_mb:.0f} MB" if o.case.pipeline else ""
            cpu = f"{s.cpu_s:.1f} s" if o.case.pipeline else ""
            lines.append(
                f"| {o.case.key} | {i} | {s.load:.2f} | {s.seconds:.2f} | {s.ratio:.3f} "
                f"| {rss} | {cpu} |"
            )
    return [*lines, ""]


def write_report(
    command: str,
    env: dict[str, str],
    rows: int,
    first: int | None,
    repeat: int,
    new_rows: int,
    outcomes: list[Outcome],
    explained: list[str],
) -> None:
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    if first is None:
        table = f"`{cb.TABLE}`, {rows:,} rows ({env['pg_size']} in PostgreSQL with its primary key)"
        smoke: list[str] = []
    else:
        table = f"`{cb.TABLE}` restricted to `id <= {first}`, {rows:,} rows"
        smoke = [
            f"**Smoke run** on the first {rows:,} rows only (`--first {first}`): it shows the "
            "script works end to end, not the issue's figures, which are for the whole table.",
            "",
        ]
    lines = [
        "# Incremental benchmark: query streams, write modes, incremental runs",
        "",
        f"Produced by `{command}` (`make bench` runs it with the defaults), on {env['date']}.",
        "",
        *smoke,
        f"Code measured: {env['code']}, copied aside when the run started.",
        "",
        f"- Machine: `nproc` = {env['nproc']}, shared with other work (other engineers' tests "
        f"ran meanwhile); load average 1/5/15 min at the start {env['load']}, at the end "
        f"{end_load}; each sample's 1-minute load is listed below. Only ratios measured in "
        "this run are meaningful.",
        f"- Servers: PostgreSQL {env['postgres']}, local; PostgreSQL → PostgreSQL.",
        f"- Table: {table}: the copy benchmark's (id bigint key, NULLs, non-ASCII text, tabs, "
        f"newlines, backslashes, numeric(12,2), timestamptz, jsonb of ~{env['payload']} bytes): "
        f"`{env['types']}`.",
        f"- Each milepost case is `milepost run <pipeline.yml> --progress none`, timed as a "
        f"whole process (start-up, schema, ledger and all), with the defaults: {WORKERS} "
        "workers, batch size 10,000, and `verify: {mode: off}` so the copy is timed alone. "
        "Peak RSS and CPU (user + sys) are that process's own, from `/usr/bin/time`, the "
        "server excluded.",
        f"- One round: the raw pipe, then cases 1-6 in order, each into a freshly created "
        f"destination database after a CHECKPOINT. Each figure is the median of {repeat} "
        "round(s); the ratio is per round, the case's time / that round's pipe time (1.00 = "
        "as long as the raw pipe copying the whole table; lower is faster).",
        "- Case 3's destination is filled before the timed run by a raw pipe with "
        "`quantity + 1` in every row, then VACUUM ANALYZEd: the upsert must update every row, "
        "and the fingerprint afterwards shows it did.",
        f"- Cases 5 and 6 read `{INC_TABLE}`, a copy of the table (with its primary key) in "
        "the source database, dropped at the end; stream `{table: "
        f"{INC_TABLE}, cursor: [id], mode: incremental}}`. Their untimed first run copies "
        f"the whole table; case 6 then inserts {new_rows:,} rows (ids after the largest, made "
        "by the copy benchmark's generator) before the timed second run.",
        f"- Case 4's query: `{query_text(None if first is None else f'id <= {first}')}` "
        "with `cursor: [id]`.",
        "- After every sample, the destination's row count is checked against its source (the "
        "script stops otherwise) and its content by sums over every column (content).",
        "",
        *summary_table(outcomes),
        "",
        f"Raw pipe: `{outcomes[0].case.pipe}`.",
        "",
        "### Where upsert's time goes: one batch's merge",
        "",
        "milepost's own statement (from `PostgresStage` in the snapshot), on one batch of "
        f"{BATCH:,} rows (ids 1-{BATCH:,}), COPYed into its staging table "
        "(`CREATE TEMP TABLE ... (LIKE orders INCLUDING DEFAULTS, _milepost_ord bigint "
        "GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS`), each in a transaction rolled "
        "back afterwards:",
        "",
        *explained,
        *samples_section(outcomes),
        "Pipelines (in bench/work/): "
        + ", ".join(
            f"`{p.name}`" for p in sorted({o.case.pipeline for o in outcomes if o.case.pipeline})
        )
        + ".",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines).rstrip() + "\n")


# --- main ---------------------------------------------------------------------------------


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
        help="smoke run: every case copies only the rows with id <= M",
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
    try:
        base_max = build_inc_table(where)
        rows = int(cb.pg_value(cb.SRC_DB, f"SELECT count(*) FROM {INC_TABLE}"))
        new_rows = rows // 100
        bench = Bench(where, base_max, new_rows)
        outcomes = measure(bench.cases(), args.repeat)
        explained = explain_merge(where)
    finally:
        cb.drop_destination()
        drop_inc_table()
    write_report(
        cb.command_line(), env, rows, args.first, args.repeat, new_rows, outcomes, explained
    )
    cb.log(f"wrote {RESULTS.relative_to(cb.REPO)}")
    for o in outcomes[1:]:
        cb.log(f"{o.case.label}: {statistics.median(o.values('ratio')):.2f}x the pipe")


if __name__ == "__main__":
    main()
