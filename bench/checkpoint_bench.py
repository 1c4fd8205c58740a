"""Checkpoint benchmark: what a checkpoint costs, on its own and inside a running copy.

Run it with `make bench` (after the outage benchmark), i.e.
`.venv/bin/python bench/checkpoint_bench.py [--takes N] [--rounds K] [--rows N]`.

The two figures the checkpoint issue asks for:

1. A checkpoint of a 50-stream pipeline is under 20 KB and made in under 50 ms. A
   throwaway PostgreSQL source (`milepost_bench_ckpt_src`, dropped at the end) holds
   two sets of 50 tables with integer keys, each copied into PostgreSQL by `milepost
   run` with `keep_after_success: true`, so that the ledger and the run's checkpoints
   stay and every chunk in the document is done, bounds and watermark:
   - typical: 1,000 to 8,000 rows per table, batch size 100, so that most tables are
     planned in several chunks (one per 20 batches of estimated rows, see
     src/milepost/plan.py);
   - at the chunk cap: 1,300 rows per table at batch size 1, so that every table is
     cut into 62 chunks, near the 64 milepost plans at most (MAX_CHUNKS): about the
     largest document a 50-stream pipeline can have. Its copy (65,000 one-row batches)
     takes one to two minutes.
   Then, in this process, `CheckpointKeeper(pipeline).take(conn, kind)` is timed N
   times per variant, the variants interleaved take by take, each on a directory store
   (the default kind of store) of its own under bench/work: compressed (the default),
   compressed and encrypted (a key from `generate_key()` in an environment variable),
   and compressed as `automatic` checkpoints, which retention trims to the last five (a
   delete and a directory fsync per take) where manual ones are all kept; at the chunk
   cap, compressed only. A second series, with every part of `take` wrapped in a timer,
   shows where the time goes; the headline figures come from the unwrapped series.
2. Copy throughput with `checkpoints: {every_records: 100000}` is within 3% of the same
   copy with checkpoints off. On the copy benchmark's cached 2,000,000-row PostgreSQL
   table (batch size 10,000, 2 workers), `milepost run --progress jsonl` runs with
   checkpoints off and on, interleaved (off, on, off, on, ...), each into a fresh
   destination database, with the default store (`.milepost/checkpoints`, the working
   directory being bench/work). The checkpoints each "on" run took are counted from its
   `checkpoint` events; every run's content is checked against the source.

It reuses the copy benchmark's cached source and helpers, and, like it, measures a copy
of src/milepost taken when it starts (also for the in-process part: that copy is put
first on sys.path before milepost is imported). Results go to
bench/results/checkpoints.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import copy_bench as cb

RESULTS = cb.REPO / "bench" / "results" / "checkpoints.md"
CKPT_SRC = "milepost_bench_ckpt_src"
STORES = cb.WORK / "checkpoint-stores"  # one directory store per variant of part 1
KEY_ENV = "MILEPOST_BENCH_CHECKPOINT_KEY"

# Part 1: the 50-stream pipeline.
STREAMS = 50
WARMUP = 3
NOUNS = [
    "customers",
    "orders",
    "order_lines",
    "invoices",
    "payments",
    "shipments",
    "products",
    "stock_moves",
    "suppliers",
    "refunds",
]
SIZE_TARGET = 20_000  # bytes
TIME_TARGET_MS = 50.0

# Part 2: throughput on the copy benchmark's table.
BATCH = 10_000
WORKERS = 2
EVERY_RECORDS = 100_000
OVERHEAD_TARGET = 1.03
THROUGHPUT_NAME = "checkpoint_throughput"
CHECKPOINTS_ON: dict[str, Any] = {"every_records": EVERY_RECORDS}
CHECKPOINTS_OFF: dict[str, Any] = {
    "every_seconds": None,
    "every_records": None,
    "phase_boundaries": False,
    "before_risky": False,
}


def table_names() -> list[str]:
    return [f"{NOUNS[i % len(NOUNS)]}_{i // len(NOUNS) + 1}" for i in range(STREAMS)]


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str
    encrypt: bool = False


COMPRESSED = Variant("compressed", "compressed, `manual`", "manual")
ENCRYPTED = Variant("encrypted", "compressed + encrypted, `manual`", "manual", encrypt=True)
AUTOMATIC = Variant("automatic", "compressed, `automatic` (retention deletes one)", "automatic")


@dataclass(frozen=True)
class Scenario:
    """A 50-stream pipeline, copied once; its finished ledger is what checkpoints read."""

    key: str  # also its pipeline's name and its tables' prefix
    title: str
    batch_size: int
    variants: tuple[Variant, ...]
    max_takes: int | None = None  # slow takes: fewer of them

    @property
    def name(self) -> str:
        return f"checkpoint_bench_{self.key}"

    def tables(self) -> list[str]:
        return [f"{self.key}_{t}" for t in table_names()]

    def rows(self, i: int) -> int:
        if self.key == "cap":
            return CAP_ROWS
        return 1_000 + (i * 2_719) % 7_001  # 1,000 to 8,000, spread over the tables

    def pipeline(self, variant: Variant) -> dict[str, Any]:
        checkpoints: dict[str, Any] = {
            "store": str(STORES / self.key / variant.key),
            "keep_after_success": True,
        }
        if variant.encrypt:
            checkpoints["encrypt"] = {"key_env": KEY_ENV}
        return {
            "name": self.name,
            "source": {"url": cb.PG_URL.format(db=CKPT_SRC)},
            "destination": {"url": cb.PG_URL.format(db=cb.DST_DB)},
            "streams": [{"table": t} for t in self.tables()],
            "batch_size": self.batch_size,
            "workers": WORKERS,
            "checkpoints": checkpoints,
        }


# At batch size 1, 1,300 rows make ceil(1300 / 20) > 64 chunks wanted: the cap (64, which
# even ranges of the keys round to 62). A copy of 65,000 one-row batches, 1-2 minutes.
CAP_ROWS = 1_300
TYPICAL = Scenario("typical", "typical", 100, (COMPRESSED, ENCRYPTED, AUTOMATIC))
CAP = Scenario("cap", "every stream at the chunk cap", 1, (COMPRESSED,), max_takes=10)
SCENARIOS = [TYPICAL, CAP]


# --- milepost, imported from the snapshot -------------------------------------------------


def import_snapshot() -> SimpleNamespace:
    """milepost's modules from bench/work/src-snapshot, not from the editable install."""
    sys.path.insert(0, str(cb.SNAPSHOT))
    import milepost
    from milepost import config, connectors, ledger
    from milepost.checkpoints import keeper
    from milepost.checkpoints.codec import ChainCodec, generate_key
    from milepost.checkpoints.stores import DirectoryStore

    where = Path(milepost.__file__).resolve()
    if not where.is_relative_to(cb.SNAPSHOT.resolve()):
        raise SystemExit(f"milepost was imported from {where}, not from {cb.SNAPSHOT}")
    return SimpleNamespace(
        config=config,
        connectors=connectors,
        ledger=ledger,
        keeper=keeper,
        ChainCodec=ChainCodec,
        DirectoryStore=DirectoryStore,
        generate_key=generate_key,
    )


