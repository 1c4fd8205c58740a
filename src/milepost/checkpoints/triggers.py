"""When a run takes checkpoints, and taking them without holding up the copy.

Triggers (DESIGN.md): every N records, every T seconds, at phase boundaries, before a
risky operation, on pause or stop, on failure, and on demand. The periodic and
on-demand ones are taken by a thread of their own, on its own connection, while the
workers go on copying: a snapshot reads the ledger's committed rows, so it stands on
batch boundaries whenever it is taken ("after the current batch"). The others are
taken where the run is at that moment, by the runner itself.

A checkpoint that cannot be written never stops a run: the ledger is the truth and
the copy goes on, with a message saying so. The one exception is `before_risky`: a
destructive step does not start unless its checkpoint (and backup) exist.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from milepost import connectors, ledger, run_requests
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.checkpoints.model import Checkpoint, Kind
from milepost.checkpoints.settings import CheckpointSettings
from milepost.config import Pipeline
from milepost.events import Event, Listener


class Due:
    """Every N records or every T seconds, whichever comes first: a pure counter."""

    def __init__(
        self, settings: CheckpointSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_records = settings.every_records
        self.every_seconds = settings.every_seconds
        self.clock = clock
        self.rows = 0
        self.since = clock()

    def add(self, rows: int) -> bool:
        """Count committed rows; True when a checkpoint is due (and the count restarts).

        Rows past the limit count towards the next one, so "every 100,000 records" over
        2,000,000 rows in batches of 10,000 or 30,000 is 20 checkpoints, not 19."""
        self.rows += rows
        by_rows = self.every_records is not None and self.rows >= self.every_records
        by_time = self.every_seconds is not None and self.clock() - self.since >= self.every_seconds
        if by_rows and self.every_records is not None and not by_time:
            self.rows %= self.every_records
        elif by_rows or by_time:
            self.rows = 0
        if by_rows or by_time:
            self.since = self.clock()
        return by_rows or by_time


class RunCheckpoints:
    """The checkpoints of one running run."""

    def __init__(
        self,
        pipeline: Pipeline,
        keeper: CheckpointKeeper,
        emit: Listener,
        counts: Callable[[], tuple[int, int]],
    ) -> None:
        self.pipeline = pipeline
        self.settings = pipeline.checkpoints
        self.keeper = keeper
        self.emit = emit
        self.counts = counts  # (retries, errors) so far
        self.due = Due(self.settings)
        self._queue: queue.Queue[tuple[Kind, str | None, str | None] | None] = queue.Queue()
        self._pending = threading.Event()  # an automatic one is queued: don't queue two
        self._seen: set[str] = set()
        self._thread: threading.Thread | None = None
        self._lease: ledger.Lease | None = None
        self._lock = threading.Lock()

    # --- the background taker ---

    def start(self, lease: ledger.Lease) -> None:
        self._lease = lease
        self._thread = threading.Thread(
            target=self._serve, name="milepost-checkpoints", daemon=True
        )
        self._thread.start()

    def finish(self) -> None:
        """Take what was asked for so far, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def after_batch(self, rows: int) -> None:
        with self._lock:
            due = self.due.add(rows)
        if due and not self._pending.is_set():
            self._pending.set()
            self._queue.put(("automatic", None, None))

    def request_manual(self, request: str) -> None:
        """A `checkpoints create` request read from the ledger (JSON: token, reason)."""
        try:
            asked = json.loads(request)
            token, reason = str(asked["token"]), asked.get("reason")
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            if token in self._seen:
                return
            self._seen.add(token)
        self._queue.put(("manual", reason, token))

    def _serve(self) -> None:
        conn = None
        try:
            while (item := self._queue.get()) is not None:
                kind, reason, token = item
                if kind == "automatic":
                    self._pending.clear()
                try:
                    if conn is None:
                        conn = connectors.connect(self.pipeline.destination_url(), "destination")
                    made = self.take(conn, kind, reason)
                    answer = {"token": token, "id": made.id if made else None}
                    if made is None and conn is not None:
                        conn.close()  # it may be what failed: connect afresh next time
                        conn = None
                except Exception as exc:
                    answer = {"token": token, "error": _brief(exc)}
                    if conn is not None:
                        conn.close()
                    conn = None
                if token is not None:
                    self._answer(conn, answer)
        finally:
            if conn is not None:
                conn.close()

    def _answer(self, conn: Any, answer: dict[str, Any]) -> None:
        assert self._lease is not None
        try:
            if conn is None:
                conn = connectors.connect(self.pipeline.destination_url(), "destination")
            run_requests.answer_checkpoint(conn, self._lease, json.dumps(answer))
        except Exception as exc:
            self.emit(Event("message", text=f"could not answer a checkpoint request: {exc}"))

    # --- taking one where the run stands ---

    def at(
        self, conn: Any, kind: Kind, reason: str | None = None, *, run_id: str | None = None
    ) -> Checkpoint | None:
        """A checkpoint now, unless the settings turn this kind off. Failure is a message,
        not an error, except before a risky operation."""
        if kind == "phase" and not self.settings.phase_boundaries:
            return None
        if kind == "before_risky" and not self.settings.before_risky:
            return None
        if kind == "before_risky":
            return self.keeper.take(conn, kind, reason=reason, run_id=run_id, **self._counts())
        return self.take(conn, kind, reason)

    def take(self, conn: Any, kind: Kind, reason: str | None) -> Checkpoint | None:
        try:
            return self.keeper.take(conn, kind, reason=reason, **self._counts())
        except Exception as exc:
            self.emit(
                Event(
                    "message",
                    text=f"checkpoint ({kind}) not written: {_brief(exc)}; the ledger still "
                    "records every committed batch",
                )
            )
            if kind == "manual":
                raise
            return None

    def _counts(self) -> dict[str, int]:
        retries, errors = self.counts()
        return {"retries": retries, "errors": errors}


def _brief(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
