"""`milepost pause`: a request written into the ledger, so it reaches the runner anywhere.

The runner's heartbeat thread reads the request within a second and stops the run
after its batches in flight, as SIGTERM would. Asking through the destination
database rather than a signal works when the run is on another machine, in a
container, or under another user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from milepost import connectors, ledger, run_requests
from milepost.config import Pipeline
from milepost.errors import EXIT_DONE, EXIT_PAUSED
from milepost.status import shown_status

POLL_S = 0.2


@dataclass(frozen=True)
class PauseOutcome:
    text: str
    exit_code: int


def request_pause(pipeline: Pipeline, *, wait: bool, timeout_s: float) -> PauseOutcome:
    name = pipeline.name
    if connectors.new_sqlite_file(pipeline.destination_url()) is not None:
        return PauseOutcome(f"Pipeline '{name}' has never run; nothing to pause.", EXIT_DONE)
    dst = connectors.connect(pipeline.destination_url(), "destination")
    try:
        run = ledger.read_run(dst, name) if ledger.tables_exist(dst) else None
        if run is None:
            return PauseOutcome(f"Pipeline '{name}' has never run; nothing to pause.", EXIT_DONE)
        ledger.ensure_tables(dst)
        if not ledger.holder_is_alive(run, time.time()) or not run_requests.request_pause(
            dst, name
        ):
            shown = shown_status(run.status, alive=False)
            return PauseOutcome(
                f"Pipeline '{name}' is not running (status: {shown}); nothing to pause.",
                EXIT_DONE,
            )
        token = run.lease_token
        if not wait:
            return PauseOutcome(
                f"Asked pipeline '{name}' to pause after its batches in flight.", EXIT_DONE
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with dst.transaction():
                now = ledger.read_run(dst, name)
            if now is None or now.lease_token != token:
                status = now.status if now else "gone"
                return PauseOutcome(
                    f"Pipeline '{name}' stopped (status: {status}); `milepost run` resumes it.",
                    EXIT_DONE,
                )
            if not ledger.holder_is_alive(now, time.time()):
                return PauseOutcome(
                    f"Pipeline '{name}': its runner died before it could pause; "
                    "`milepost run` resumes it.",
                    EXIT_DONE,
                )
            time.sleep(POLL_S)
        return PauseOutcome(
            f"Pipeline '{name}' is still running after {timeout_s:.0f}s; the pause request "
            "stands and it will stop after its batches in flight.",
            EXIT_PAUSED,
        )
    finally:
        dst.close()
