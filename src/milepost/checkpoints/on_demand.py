"""`milepost checkpoints create`: a checkpoint now, whether or not the pipeline is running.

Idle, the snapshot is taken here from the ledger. Running, the request goes through
the ledger (so it reaches a runner on any machine); the runner takes it after its
current batch, answers with the id, and this waits for the answer.
"""

from __future__ import annotations

import json
import secrets
import time

from milepost import connectors, ledger, run_requests
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.checkpoints.model import Checkpoint
from milepost.config import Pipeline
from milepost.errors import ConfigError, MilepostError
from milepost.events import Listener, ignore

POLL_S = 0.2


def create_checkpoint(
    pipeline: Pipeline, reason: str | None, *, timeout_s: float = 120.0, emit: Listener = ignore
) -> str:
    """The id of a new manual checkpoint of `pipeline`'s run."""
    never_ran = ConfigError(
        f"Pipeline '{pipeline.name}' has not run yet; there is nothing to checkpoint.",
        hint="Start it with `milepost run`.",
    )
    if connectors.new_sqlite_file(pipeline.destination_url()) is not None:
        raise never_ran  # opening it would leave an empty database file behind
    keeper = CheckpointKeeper(pipeline, emit)
    keeper.open()
    dst = connectors.connect(pipeline.destination_url(), "destination")
    try:
        run = ledger.read_run(dst, pipeline.name) if ledger.tables_exist(dst) else None
        if run is None or not run.run_id:
            raise never_ran
        ledger.ensure_tables(dst)
        if not ledger.holder_is_alive(run, time.time()):
            made: Checkpoint = keeper.take(dst, "manual", reason=reason)
            return made.id
        token = secrets.token_hex(8)
        request = json.dumps({"token": token, "reason": reason})
        if not run_requests.request_checkpoint(dst, pipeline.name, request):
            made = keeper.take(dst, "manual", reason=reason)  # it stopped meanwhile
            return made.id
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with dst.transaction():
                now = ledger.read_run(dst, pipeline.name)
            answer = json.loads(now.checkpoint_answer) if now and now.checkpoint_answer else {}
            if answer.get("token") == token:
                if answer.get("id"):
                    return str(answer["id"])
                raise MilepostError(
                    f"Pipeline '{pipeline.name}': the running run could not take the "
                    f"checkpoint: {answer.get('error', 'no reason given')}."
                )
            if now is None or not ledger.holder_is_alive(now, time.time()):
                made = keeper.take(dst, "manual", reason=reason)  # it ended meanwhile
                return made.id
            time.sleep(POLL_S)
        raise MilepostError(
            f"Pipeline '{pipeline.name}': the running run did not answer the checkpoint "
            f"request within {timeout_s:.0f}s.",
            hint="It takes checkpoints after its current batch; a very slow batch delays it. "
            "`milepost checkpoints list` shows whether it was taken.",
        )
    finally:
        dst.close()
