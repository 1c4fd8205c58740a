"""Progress events: the runner emits them, the CLI draws them, tests and the API read them.

The library never prints. Whatever shows progress subscribes to these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # run | phase | stream | batch | stream_done | message | retry | alert | finished
    stream: str | None = None
    rows: int = 0
    rows_done: int = 0
    rows_total: int | None = None
    text: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, 0) or k == "kind"}


Listener = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener used when nobody watches."""