# --- part 1: one checkpoint of a 50-stream pipeline ------------------------------------


def build_ckpt_source() -> None:
    """Each scenario's 50 tables, with integer keys, analyzed so that milepost plans its
    chunks from real row estimates."""
    cb.log(f"building PostgreSQL {CKPT_SRC}: {len(SCENARIOS)} x {STREAMS} tables")
    with cb.pg() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {CKPT_SRC} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {CKPT_SRC}")
    with cb.pg(CKPT_SRC) as conn:
        for s in SCENARIOS:
            for i, name in enumerate(s.tables()):
                conn.execute(
                    f"CREATE TABLE {name} (id integer PRIMARY KEY, customer_id integer, "
                    "status text, amount numeric(12,2), created_at timestamptz, note text)"
                )
                conn.execute(
                    f"INSERT INTO {name} SELECT g, 1 + (g * 7919) % 100000, "
                    "(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], "
                    "round(((g * 2654435761) % 10000000) / 100.0, 2), "
                    "timestamptz '2021-01-01 00:00:00+00' + g * interval '61 seconds', "
                    "CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END "
                    f"FROM generate_series(1, {s.rows(i)}) g"
                )
                conn.execute(f"VACUUM ANALYZE {name}")


def copy_scenario(s: Scenario) -> float:
    """`milepost run` of the scenario's pipeline; checked by row counts."""
    path = cb.WORK / f"{s.name}.yml"
    path.write_text(json.dumps(s.pipeline(COMPRESSED), indent=2) + "\n")  # JSON is YAML
    start = time.monotonic()
    subprocess.run([str(cb.MILEPOST), "run", str(path), "--progress", "none"], check=True)
    seconds = time.monotonic() - start
    counts = " + ".join(f"(SELECT count(*) FROM {t})" for t in s.tables())
    copied = int(cb.pg_value(cb.DST_DB, f"SELECT {counts}"))
    total = sum(s.rows(i) for i in range(STREAMS))
    if copied != total:
        raise SystemExit(f"{s.name}: the copy holds {copied:,} rows, the source {total:,}")
    return seconds


