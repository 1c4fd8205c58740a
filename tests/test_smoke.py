"""The main path on every engine as source and as destination, through the Python API."""

from __future__ import annotations

import milepost
from conftest import Database


def test_table_copies_between_any_two_engines(source_db: Database, dest_db: Database) -> None:
    source_db.script("""
        CREATE TABLE items (id INTEGER PRIMARY KEY, label VARCHAR(40) NOT NULL, qty INTEGER);
        INSERT INTO items VALUES (1, 'a', 3), (2, 'b', NULL), (3, 'c', 7)
    """)
    pipeline = milepost.build_pipeline(
        {
            "name": "smoke",
            "source": {"url": source_db.url},
            "destination": {"url": dest_db.url},
            "streams": [{"table": "items"}],
            "batch_size": 2,
        }
    )
    result = milepost.run(pipeline)
    assert result.status == "done"
    assert dest_db.sql("SELECT id, label, qty FROM items ORDER BY id") == [
        (1, "a", 3),
        (2, "b", None),
        (3, "c", 7),
    ]
