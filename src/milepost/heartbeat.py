"""The lease kept fresh on a connection of its own, and the ledger watched for requests.

A slow batch must not cost the lease, so beating is not the workers' job. The same
thread reads, once a second, what others asked of the run through the ledger
(`milepost pause`, `milepost checkpoints create`) and hands it to the runner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from milepost import connectors, ledger, run_requests
from milepost.config import Pipeline
from milepost.errors import LeaseLost


class Heartbeat(threading.Thread):
    POLL_S = 1.0

    def __init__(
        self,
        pipeline: Pipeline,
        lease: ledger.Lease,
        *,
        on_pause: Callable[[], None],
        on_checkpoint_request: Callable[[str], None],
        on_lease_lost: Callable[[LeaseLost], None],
    ) -> None:
        super().__init__(name="milepost-heartbeat", daemon=True)
        self.pipeline = pipeline
        self.lease = lease
        self.on_pause = on_pause
        self.on_checkpoint_request = on_checkpoint_request
        self.on_lease_lost = on_lease_lost
        self._done = threading.Event()

    def run(self) -> None:
        conn = None
        last_beat = time.monotonic()
        while not self._done.wait(self.POLL_S):
            try:
                if conn is None:
                    conn = connectors.connect(self.pipeline.destination_url(), "destination")
                if time.monotonic() - last_beat >= ledger.HEARTBEAT_EVERY_S:
                    ledger.heartbeat(conn, self.lease)
                    last_beat = time.monotonic()
                asked = run_requests.read_requests(conn, self.lease)
                if asked.pause:
                    self.on_pause()
                if asked.checkpoint:
                    self.on_checkpoint_request(asked.checkpoint)
            except LeaseLost as exc:
                self.on_lease_lost(exc)
                break
            except Exception:
                # A missed beat is harmless while the process lives; reconnect next time.
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def finish(self) -> None:
        self._done.set()
        self.join(timeout=10)
