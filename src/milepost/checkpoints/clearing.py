"""`milepost checkpoints clear`: removing checkpoints by hand, and the backups they held.

Without --all, what `keep_after_success: false` does at the end of a run: the
checkpoints of finished runs go, and an unfinished run keeps its restore points.
With --all, every checkpoint of every pipeline in the store goes, the current runs'
too. Either way, a backup whose checkpoint is gone is dropped from the destination:
with nothing to roll back to, it only takes space.
"""

from __future__ import annotations

import contextlib

from milepost import backup, connectors, ledger
from milepost.checkpoints.codec import read_header
from milepost.checkpoints.errors import CheckpointError
from milepost.checkpoints.keeper import CheckpointKeeper
from milepost.checkpoints.model import document_name
from milepost.checkpoints.stores import open_store
from milepost.config import Pipeline


def clear_checkpoints(pipeline: Pipeline, *, every_pipeline: bool = False) -> str:
    keeper = CheckpointKeeper(pipeline)
    dst = None
    if connectors.new_sqlite_file(pipeline.destination_url()) is None:
        dst = connectors.connect(pipeline.destination_url(), "destination")
    try:
        has_ledger = dst is not None and ledger.tables_exist(dst)
        run = ledger.read_run(dst, pipeline.name) if has_ledger else None
        unfinished = run.run_id if run and run.run_id and run.status != "done" else None
        gone: list[str] = []  # this pipeline's checkpoints removed: their backups go too
        kept = 0
        if every_pipeline:
            gone = sorted(keeper.ids())
            removed = _clear_store(keeper)
        else:
            for entry in keeper.list():
                owner = entry.checkpoint.run_id if entry.checkpoint else _owner(keeper, entry.id)
                if unfinished is not None and owner == unfinished:
                    kept += 1
                    continue
                keeper.store.delete(document_name(entry.id))
                gone.append(entry.id)
            removed = len(gone)
        dropped = 0
        if has_ledger and dst is not None:
            ledger.ensure_tables(dst)
            # Asked by hand, so also the backups left by checkpoints that went another way
            # (retention, `clear --all` through another pipeline). The end of a run drops
            # only those of the checkpoints it removed itself.
            live = keeper.ids()
            gone += [c for c in backup.recorded_checkpoints(dst, pipeline.name) if c not in live]
            dropped = backup.drop_for(dst, pipeline.name, gone)
    finally:
        if dst is not None:
            dst.close()
        keeper.close()
    text = f"Removed {removed} checkpoint(s) and {dropped} backup table(s)"
    if kept:
        text += f"; kept the {kept} of run {unfinished}, which has not finished"
    return text + "."


def _owner(keeper: CheckpointKeeper, checkpoint_id: str) -> str | None:
    """The run an unreadable document names in its envelope, which needs no key: with a
    wrong key configured, the unfinished run's restore points must not look like nobody's.
    None when even the envelope fails its checks (a damaged document: it may go)."""
    try:
        data = keeper.store.get(document_name(checkpoint_id))
        return read_header(data, checkpoint_id=checkpoint_id).identity.run_id
    except CheckpointError:
        return None


def _clear_store(keeper: CheckpointKeeper) -> int:
    """Every document of every pipeline kept in this pipeline's store."""
    removed = 0
    settings = keeper.settings
    for name in keeper.store.pipelines():
        store = open_store(settings.store, name, **settings.store_options)
        try:
            for doc in store.list():
                with contextlib.suppress(FileNotFoundError):
                    store.delete(doc)
                removed += 1
        finally:
            store.close()
    return removed
