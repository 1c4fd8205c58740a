"""What a verification found, per stream and range, and its JSON form (`--json`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from milepost.keyset import Key, key_to_values


@dataclass(frozen=True)
class Difference:
    """Rows with lo < cursor <= hi (None: open on that side) are not the same."""

    stream: str
    lo: Key | None
    hi: Key | None
    source_rows: int
    destination_rows: int


@dataclass
class StreamReport:
    stream: str
    table: str
    method: str
    chunks: int
    chunks_compared: int = 0
    chunks_pending: int = 0
    source_rows: int = 0
    destination_rows: int = 0
    differences: list[Difference] = field(default_factory=list)
    chunks_differing: int = 0
    settled_by_value: int = 0  # ranges whose text differed but whose values are equal
    rows_set_aside: int = 0  # left out of the source side: see _milepost_rejected_rows

    @property
    def equal(self) -> bool:
        return not self.differences


@dataclass
class Report:
    pipeline: str
    streams: list[StreamReport]
    seconds: float = 0.0

    @property
    def equal(self) -> bool:
        return all(s.equal for s in self.streams)

    @property
    def differences(self) -> list[Difference]:
        return [d for s in self.streams for d in s.differences]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data for `milepost verify --json` (keys as tagged lists, like the
        ledger's: an integer cursor is just [42])."""
        return {
            "pipeline": self.pipeline,
            "equal": self.equal,
            "seconds": round(self.seconds, 3),
            "streams": [
                {
                    "stream": s.stream,
                    "table": s.table,
                    "equal": s.equal,
                    "method": s.method,
                    "source_rows": s.source_rows,
                    "destination_rows": s.destination_rows,
                    "chunks": s.chunks,
                    "chunks_compared": s.chunks_compared,
                    "chunks_pending": s.chunks_pending,
                    "chunks_differing": s.chunks_differing,
                    "settled_by_value": s.settled_by_value,
                    "rows_set_aside": s.rows_set_aside,
                    "differences": [
                        {
                            "lo": key_doc(d.lo),
                            "hi": key_doc(d.hi),
                            "source_rows": d.source_rows,
                            "destination_rows": d.destination_rows,
                        }
                        for d in s.differences
                    ],
                }
                for s in self.streams
            ],
        }


def key_doc(key: Key | None) -> list[Any] | None:
    return None if key is None else key_to_values(key)
