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

from milepost.keyset import Key
from milepost.schema import SourceTable

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
    if rows_estimate is None or len(src.cursor) != 1:
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
