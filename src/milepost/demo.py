"""`milepost demo`: the guarantee shown end to end on embedded SQLite.

Builds customers, orders and order_items (with foreign keys), starts a real
`milepost run` process, kills it with SIGKILL part-way through, resumes, and proves
with counts and checksums that the copy equals the source.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from milepost import connectors
from milepost.checksum import table_sum
from milepost.config import load_pipeline
from milepost.errors import EXIT_DONE, EXIT_MISMATCH
from milepost.progress import RichProgress
from milepost.runner import Runner
from milepost.urls import parse_database_url

COUNTRIES = ["DE", "FR", "NO", "JP", "BR", "US", "ÎS", "ZA"]
NAMES = ["Ana", "Björn", "Chloé", "Dmitri", "Eun-ji", "Fatima", "Göran", "Hiroshi", "Zoë"]


def build_source(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """A small shop: about 5% customers, 30% orders, 65% order items."""
    rng = random.Random(seed)
    n_customers = max(10, rows * 5 // 100)
    n_orders = max(10, rows * 30 // 100)
    n_items = max(10, rows - n_customers - n_orders)
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT,
            country VARCHAR(2), created_at DATETIME NOT NULL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY,
            customer_id INTEGER NOT NULL REFERENCES customers(id),
            status TEXT NOT NULL, total NUMERIC(12, 2), ordered_at TIMESTAMPTZ NOT NULL);
        CREATE TABLE order_items (id INTEGER PRIMARY KEY,
            order_id INTEGER NOT NULL REFERENCES orders(id), sku TEXT NOT NULL,
            qty INTEGER NOT NULL, unit_price NUMERIC(10, 2) NOT NULL, note TEXT);
    """)
    con.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
        (
            (
                i,
                f"{rng.choice(NAMES)} {i}",
                None if i % 17 == 0 else f"user{i}@example.com",
                rng.choice(COUNTRIES),
                f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} 08:{i % 60:02d}:00",
            )
            for i in range(1, n_customers + 1)
        ),
    )
    con.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
        (
            (
                i,
                rng.randint(1, n_customers),
                rng.choice(["new", "paid", "shipped"]),
                str(Decimal(rng.randint(100, 9_999_999)) / 100),
                f"2025-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:15:00+00:00",
            )
            for i in range(1, n_orders + 1)
        ),
    )
    con.executemany(
        "INSERT INTO order_items VALUES (?, ?, ?, ?, ?, ?)",
        (
            (
                i,
                rng.randint(1, n_orders),
                f"SKU-{rng.randint(1, 5000):05d}",
                rng.randint(1, 9),
                str(Decimal(rng.randint(50, 99_999)) / 100),
                None
                if i % 5
                else rng.choice(["gift wrap 🎁", "rush", "", "tab\there", "line\nbreak"]),
            )
            for i in range(1, n_items + 1)
        ),
    )
    con.commit()
    con.close()
    return {"customers": n_customers, "orders": n_orders, "order_items": n_items}


def write_pipeline(directory: Path) -> Path:
    source, dest = (directory / "source.db").resolve(), (directory / "destination.db").resolve()
    path = directory / "demo.yml"
    path.write_text(
        "name: demo\n"
        f"source: {{url: 'sqlite:///{source}'}}\n"
        f"destination: {{url: 'sqlite:///{dest}'}}\n"
        "streams:\n  - table: customers\n  - table: orders\n  - table: order_items\n"
        "batch_size: 5000\n",
        encoding="utf-8",
    )
    return path


def kill_part_way(pipeline: Path, total: int, console: Console) -> int:
    """Start `milepost run` as a real process and SIGKILL it once ~40% is committed."""
    cmd = [sys.executable, "-m", "milepost", "run", str(pipeline), "--progress", "jsonl"]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    committed = 0
    assert child.stdout is not None
    for line in child.stdout:
        event = json.loads(line)
        if event["kind"] == "batch":
            committed += event.get("rows", 0)
            if committed >= total * 0.4:
                os.kill(child.pid, signal.SIGKILL)
                break
    child.wait()
    if child.returncode == -signal.SIGKILL:
        console.print(
            f"[red]killed[/] the copy (pid {child.pid}) with SIGKILL after "
            f"{committed:,} of {total:,} rows were committed"
        )
    else:
        console.print(f"the copy finished (exit {child.returncode}) before it could be killed")
    return committed


def run_demo(rows: int, directory: Path, console: Console) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob("destination.db*"):
        leftover.unlink()
    console.print(f"[bold]1.[/] building {directory / 'source.db'} with {rows:,} rows")
    counts = build_source(directory / "source.db", rows)
    pipeline_file = write_pipeline(directory)
    console.print(f"[bold]2.[/] milepost run {pipeline_file}, killed part-way")
    kill_part_way(pipeline_file, sum(counts.values()), console)
    console.print(f"[bold]3.[/] milepost run {pipeline_file} again: it resumes")
    pipeline = load_pipeline(pipeline_file)
    with RichProgress(console) as bars:
        Runner(pipeline, on_event=bars).run()
    console.print("[bold]4.[/] source and destination compared")
    return compare(pipeline_file, list(counts), console)


def compare(pipeline_file: Path, tables: list[str], console: Console) -> int:
    pipeline = load_pipeline(pipeline_file)
    src = connectors.connect(parse_database_url(pipeline.source.url, key="source"), "source")
    dst = connectors.connect(pipeline.destination_url(), "destination")
    report = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    report.add_column("table", min_width=11, no_wrap=True)
    report.add_column("src rows")
    report.add_column("dst rows")
    for side in ("src", "dst"):
        report.add_column(f"{side} checksum", min_width=16, no_wrap=True)
    report.add_column("equal")
    equal = True
    try:
        for name in tables:
            cols = [r[1] for r in src.query(f"PRAGMA table_info({src.quote(name)})")]
            a = table_sum(src, src.quote(name), cols)
            b = table_sum(dst, dst.quote(name), cols)
            same = a == b
            equal &= same
            report.add_row(
                name,
                f"{a.rows:,}",
                f"{b.rows:,}",
                a.hex,
                b.hex,
                "[green]yes[/]" if same else "[red]NO[/]",
            )
    finally:
        src.close()
        dst.close()
    console.print(report)
    return EXIT_DONE if equal else EXIT_MISMATCH
