"""The verify phase of `milepost run`: the gate between copy and finalize.

- A resumed stream is verified in full, even with `verify: {mode: off}`: a destination
  row changed while the run was down stops the resumed run with exit 4 before
  finalize, naming the stream and the range; the run stays in the verify phase, failed,
  until `milepost verify --repair` re-copies the range and the next `milepost run`
  verifies again and finishes.
- `mode: off` on an uninterrupted run skips the phase; `mode: sample` compares the
  stated share of each stream's chunks.

Runs that must be killed are real child processes killed at a crash point
(milepost/crash.py); the others run in this process.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

import milepost
from conftest import Database
from faults import (
    TABLE,
    Cli,
    assert_same_rows,
    count_rows,
    create_source,
    ledger_rows,
    make_rows,
    update_pipeline,
    write_pipeline,
)
from milepost.cli import app
from milepost.events import Event

BATCH = 50


def run_killed_at(pipeline: Path, point: str) -> None:
    env = {**os.environ, "MILEPOST_CRASH_AT": point}
    killed = subprocess.run(
        [sys.executable, "-m", "milepost", "run", str(pipeline), "--progress", "none"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pipeline.parent,
    )
    assert killed.returncode == -9, f"not killed at {point}: {killed.stderr}"


def cli_json(*args: str) -> Any:
    """A short CLI command, in this process (Typer's runner), that prints one JSON document
    and exits 0."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.stderr}"
    return json.loads(result.stdout)


def phases(run: Cli) -> list[str]:
    return [e.get("text", "") for e in run.events if e.get("kind") == "phase"]


def test_a_resumed_stream_is_verified_even_with_mode_off_and_gates_finalize(
    tmp_path: Path, lite: Database, pg: Database
) -> None:
    rows = make_rows(1_000, seed=4)
    create_source(lite, rows)
    path = write_pipeline(tmp_path, "gate", lite, pg, batch_size=BATCH)
    update_pipeline(path, verify={"mode": "off"})
    run_killed_at(path, "copy.after_commit@3")
    assert ledger_rows(pg, "gate") == count_rows(pg) == 3 * BATCH
    key = rows[77][0]  # copied before the kill
    pg.sql(f"UPDATE {TABLE} SET qty = 31337 WHERE id = %s", (key,))

    resumed = Cli.run(path)
    code = resumed.finish()

    assert code == 4, resumed.describe(code)
    assert "verify" in phases(resumed) and "finalize" not in phases(resumed)
    message = resumed.stderr
    found = re.search(
        r"the first: (\w+) after (\(start\)|\((\d+)\)) up to (the end|\((\d+)\)), "
        r"([\d,]+) row\(s\) in the source, ([\d,]+) in the destination",
        message,
    )
    assert found, message
    stream, lo, hi = found.group(1), found.group(3), found.group(5)
    assert stream == TABLE
    assert (lo is None or int(lo) < key) and (hi is None or key <= int(hi)), message
    assert found.group(6) == found.group(7) and 1 <= int(found.group(6)) <= BATCH, message
    status = cli_json("status", str(path), "--json")
    assert (status["phase"], status["status"]) == ("verify", "failed"), status
    assert count_rows(pg) == len(rows)  # the copy itself finished

    fixed = cli_json("verify", str(path), "--repair", "--json")
    assert [(r["lo"], r["hi"]) for r in fixed["repaired"]] == [
        (None if lo is None else [int(lo)], None if hi is None else [int(hi)])
    ]
    assert fixed["after_repair"]["equal"] is True
    status = cli_json("status", str(path), "--json")
    assert (status["phase"], status["status"]) == ("verify", "failed"), status

    final = Cli.run(path)
    code = final.finish()

    assert code == 0, final.describe(code)
    verified = [e for e in final.events if e.get("kind") == "verified"]
    assert verified and verified[-1]["data"]["equal"] is True, final.events[-5:]
    assert phases(final)[-1] == "finalize"
    status = cli_json("status", str(path), "--json")
    assert (status["phase"], status["status"]) == ("done", "done"), status
    assert assert_same_rows(lite, pg, "after repair and run") == len(rows)


def test_mode_off_on_an_uninterrupted_run_skips_the_phase(tmp_path: Path, lite: Database) -> None:
    create_source(lite, make_rows(300, seed=2))
    dest = tmp_path / "dest.db"
    path = write_pipeline(
        tmp_path, "off", lite, Database("sqlite", f"sqlite:///{dest}", dest), batch_size=BATCH
    )
    update_pipeline(path, verify={"mode": "off"})

    run = Cli.run(path)
    code = run.finish()

    assert code == 0, run.describe(code)
    assert "copy" in phases(run) and "finalize" in phases(run)
    assert "verify" not in phases(run), run.events
    assert not [e for e in run.events if e.get("kind") == "verified"]
    assert any("verify phase skipped" in m for m in run.messages()), run.messages()


def test_mode_sample_compares_a_share_of_the_chunks(tmp_path: Path, lite: Database) -> None:
    rows = make_rows(8_000, seed=6)
    create_source(lite, rows)
    dest = tmp_path / "dest.db"
    path = write_pipeline(
        tmp_path, "sample", lite, Database("sqlite", f"sqlite:///{dest}", dest), batch_size=BATCH
    )
    update_pipeline(path, verify={"mode": "sample", "sample": 0.25})
    events: list[Event] = []

    result = milepost.run(milepost.load_pipeline(path), on_event=events.append)

    assert result.status == "done"
    (verified,) = [e for e in events if e.kind == "verified"]
    counted = re.search(r"\((\d+) of (\d+) chunk\(s\) compared", verified.text or "")
    assert counted, verified
    compared, total = int(counted.group(1)), int(counted.group(2))
    assert total == 8 and compared == math.ceil(total * 0.25) < total, verified
    assert verified.data["equal"] is True
    # Only the sampled chunks' rows were compared: about a quarter of them.
    assert 0 < verified.rows_done < len(rows) / 2, verified
