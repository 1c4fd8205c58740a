"""Verifying a 2,000,000-row table takes no more memory than verifying 200,000 rows.

The in-database methods only ever bring two numbers per range into milepost; the
client-side comparison streams rows. This forces the latter for every range: the source
column is `json` written with its keys out of order, the destination's is `jsonb`, so the
canonical texts differ everywhere and every range is settled by value on the client,
both sides streamed through milepost. `make torture` runs it (a minute or two).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import Database

pytestmark = pytest.mark.torture


def peak_rss_mb(pipeline: Path) -> tuple[float, dict]:
    """Peak RSS of one `milepost verify --json` process, from /usr/bin/time."""
    time_bin = shutil.which("time") or "/usr/bin/time"
    proc = subprocess.run(
        [time_bin, "-f", "%M", sys.executable, "-m", "milepost", "verify", str(pipeline), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kb = int(proc.stderr.strip().splitlines()[-1])
    return kb / 1024, json.loads(proc.stdout)


def test_verifying_2m_rows_by_value_uses_bounded_memory(tmp_path: Path, pg: Database) -> None:
    if not Path("/usr/bin/time").exists():
        pytest.skip("needs /usr/bin/time to read a process's peak RSS")
    pg.script("""
        CREATE TABLE big (id bigint PRIMARY KEY, j json, note text);
        INSERT INTO big SELECT g, ('{"b": ' || g || ', "a": "x"}')::json,
            CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END
        FROM generate_series(1, 2000000) g;
        ANALYZE big
    """)
    other = Database("postgresql", pg.url)
    pg.script("""
        CREATE TABLE big_copy (id bigint PRIMARY KEY, j jsonb, note text);
        INSERT INTO big_copy SELECT id, j::jsonb, note FROM big;
        CREATE TABLE small_copy (id bigint PRIMARY KEY, j jsonb, note text);
        INSERT INTO small_copy SELECT id, j::jsonb, note FROM big WHERE id <= 200000;
        ANALYZE big_copy;
        ANALYZE small_copy
    """)
    figures = {}
    for name, target, where in (
        ("small", "small_copy", "id <= 200000"),
        ("big", "big_copy", None),
    ):
        stream = {"table": "big", "name": target, **({"where": where} if where else {})}
        path = tmp_path / f"{name}.yml"
        path.write_text(
            yaml.safe_dump(
                {
                    "name": f"memory_{name}",
                    "source": {"url": pg.url},
                    "destination": {"url": other.url},
                    "streams": [stream],
                }
            )
        )
        rss, report = peak_rss_mb(path)
        s = report["streams"][0]
        assert report["equal"], report
        assert s["settled_by_value"] == s["chunks_compared"] > 0, s  # every range by value
        figures[name] = (rss, s["source_rows"])
    print(f"\npeak RSS of milepost verify, every range streamed and hashed by value: {figures}")
    assert figures["big"][1] == 2_000_000 and figures["small"][1] == 200_000
    small_mb, big_mb = figures["small"][0], figures["big"][0]
    assert big_mb < 200, figures
    assert big_mb - small_mb < max(15, 0.15 * small_mb), figures
