"""Streams into chunks: parents before children, each table cut into cursor ranges.

Chunks are planned once, when a run starts fresh, and stored in the ledger. A
resumed run reads them back, so changing `workers` between runs only changes how
many chunks are worked on at once, never where their boundaries lie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from milepost import ledger, transfer, watermarks, write_modes
from milepost.keyset import Key, nulls_start
from milepost.schema import DestinationPlan, SourceTable

# Enough chunks for parallel workers, few enough that the ledger stays small.
ROWS_PER_CHUNK_BATCHES = 20
MAX_CHUNKS = 64


@dataclass(frozen=True)
class ChunkPlan:
    """Rows of one stream with lo < key <= hi (None: unbounded on that side)."""

    index: int
    lo: Key | None
    hi: Key | None


def foreign_key_order(tables: list[SourceTable]) -> list[SourceTable]:
    """Parents before the children that reference them; the file's order otherwise."""
    by_name = {t.name: t for t in tables}
    graph: dict[str, set[str]] = {t.name: set() for t in tables}
    for t in tables:
        for fk in t.foreign_keys:
            parent = fk.get("referred_table")
            if parent in by_name and parent != t.name:
                graph[t.name].add(parent)
    sorter = TopologicalSorter(graph)
    try:
        order = []
        sorter.prepare()
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=[t.name for t in tables].index)
            order.extend(ready)
            sorter.done(*ready)
    except CycleError:
        return tables
    return [by_name[n] for n in order]


def plan_chunks(
    conn: Any, src: SourceTable, table_sql: str, rows_estimate: int | None, batch_size: int
) -> list[ChunkPlan]:
    """Cut an integer single-column cursor into even ranges; anything else is one chunk."""
    if rows_estimate is None or len(src.cursor) != 1 or write_modes.needs_order(src):
        return [ChunkPlan(0, None, None)]
    wanted = min(MAX_CHUNKS, math.ceil(rows_estimate / (batch_size * ROWS_PER_CHUNK_BATCHES)))
    if wanted <= 1:
        return [ChunkPlan(0, None, None)]
    col = conn.quote(src.cursor[0])
    where = f" WHERE {conn.verbatim(src.stream.where)}" if src.stream.where else ""
    lo, hi = conn.query(f"SELECT min({col}), max({col}) FROM {table_sql}{where}")[0]
    if not isinstance(lo, int) or not isinstance(hi, int) or isinstance(lo, bool):
        return [ChunkPlan(0, None, None)]
    step = max(1, math.ceil((hi - lo + 1) / wanted))
    bounds = list(range(lo - 1 + step, hi, step))
    edges: list[Key | None] = [None, *[(b,) for b in bounds], None]
    return [ChunkPlan(i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]


def record_plans(
    src: Any,
    dst: Any,
    pipeline: Any,
    plans: list[DestinationPlan],
    marks: dict[str, watermarks.Watermark],
) -> None:
    """Plan every stream's chunks and write them to the ledger (inside the schema phase's
    transaction).

    A migrate stream that a completed run copied gets no chunks; an incremental one that a
    completed run copied gets one chunk after its high water (less `lookback`); every
    other stream is cut into ranges. A stream whose leading cursor column may be NULL gets
    one more chunk for those rows (keyset.null_lead).
    """
    for position, plan in enumerate(plans):
        table = plan.source
        stream = table.stream
        if stream.kind in ("endpoint", "python"):
            from milepost.page_streams import record_stream  # HTTP and Python sources

            record_stream(dst, pipeline.name, table, position, marks)
            continue
        relation = table.relation(src)
        mark = marks.get(stream.target)
        estimate = table.estimate_rows(src)
        if watermarks.skipped(stream, marks):
            chunks: list[ChunkPlan] = []
        elif mark is not None:
            start = watermarks.start_after(src, relation, table.cursor, stream, mark)
            chunks = [ChunkPlan(0, start, None)]
        else:
            chunks = plan_chunks(src, table, relation, estimate, pipeline.batch_size)
        if table.lead_nullable and not watermarks.skipped(stream, marks):
            after = mark.null_high_water if mark else None
            chunks.append(ChunkPlan(len(chunks), after or nulls_start(table.cursor), None))
        bounds = src.cursor_bounds(table.reader(src), table.cursor, table.range())
        ledger.record_stream(
            dst,
            pipeline.name,
            stream.target,
            position,
            table.cursor,
            estimate,
            transfer.choose(src, dst, table).name,
            [(c.index, c.lo, c.hi) for c in chunks],
            bounds,
        )