@dataclass
class Takes:
    scenario: Scenario
    variant: Variant
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # this process's CPU time per take
    stored_bytes: list[int] = field(default_factory=list)
    json_bytes: list[int] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)  # instrumented series
    calls: Counter[str] = field(default_factory=Counter)
    doc: dict[str, Any] = field(default_factory=dict)  # the last one, for its shape

    @property
    def label(self) -> str:
        return f"{self.scenario.title}: {self.variant.label}"


def canonical_json(doc: dict[str, Any]) -> bytes:
    """The bytes the codec compresses (ChainCodec.encode)."""
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


class Profile:
    """Exclusive time per label: a wrapped call's time less that of the wrapped calls it
    makes, so that nested parts (a snapshot's ledger reads, a decode's unseal) are
    counted once and the parts add up to the whole."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self._inner: list[float] = []  # per open call: time spent in wrapped callees

    def wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                self.parts[label] += elapsed - inner
                self.calls[label] += 1
                if self._inner:
                    self._inner[-1] += elapsed

        return timed


@contextmanager
def instrumented(mp: SimpleNamespace) -> Iterator[Profile]:
    """Every part of CheckpointKeeper.take wrapped in a timer (in this process only)."""
    profile = Profile()
    targets = [
        (mp.keeper, "take_snapshot", "snapshot"),
        (mp.ledger, "read_run", "ledger"),
        (mp.ledger, "read_streams", "ledger"),
        (mp.ledger, "read_chunks", "ledger"),
        (mp.keeper.CheckpointKeeper, "_sealed_and_checked", "validate"),
        (mp.keeper, "serialize", "encode"),
        (mp.ChainCodec, "encode", "encode"),
        (mp.ChainCodec, "seal", "seal"),
        (mp.ChainCodec, "decode", "decode"),
        (mp.ChainCodec, "unseal", "unseal"),
        (mp.DirectoryStore, "put", "put"),
        (mp.DirectoryStore, "get", "get"),
        (mp.DirectoryStore, "list", "list"),
        (mp.DirectoryStore, "delete", "delete"),
    ]
    saved = []
    for owner, attr, label in targets:
        original = owner.__dict__[attr]
        setattr(owner, attr, profile.wrap(original, label))
        saved.append((owner, attr, original))
    try:
        yield profile
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def time_takes(mp: SimpleNamespace, s: Scenario, takes: int) -> list[Takes]:
    """Each variant's keeper takes one checkpoint in turn, so noise hits them alike."""
    takes = min(takes, s.max_takes or takes)
    conn = None
    keepers = []
    outcomes = [Takes(s, v) for v in s.variants]
    try:
        for v in s.variants:
            keeper = mp.keeper.CheckpointKeeper(mp.config.build_pipeline(s.pipeline(v)))
            keeper.open()
            keepers.append(keeper)
        conn = mp.connectors.connect(keepers[0].pipeline.destination_url(), "destination")
        for _ in range(WARMUP):
            for v, keeper in zip(s.variants, keepers, strict=True):
                keeper.take(conn, v.kind)
        for _ in range(takes):
            for v, keeper, out in zip(s.variants, keepers, outcomes, strict=True):
                start, cpu = time.perf_counter(), time.process_time()
                made = keeper.take(conn, v.kind)
                out.seconds.append(time.perf_counter() - start)
                out.cpu.append(time.process_time() - cpu)
                out.stored_bytes.append(len(keeper.store.get(made.name)))
                out.doc = made.to_document()
                out.json_bytes.append(len(canonical_json(out.doc)))
        with instrumented(mp) as profile:
            for _ in range(takes):
                for v, keeper, out in zip(s.variants, keepers, outcomes, strict=True):
                    profile.parts.clear()
                    before = Counter(profile.calls)
                    start = time.perf_counter()
                    keeper.take(conn, v.kind)
                    seconds = time.perf_counter() - start
                    out.parts.append({**profile.parts, "total": seconds})
                    out.calls.update(profile.calls - before)
    finally:
        if conn is not None:
            conn.close()
        for keeper in keepers:
            keeper.close()
    return outcomes


