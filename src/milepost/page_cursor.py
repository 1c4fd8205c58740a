"""The incremental cursor of an HTTP resource: what to ask for, and what was seen.

An incremental HTTP stream names a record field (`cursor: [updated_at]`) and the query
parameter that filters by it (`since_param: since`). Per resource, the largest value a
completed run saw is its high water (resource_ledger); the next run sends it as
`since`, minus `lookback` when given.

Most APIs read `since` inclusively, so the records whose field equals the high water
come back on the next run. With `write: upsert` they simply update themselves. With
`write: append` they would be doubled, so the high water also remembers the identities
(the `key:` values, or the whole record without a key) of the records seen at exactly
that value, and the next run drops those, and anything older than the high water that
an API sends in spite of `since`. A record that changed comes back with a newer value
and is appended as a new row: append keeps every version.

The `since` a resource's first page was asked with is kept in its state, so a resumed
resource goes on asking the same question, whatever a later high water says.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from milepost.config import StreamConfig, parse_duration
from milepost.pages import ORDER

# More records than this on one cursor value are not remembered one by one; see
# docs/sources/http.md ("append and equal values").
MAX_BOUNDARY_KEYS = 10_000


class CursorTracker:
    """One resource's incremental cursor during one run."""

    def __init__(self, stream: StreamConfig, kind: str, previous: Mapping[str, Any] | None) -> None:
        self.field = (stream.cursor or [""])[0]
        self.order = ORDER[kind]
        self.kind = kind
        self.key = stream.key
        self.dedupe = stream.write == "append"
        self.lookback = stream.lookback
        self.previous = dict(previous) if previous else None
        self._prev_value = self._ordered(self.previous.get("value")) if self.previous else None
        self._prev_keys = set(self.previous.get("keys", [])) if self.previous else set()
        self.seen: Any = None
        self._seen_order: Any = None
        self.seen_keys: list[str] = []

    def resume(self, state: Mapping[str, Any] | None) -> Any:
        """Pick up what the committed pages saw; the `since` value this resource sends."""
        if state and "since" in state:
            self.seen = state.get("seen")
            self._seen_order = self._ordered(self.seen)
            self.seen_keys = list(state.get("seen_keys", []))
            return state["since"]
        return self._since()

    def _since(self) -> Any:
        if self.previous is None or self.previous.get("value") is None:
            return None
        value = self.previous["value"]
        if self.lookback is None:
            return value
        return _minus(value, self.kind, self.lookback)

    def state(self, since: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"since": since, "seen": self.seen}
        if self.dedupe:
            out["seen_keys"] = self.seen_keys
        return out

    def keep(self, record: Mapping[str, Any]) -> bool:
        """Note the record's cursor value; False for a record an append has copied before."""
        raw = record.get(self.field)
        value = self._ordered(raw)
        if value is None:
            return True  # no cursor value: never filtered, never the high water
        if self._seen_order is None or value > self._seen_order:
            self.seen, self._seen_order, self.seen_keys = raw, value, []
        if self.dedupe and value == self._seen_order and len(self.seen_keys) < MAX_BOUNDARY_KEYS:
            self.seen_keys.append(self._identity(record))
        if not self.dedupe or self._prev_value is None:
            return True
        if value < self._prev_value:
            return False
        return not (value == self._prev_value and self._identity(record) in self._prev_keys)

    def high_water(self) -> dict[str, Any] | None:
        """After the final page: the larger of the old high water and what was seen (None
        when nothing was seen, so the old one stays)."""
        if self._seen_order is None:
            return None
        if self._prev_value is not None and self._prev_value > self._seen_order:
            return None
        out: dict[str, Any] = {"value": self.seen}
        if self.dedupe:
            keys = list(self.seen_keys)
            if self._prev_value is not None and self._prev_value == self._seen_order:
                keys = sorted(self._prev_keys | set(keys))[:MAX_BOUNDARY_KEYS]
            out["keys"] = keys
        return out

    def _identity(self, record: Mapping[str, Any]) -> str:
        if self.key:
            return json.dumps([record.get(k) for k in self.key], sort_keys=True, default=str)
        text = json.dumps(record, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def _ordered(self, raw: Any) -> Any:
        if raw is None:
            return None
        try:
            value = self.order(raw)
        except (ValueError, TypeError):
            return None
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            # An API that writes some times with an offset and some without: read the
            # bare ones as UTC, so that the two kinds compare instead of raising.
            value = value.replace(tzinfo=dt.UTC)
        return value


def _minus(value: Any, kind: str, lookback: str | int | float) -> Any:
    """`value` moved back by `lookback`, written the way the API wrote it."""
    if kind in ("timestamp", "timestamptz", "date"):
        delta = parse_duration(lookback) if isinstance(lookback, str) else None
        if delta is None:
            delta = dt.timedelta(seconds=float(lookback))
        text = str(value)
        zulu = text.endswith(("Z", "z"))
        if kind == "date":
            return (dt.date.fromisoformat(text) - delta).isoformat()
        moved = dt.datetime.fromisoformat(text) - delta
        shown = moved.isoformat()
        return shown.replace("+00:00", "Z") if zulu else shown
    if isinstance(lookback, str):
        raise ValueError(f"a duration ({lookback}) cannot move a {kind} cursor back")
    return type(value)(value - lookback) if isinstance(value, int | float) else value
