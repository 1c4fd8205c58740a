"""A user's `where:` is their SQL, verbatim: % and braces must reach the server unchanged."""

from __future__ import annotations

import milepost
from conftest import Database


def test_where_with_percent_and_braces_copies_exactly_the_matching_rows(
    source_db: Database, dest_db: Database
) -> None:
    source_db.script("""
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(40) NOT NULL);
        INSERT INTO notes VALUES (1, 'a%b'), (2, 'ab'), (3, '{x}%'), (4, 'a%{y}'), (5, 'zz')
    """)
    pipeline = milepost.build_pipeline(
        {
            "name": "where-literals",
            "source": {"url": source_db.url},
            "destination": {"url": dest_db.url},
            "streams": [
                {"table": "notes", "where": "body LIKE '%!%%' ESCAPE '!' OR body = '{x}%'"}
            ],
            "batch_size": 1,
        }
    )
    milepost.run(pipeline)
    assert dest_db.sql("SELECT id, body FROM notes ORDER BY id") == [
        (1, "a%b"),
        (3, "{x}%"),
        (4, "a%{y}"),
    ]