# --- part 2: throughput with checkpoints on and off -------------------------------------


@dataclass
class Run:
    seconds: float
    copy_s: float  # from the `copy` phase event to the `finalize` one
    cpu_s: float
    checkpoints: Counter[str] = field(default_factory=Counter)  # by kind
    checkpoint_bytes: list[int] = field(default_factory=list)
    not_written: int = 0
    content_ok: bool = True
    load: float = 0.0  # 1-minute load average when it started
    rows_at: list[int] = field(default_factory=list)  # rows done at each automatic one


def throughput_pipeline(label: str, checkpoints: dict[str, Any]) -> Path:
    """The same pipeline but for its `checkpoints:` section (same name, same store)."""
    path = cb.WORK / f"checkpoints_{label}.yml"
    doc = {
        "name": THROUGHPUT_NAME,
        "source": {"url": cb.PG_URL.format(db=cb.SRC_DB)},
        "destination": {"url": cb.PG_URL.format(db=cb.DST_DB)},
        "streams": [{"table": cb.TABLE}],
        "batch_size": BATCH,
        "workers": WORKERS,
        "checkpoints": checkpoints,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def timed_run(path: Path, expected: tuple[Any, ...], label: str) -> Run:
    """One whole `milepost run`, its CPU time, and what its jsonl events say."""
    cb.fresh_destination()
    # The default store, relative to the working directory: start each run from none.
    shutil.rmtree(cb.WORK / ".milepost" / "checkpoints" / THROUGHPUT_NAME, ignore_errors=True)
    stats = cb.WORK / "checkpoint-time.txt"
    command = [
        "/usr/bin/time",
        "-f",
        "%M %U %S",
        "-o",
        str(stats),
        str(cb.MILEPOST),
        "run",
        str(path),
        "--progress",
        "jsonl",
    ]
    run = Run(0.0, 0.0, 0.0, load=os.getloadavg()[0])
    copy_start = copy_end = None
    rows = 0
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=cb.WORK)
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        kind, data = event["kind"], event.get("data", {})
        if kind == "batch":
            rows += int(event.get("rows", 0))
        elif kind == "phase" and event.get("text") == "copy":
            copy_start = time.perf_counter()
        elif kind == "phase" and event.get("text") == "finalize":
            copy_end = time.perf_counter()
        elif kind == "checkpoint":
            run.checkpoints[data.get("kind", "?")] += 1
            run.checkpoint_bytes.append(int(data.get("bytes", 0)))
            if data.get("kind") == "automatic":
                run.rows_at.append(rows)
        elif kind == "message" and "not written" in event.get("text", ""):
            run.not_written += 1
    if proc.wait() != 0:
        raise SystemExit(f"{label}: milepost exited with {proc.returncode}")
    run.seconds = time.perf_counter() - start
    if copy_start is None or copy_end is None:
        raise SystemExit(f"{label}: no copy/finalize phase events")
    run.copy_s = copy_end - copy_start
    _rss, user, system = stats.read_text().split()[-3:]
    run.cpu_s = float(user) + float(system)
    run.content_ok = cb.check_copy(cb.TABLE, expected, label)
    return run


def measure_throughput(rounds: int, expected: tuple[Any, ...]) -> list[tuple[Run, Run]]:
    off = throughput_pipeline("off", CHECKPOINTS_OFF)
    on = throughput_pipeline("on", CHECKPOINTS_ON)
    pairs = []
    for i in range(1, rounds + 1):
        a = timed_run(off, expected, f"round {i} off")
        b = timed_run(on, expected, f"round {i} on")
        cb.log(
            f"round {i}/{rounds}: off {a.seconds:.2f} s, on {b.seconds:.2f} s "
            f"({b.seconds / a.seconds:.3f}), {sum(b.checkpoints.values())} checkpoints"
        )
        pairs.append((a, b))
    return pairs


# --- the report -------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th quantile, nearest rank: p90 of 30 samples is the 27th smallest."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q)) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def doc_shape(doc: dict[str, Any]) -> str:
    """How many streams and chunks the document holds, and what its JSON is made of."""
    chunks = [len(s["chunks"]) for s in doc["streams"]]
    if min(chunks) == max(chunks):
        per = f"{max(chunks)} per stream"
    else:
        multi = sum(1 for n in chunks if n > 1)
        per = f"{min(chunks)} to {max(chunks)} per stream, {multi} streams in more than one"
    sizes = {k: len(canonical_json({k: v})) for k, v in doc.items()}
    total = len(canonical_json(doc))
    parts = sorted(sizes.items(), key=lambda kv: -kv[1])[:4]
    shown = ", ".join(f"`{k}` {v:,} bytes ({v / total:.0%})" for k, v in parts)
    return (
        f"{len(doc['streams'])} streams, {sum(chunks):,} chunks ({per}), "
        f"{len(doc['audit'])} audit entries. Its canonical JSON "
        f"is {total:,} bytes, mostly {shown}."
    )


PARTS = [
    ("ledger", "snapshot: the 3 ledger SELECTs"),
    ("snapshot", "snapshot: the rest (transaction, building the pydantic document)"),
    ("encode", "encode: `model_dump` + canonical JSON"),
    ("seal", "seal: zstd, AES-GCM when on, SHA-256"),
    ("unseal", "unseal: SHA-256 check, AES-GCM when on, zstd"),
    ("decode", "decode: JSON parse + pydantic `load_document`"),
    ("validate", "validation's own work (comparing the unsealed bytes)"),
    ("put", "store put: temp file write + fsync + rename + directory fsync"),
    ("get", "store get (the read-back; an older document)"),
    ("list", "store list"),
    ("delete", "store delete + directory fsync (retention)"),
    ("other", "other (status changes, retention policy, locks)"),
    ("total", "**total**"),
]


def split(parts: dict[str, float]) -> dict[str, float]:
    """One instrumented take's exclusive parts, and what no timer covered."""
    p = defaultdict(float, parts)
    named = {key: p[key] for key, _ in PARTS if key not in ("other", "total")}
    return {**named, "other": p["total"] - sum(named.values()), "total": p["total"]}


def scenario_line(s: Scenario, copy_s: float, doc: dict[str, Any]) -> str:
    rows = [s.rows(i) for i in range(STREAMS)]
    spread = f"{min(rows):,}" if min(rows) == max(rows) else f"{min(rows):,} to {max(rows):,}"
    return (
        f"- **{s.title}**: {STREAMS} tables of {spread} rows ({sum(rows):,} in all), copied "
        f"with batch size {s.batch_size} in {copy_s:.1f} s. The document holds "
        f"{doc_shape(doc)}"
    )


def take_section(outcomes: list[Takes], takes: int, copies: dict[str, float]) -> list[str]:
    by = {(o.scenario.key, o.variant.key): o for o in outcomes}
    typical = by[TYPICAL.key, COMPRESSED.key]
    stored = statistics.median(typical.stored_bytes)
    raw = statistics.median(typical.json_bytes)
    enc = statistics.median(by[TYPICAL.key, ENCRYPTED.key].stored_bytes)
    size_ok = max(max(o.stored_bytes) for o in outcomes if o.scenario is TYPICAL) < SIZE_TARGET
    med = statistics.median(typical.seconds) * 1000
    time_ok = med < TIME_TARGET_MS
    cap = by[CAP.key, COMPRESSED.key]
    cap_med = statistics.median(cap.seconds) * 1000
    lines = [
        "## 1. One checkpoint of a 50-stream pipeline",
        "",
        f"Target: under 20 KB ({SIZE_TARGET:,} bytes) compressed, made in under "
        f"{TIME_TARGET_MS:.0f} ms.",
        "",
        f"Two pipelines of {STREAMS} PostgreSQL tables (source `{CKPT_SRC}`: id integer key "
        "and 5 more columns), each copied into PostgreSQL by `milepost run` "
        f"({WORKERS} workers, `keep_after_success: true`, both ledgers in one database), so "
        "that every chunk in the document is done, with its bounds and watermark:",
        "",
        scenario_line(TYPICAL, copies[TYPICAL.key], typical.doc),
        scenario_line(CAP, copies[CAP.key], cap.doc)
        + " A stress case: near the most chunks a 50-stream pipeline can have (64 each).",
        "",
        f"Timed: `CheckpointKeeper(pipeline).take(conn, kind)` in this process, {takes} times "
        f"per variant ({min(takes, CAP.max_takes or takes)} for the chunk cap) after "
        f"{WARMUP} untimed ones, the variants taking turns; `conn` is one milepost "
        "connection to the destination, held open, as the runner's checkpoint thread holds "
        "one. Each take lists the store, snapshots the ledger, encodes and decodes the "
        "document (validation), writes it, reads it back, rewrites the previously active "
        "one as superseded, and applies retention. Each variant has a directory store of "
        "its own. CPU is this process's (`time.process_time()`), the server's excluded: "
        "less disturbed than wall time when other work shares the cores.",
        "",
        "| pipeline: variant | stored size, median (min-max) | JSON before compression "
        "| time per checkpoint: median | p90 | max | CPU per checkpoint: median (max) "
        "| target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        secs, sizes = o.seconds, o.stored_bytes
        m = statistics.median(secs) * 1000
        verdict = "✅" if m < TIME_TARGET_MS and max(sizes) < SIZE_TARGET else "❌"
        lines.append(
            f"| {o.label} | {statistics.median(sizes):,.0f} bytes ({min(sizes):,}-{max(sizes):,})"
            f" | {statistics.median(o.json_bytes):,.0f} bytes | **{m:.1f} ms** "
            f"| {ms(pct(secs, 0.9))} | {ms(max(secs))} "
            f"| {ms(statistics.median(o.cpu))} ({ms(max(o.cpu))}) | {verdict} |"
        )
    lines += [
        "",
        f"Typical pipeline: **{stored:,.0f} bytes** stored compressed ({enc:,.0f} encrypted), "
        f"from {raw:,.0f} bytes of JSON {'✅' if size_ok else '❌'}; made in a median "
        f"**{med:.1f} ms** {'✅' if time_ok else '❌'}. At the chunk cap: "
        f"{statistics.median(cap.stored_bytes):,.0f} bytes "
        f"{'✅' if max(cap.stored_bytes) < SIZE_TARGET else '❌'} (its regular chunk bounds "
        f"compress well), made in a median {cap_med:.0f} ms "
        f"{'✅' if cap_med < TIME_TARGET_MS else '❌'}.",
        "",
        "### Where the time goes",
        "",
        "A second series of as many takes per variant, every part of `take` wrapped in a "
        "timer (a few microseconds per call); each part's time excludes the parts it calls "
        "(a snapshot's ledger reads, a decode's unseal). Milliseconds per take: median "
        "(mean; the means add up to the total) [calls per take].",
        "",
        "| part | " + " | ".join(o.label for o in outcomes) + " |",
        "| --- |" + " --- |" * len(outcomes),
    ]
    splits = [[split(p) for p in o.parts] for o in outcomes]
    for key, label in PARTS:
        cells = []
        for o, rows in zip(outcomes, splits, strict=True):
            values = [r[key] * 1000 for r in rows]
            cell = f"{statistics.median(values):.2f} ({statistics.mean(values):.2f})"
            if key not in ("other", "total"):
                cell += f" [{o.calls[key] / len(rows):.1f}]"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def throughput_section(pairs: list[tuple[Run, Run]], rows: int) -> list[str]:
    offs, ons = [a for a, _ in pairs], [b for _, b in pairs]
    off_s = statistics.median(r.seconds for r in offs)
    on_s = statistics.median(r.seconds for r in ons)
    ratio = on_s / off_s
    copy_ratio = statistics.median(r.copy_s for r in ons) / statistics.median(
        r.copy_s for r in offs
    )
    cpu_ratio = statistics.median(r.cpu_s for r in ons) / statistics.median(r.cpu_s for r in offs)
    paired = statistics.median(b.seconds / a.seconds for a, b in pairs)
    automatic = [r.checkpoints["automatic"] for r in ons]
    spacing = [r.rows_at[-1] / len(r.rows_at) for r in ons if r.rows_at]
    sizes = [n for r in ons for n in r.checkpoint_bytes]
    kinds = Counter[str]()
    for r in ons:
        kinds.update(r.checkpoints)
    per_run = ", ".join(f"{k} {n / len(ons):.1f}" for k, n in sorted(kinds.items()))
    verdict = "✅" if ratio <= OVERHEAD_TARGET else "❌"
    lines = [
        "## 2. Copy throughput, checkpoints on against off",
        "",
        f"Target: with `every_records: {EVERY_RECORDS}` the copy takes at most "
        f"{OVERHEAD_TARGET - 1:.0%} longer than without checkpoints.",
        "",
        f"Table: the copy benchmark's `{cb.TABLE}`, {rows:,} rows, PostgreSQL -> PostgreSQL, "
        f"batch size {BATCH:,}, {WORKERS} workers, `milepost run <pipeline> --progress jsonl`, "
        "timed as a whole process, each run into a freshly created database after a "
        "CHECKPOINT, the store (`.milepost/checkpoints`, the default) emptied before each run.",
        "",
        f"- on: `checkpoints: {json.dumps(CHECKPOINTS_ON)}`, everything else default "
        "(every_seconds 900, phase boundaries, before risky steps, compressed, directory "
        "store; keep_after_success false, so the run deletes its checkpoints when it is done, "
        "and that is timed too).",
        f"- off: `checkpoints: {json.dumps(CHECKPOINTS_OFF)}`. There is no off switch: this "
        "turns off every trigger a clean run meets. What stays: the store directory is "
        "opened (created) before the copy, the checkpoint thread is started and idles, and "
        "a successful run lists the store to delete its (no) checkpoints. Checkpoints on "
        "pause, on failure and on demand cannot be turned off; a clean run takes none.",
        "",
        "| round | off | on | on/off | copy phase off | copy phase on | CPU off | CPU on "
        "| checkpoints taken (on) | content | load at start off / on |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, (a, b) in enumerate(pairs, 1):
        taken = ", ".join(f"{n} {k}" for k, n in sorted(b.checkpoints.items())) or "none"
        if a.checkpoints:
            taken += f"; off took {sum(a.checkpoints.values())}!"
        ok = "same as source" if a.content_ok and b.content_ok else "**DIFFERS**"
        lines.append(
            f"| {i} | {a.seconds:.2f} s | {b.seconds:.2f} s | {b.seconds / a.seconds:.3f} "
            f"| {a.copy_s:.2f} s | {b.copy_s:.2f} s | {a.cpu_s:.1f} s | {b.cpu_s:.1f} s "
            f"| {taken} | {ok} | {a.load:.1f} / {b.load:.1f} |"
        )
    not_written = sum(r.not_written for r in ons)
    lines += [
        "",
        f"Medians: off **{off_s:.2f} s**, on **{on_s:.2f} s**: on/off = **{ratio:.3f}** "
        f"{verdict} (target ≤ {OVERHEAD_TARGET:.2f}). Median of the per-round ratios: "
        f"{paired:.3f}. Copy phase alone (from the `copy` phase event to the `finalize` one, "
        f"which includes the copy-done checkpoint): on/off = {copy_ratio:.3f}. milepost's "
        f"CPU time (user + sys): on/off = {cpu_ratio:.3f}.",
        "",
        f'Checkpoints per "on" run: {per_run} (automatic: {min(automatic)}-{max(automatic)}'
        f" per run, against {rows // EVERY_RECORDS} expected from {rows:,} / "
        f"{EVERY_RECORDS:,}): one per {statistics.median(spacing):,.0f} rows on average "
        "(median over the runs of the rows done at the last automatic checkpoint's event over "
        "their number). Rows past the threshold count towards the next checkpoint, so the "
        "count matches rows / every_records; the phase checkpoints come on top. Size "
        f"{min(sizes):,}-{max(sizes):,} bytes. Not written: {not_written}.",
        "",
    ]
    return lines


def write_report(
    command: str,
    env: dict[str, str],
    takes: list[Takes],
    n_takes: int,
    copies: dict[str, float],
    pairs: list[tuple[Run, Run]],
    rows: int,
) -> None:
    lines = [
        "# Checkpoint benchmark: the cost of a checkpoint, alone and during a copy",
        "",
        f"Command: `{command}` (part of `make bench`).",
        "",
        f"Code: {env['code']}. Date: {env['date']}. Machine: {env['nproc']} cores, shared "
        f"with other work; load average 1/5/15 min at the start "
        f"{env['load']}, before part 2 {env['load2']}, at the end {env['load_end']}. "
        f"PostgreSQL {env['postgres']}, local; the directory stores are on {env['fs']}.",
        "",
        *take_section(takes, n_takes, copies),
        *throughput_section(pairs, rows),
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines).rstrip() + "\n")


def filesystem(path: Path) -> str:
    """The file system under the stores, since fsync's cost depends on it."""
    done = subprocess.run(
        ["df", "--output=fstype,source", str(path)], capture_output=True, text=True
    )
    fields = done.stdout.split("\n")[1].split() if done.returncode == 0 else []
    return f"{fields[0]} ({fields[1]})" if len(fields) == 2 else "an unknown file system"


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=30, help="timed checkpoints per variant")
    parser.add_argument("--rounds", type=int, default=9, help="off/on pairs of copies")
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the copied table")
    args = parser.parse_args()
    cb.WORK.mkdir(parents=True, exist_ok=True)
    load = loadavg()  # before this script adds its own load
    code = cb.snapshot_code()
    os.environ["PYTHONPATH"] = str(cb.SNAPSHOT)  # inherited by every milepost process
    cb.check_snapshot_imported()
    mp = import_snapshot()
    small = args.rows // 10
    if not cb.pg_cached(args.rows, small):
        cb.build_postgres(args.rows, small)
    shutil.rmtree(STORES, ignore_errors=True)
    STORES.mkdir(parents=True)
    env = {
        "code": code,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": str(len(os.sched_getaffinity(0))),
        "load": load,
        "postgres": str(cb.pg_value("postgres", "SHOW server_version")),
        "fs": filesystem(STORES),
    }
    expected = cb.fingerprint(cb.SRC_DB, cb.TABLE)
    try:
        build_ckpt_source()
        cb.fresh_destination()
        copies = {}
        for s in SCENARIOS:
            copies[s.key] = copy_scenario(s)
            cb.log(f"copied the {s.key} 50-stream pipeline in {copies[s.key]:.1f} s")
        os.environ[KEY_ENV] = mp.generate_key()
        takes = []
        for s in SCENARIOS:
            for t in time_takes(mp, s, args.takes):
                cb.log(
                    f"{t.label}: median {statistics.median(t.seconds) * 1000:.1f} ms, "
                    f"{statistics.median(t.stored_bytes):,.0f} bytes"
                )
                takes.append(t)
        env["load2"] = loadavg()
        pairs = measure_throughput(args.rounds, expected)
    finally:
        cb.drop_destination()
        with cb.pg() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {CKPT_SRC} WITH (FORCE)")
    env["load_end"] = loadavg()
    write_report(cb.command_line(), env, takes, args.takes, copies, pairs, args.rows)
    cb.log(f"wrote {RESULTS.relative_to(cb.REPO)}")


if __name__ == "__main__":
    main()
