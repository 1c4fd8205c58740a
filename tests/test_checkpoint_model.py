"""The checkpoint document: its parts, ids, life cycle, older formats, and secret masking.

The redaction tests build a snapshot from a config full of secrets, run it through the
real codec with compression and encryption off (so the stored bytes are the JSON
itself), and search those bytes for every secret.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import make_url

from milepost.checkpoints import (
    ChainCodec,
    Checkpoint,
    CheckpointCorrupt,
    CheckpointStateError,
    CheckpointVersionError,
    ChunkState,
    Position,
    SourceStream,
    StreamState,
    checkpoint_time,
    document_name,
    generate_key,
    id_from_name,
    key_from_doc,
    key_to_doc,
    load_document,
    model,
    new_checkpoint,
    new_checkpoint_id,
    redact,
    redact_text,
)
from milepost.checkpoints.redact import MASK, is_secret_name, mask_url
from milepost.config import build_pipeline

FIXTURES = Path(__file__).parent / "fixtures"
T0 = dt.datetime(2026, 11, 23, 3, 15, tzinfo=dt.UTC)


def make_checkpoint(**changes: object) -> Checkpoint:
    args: dict = {
        "pipeline": "orders_migration",
        "run_id": "run-1",
        "kind": "automatic",
        "position": Position(
            phase="copy",
            stream="orders",
            chunk=1,
            batch=7,
            watermark=key_to_doc((dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), 42)),
            rows_done=7000,
        ),
        "streams": [
            StreamState(
                name="orders",
                state="in_progress",
                rows_done=7000,
                rows_total=20000,
                chunks=[
                    ChunkState(
                        index=0, lo=None, hi=key_to_doc((1000,)), rows_written=5000, status="done"
                    ),
                    ChunkState(
                        index=1,
                        lo=key_to_doc((1000,)),
                        watermark=key_to_doc((Decimal("1.50"),)),
                        rows_written=2000,
                        batches=7,
                        status="copying",
                    ),
                ],
            )
        ],
        "source": {"orders": SourceStream(rows_estimate=20000, min_cursor=[1], max_cursor=[20000])},
        "pipeline_fingerprint": "0f3c5a9e7d1b2c44",
        "now": T0,
    }
    args.update(changes)
    return new_checkpoint(**args)  # type: ignore[arg-type]


# --- the document ------------------------------------------------------------------------


def test_a_new_checkpoint_is_created_with_an_audit_entry_and_survives_json() -> None:
    cp = make_checkpoint()
    assert cp.format_version == 2
    assert cp.status == "created"
    assert cp.created_at == T0
    assert [(a.action, a.at) for a in cp.audit] == [("created", T0)]
    doc = json.loads(json.dumps(cp.to_document()))
    assert doc["created_at"] == "2026-11-23T03:15:00Z"
    assert load_document(doc) == cp


def test_watermarks_keep_their_types_through_the_document() -> None:
    cp = load_document(json.loads(json.dumps(make_checkpoint().to_document())))
    assert key_from_doc(cp.position.watermark) == (
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        42,
    )
    assert key_from_doc(cp.stream("orders").chunks[1].watermark) == (Decimal("1.50"),)
    assert key_to_doc(None) is None and key_from_doc(None) is None


def test_the_ledgers_copying_is_in_progress_in_the_document() -> None:
    assert make_checkpoint().stream("orders").chunks[1].status == "in_progress"


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("kind",), "whenever", "kind"),
        (("position", "phase"), "dancing", "position.phase"),
        (("streams", 0, "rows_done"), -1, "streams.0.rows_done"),
        (("streams", 0, "chunks", 1, "watermark"), [{"nope": 1}], "watermark"),
        (("created_at",), "2026-11-23T03:15:00", "created_at"),  # no time zone
        (("surprise",), 1, "surprise"),
    ],
)
def test_an_invalid_document_is_corrupt_and_names_the_field(
    path: tuple, value: object, problem: str
) -> None:
    doc = make_checkpoint().to_document()
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(CheckpointCorrupt) as caught:
        load_document(doc)
    assert problem in str(caught.value)
    assert doc["id"] in str(caught.value)


def test_streams_and_chunks_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="two streams"):
        make_checkpoint(streams=[StreamState(name="a"), StreamState(name="a")])
    with pytest.raises(ValidationError, match="two chunks"):
        StreamState(name="a", chunks=[ChunkState(index=0), ChunkState(index=0)])


def test_a_newer_format_is_refused_with_a_clear_error() -> None:
    doc = make_checkpoint().to_document()
    doc["format_version"] = 3
    with pytest.raises(CheckpointVersionError, match=r"format 3.*reads formats 1 to 2"):
        load_document(doc)


@pytest.mark.parametrize("bad", [None, "2", True, 0, -1])
def test_a_missing_or_impossible_format_version_is_corrupt(bad: object) -> None:
    doc = make_checkpoint().to_document()
    doc["format_version"] = bad
    with pytest.raises(CheckpointCorrupt):
        load_document(doc)


def test_a_non_object_is_corrupt() -> None:
    with pytest.raises(CheckpointCorrupt, match="not a JSON object"):
        load_document(["format_version", 2])


# --- format 1 ------------------------------------------------------------------------------


def test_a_version_1_document_loads_and_is_upgraded() -> None:
    raw = json.loads((FIXTURES / "checkpoint_v1.json").read_text())
    cp = load_document(raw)
    assert cp.format_version == 2
    assert cp.id == "20250301T120000Z-9c1d"
    assert cp.created_at == dt.datetime(2025, 3, 1, 12, 0, 0, 500000, tzinfo=dt.UTC)
    assert cp.status == "created"
    assert cp.pipeline_fingerprint == "0f3c5a9e7d1b2c44"
    assert [(s.name, s.state, s.rows_done) for s in cp.streams] == [
        ("customers", "done", 5000),
        ("orders", "in_progress", 1200),
        ("events", "pending", 0),
    ]
    orders = cp.stream("orders")
    assert len(orders.chunks) == 1
    assert key_from_doc(orders.chunks[0].watermark) == (
        dt.datetime(2025, 3, 1, 11, 59, tzinfo=dt.UTC),
        1200,
    )
    assert cp.position.phase == "copy"
    assert cp.position.stream == "orders"
    assert cp.position.rows_done == 6200
    assert cp.errors.error_count == 0 and cp.audit[0].detail == "upgraded from format 1"
    # Format 1 did not redact its snapshot; reading it does.
    assert cp.config["source"]["url"] == "postgresql://etl:***@db.example.com/prod"
    assert "v1-era-password" not in json.dumps(cp.to_document())
    # And the upgraded document is a normal format 2 document from then on.
    assert load_document(json.loads(json.dumps(cp.to_document()))) == cp


def test_a_version_1_document_missing_a_field_is_corrupt() -> None:
    raw = json.loads((FIXTURES / "checkpoint_v1.json").read_text())
    del raw["fingerprint"]
    with pytest.raises(CheckpointCorrupt, match="format 1"):
        load_document(raw)


# --- ids and names -------------------------------------------------------------------------


def test_ids_sort_by_time_and_strictly_increase(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ids only ever increase within a process; start this test from a clean slate, and
    # leave none of its far-future ids to the tests after it.
    monkeypatch.setattr(model, "_last_ms", 0)
    a = new_checkpoint_id(T0)
    b = new_checkpoint_id(T0)  # same millisecond
    c = new_checkpoint_id(T0 - dt.timedelta(hours=1))  # the clock stepped back
    assert a < b < c
    assert a.startswith("20261123T031500.")
    assert checkpoint_time(a) is not None and checkpoint_time(a) >= T0
    later = new_checkpoint_id(T0, after="20991231T235959.999Z-000000")
    assert later > "20991231T235959.999Z-000000"


def test_names_and_ids_map_both_ways() -> None:
    cid = new_checkpoint_id(T0)
    assert document_name(cid) == cid + ".ckpt"
    assert id_from_name(document_name(cid)) == cid
    assert id_from_name("notes.txt") is None
    assert id_from_name("../x.ckpt") is None
    assert checkpoint_time("20250301T120000Z-9c1d") == dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
    assert checkpoint_time("manual-thing") is None


# --- life cycle ----------------------------------------------------------------------------


def test_status_changes_are_audited_and_make_new_objects() -> None:
    cp = make_checkpoint()
    later = T0 + dt.timedelta(seconds=5)
    validated = cp.with_status("validated", at=later, detail="read back")
    assert cp.status == "created" and validated.status == "validated"
    assert validated.audit[-1].action == "status_changed"
    assert validated.audit[-1].detail == "created -> validated: read back"
    assert validated.with_status("validated", at=later) is validated
    restored = validated.with_status("superseded", at=later).with_status("active", at=later)
    restored = restored.with_audit("restored", at=later, detail="by operator")
    assert [a.action for a in restored.audit][-1] == "restored"


def test_a_failed_checkpoint_cannot_be_revived() -> None:
    failed = make_checkpoint().with_status("failed", at=T0)
    with pytest.raises(CheckpointStateError, match="failed and cannot become active"):
        failed.with_status("active", at=T0)


def test_checkpoints_are_frozen() -> None:
    cp = make_checkpoint()
    with pytest.raises(ValidationError):
        cp.status = "active"  # type: ignore[misc]


# --- redaction ----------------------------------------------------------------------------

SECRETS = [
    "pg-pass-in-url",
    "pg-pass-in-field",
    "wh-pass-in-url",
    "s3-secret-value",
    "s3-access-key-id",
    "http-bearer-token",
    "http-api-key-header",
    "query-api-key",
    "dsn-password",
    "reason-pass",
    "audit-pass",
]


def secret_config(hex_key: str) -> dict:
    pipeline = build_pipeline(
        {
            "name": "orders_migration",
            "source": {"url": "postgresql://etl:pg-pass-in-url@db.example.com/prod"},
            "destination": {
                "url": "postgresql://etl@warehouse/analytics",
                "password": "pg-pass-in-field",
            },
            "streams": [{"table": "orders", "cursor": ["id"]}],
        }
    )
    config = pipeline.model_dump(by_alias=True)
    assert isinstance(config["destination"]["password"], SecretStr)
    config["replica"] = {"url": "mysql://etl:wh-pass-in-url@replica/db"}
    config["checkpoints"] = {
        "store": "s3://bucket/prefix",
        "store_options": {
            "key": "s3-access-key-id",
            "secret": "s3-secret-value",
            "endpoint_url": "http://127.0.0.1:9000",
        },
        # The classic mistake: the key interpolated where its variable's name belongs.
        "encrypt": {"key_env": hex_key},
        "encrypt_ok": {"key_env": "MILEPOST_CHECKPOINT_KEY", "key_file": "/run/secrets/ck"},
    }
    config["api"] = {
        "url": "https://api.example.com/v1/items?page=1&api_key=query-api-key",
        "headers": {
            "Authorization": "Bearer http-bearer-token",
            "X-Custom-Auth": "http-api-key-header",
            "Accept": "application/json",
        },
        "dsn": "host=db user=etl password=dsn-password dbname=prod",
    }
    return config


def test_a_snapshot_stores_no_secret_in_its_bytes() -> None:
    hex_key = generate_key()
    config = secret_config(hex_key)
    cp = make_checkpoint(
        config=config, reason="before cutover, see postgresql://a:reason-pass@h/db"
    ).with_audit("restored", at=T0, detail="from postgresql://a:audit-pass@h/db")
    stored = ChainCodec(compress=False, key=None).encode(cp)
    as_json = json.dumps(cp.to_document())
    for text in (stored.decode("utf-8", "replace"), as_json):
        for secret in [*SECRETS, hex_key]:
            assert secret not in text, secret
    # ... while what is useful and harmless is still there.
    snap = cp.config
    assert snap["source"]["url"] == "postgresql://etl:***@db.example.com/prod"
    assert snap["destination"]["password"] == MASK
    assert snap["checkpoints"]["encrypt"]["key_env"] == MASK
    assert snap["checkpoints"]["encrypt_ok"] == {
        "key_env": "MILEPOST_CHECKPOINT_KEY",
        "key_file": "/run/secrets/ck",
    }
    assert snap["checkpoints"]["store_options"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert snap["api"]["headers"]["Accept"] == "application/json"
    assert snap["api"]["url"] == "https://api.example.com/v1/items?page=1&api_key=***"
    assert snap["streams"][0]["cursor"] == ["id"]
    assert snap["batch_size"] == 10000
    assert b"MILEPOST_CHECKPOINT_KEY" in stored  # the JSON really is in the stored bytes


def test_redaction_is_idempotent_and_json_safe() -> None:
    once = redact(secret_config(generate_key()) | {"path": Path("/x"), "pair": (1, 2)})
    assert redact(once) == once
    assert once["path"] == "/x" and once["pair"] == [1, 2]
    json.dumps(once)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://etl:s3cr%40t@db.example.com:5432/prod?sslmode=require",
        "mysql+pymysql://root:pw@127.0.0.1:3306/db",
    ],
)
def test_masked_urls_read_as_sqlalchemy_shows_them(url: str) -> None:
    assert mask_url(url) == make_url(url).render_as_string(hide_password=True)


@pytest.mark.parametrize(
    ("url", "leak"),
    [
        ("postgresql://etl:p@ss-tail@host/db", "ss-tail"),  # unescaped '@' in the password
        ("postgresql://etl:pa/ss-tail@host/db", "ss-tail"),
        ("https://h/x?X-Amz-Signature=sig-tail&a=1", "sig-tail"),
        ("https://h/x?access_token=tok-tail", "tok-tail"),
    ],
)
def test_no_tail_of_a_password_survives(url: str, leak: str) -> None:
    assert leak not in mask_url(url)
    assert leak not in redact_text(f"failed: {url} refused")


def test_urls_without_secrets_are_left_alone() -> None:
    for url in ("s3://bucket/prefix", "sqlite:///rel.db", "https://h/v1?page=2&sort=id"):
        assert mask_url(url) == url


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("db_pass", True),
        ("apiKey", True),
        ("aws_secret_access_key", True),
        ("access_key_id", True),
        ("clientSecret", True),
        ("refresh_token", True),
        ("key", True),
        ("key_env", False),
        ("key_file", False),
        ("password_file", False),
        ("token_url", False),
        ("primary_key", False),
        ("sort_key", False),
        ("keys", False),
        ("passthrough", False),
        ("cursor", False),
    ],
)
def test_which_names_hold_secrets(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_under_a_secret_key_every_value_is_masked_but_pointers_and_none_stay() -> None:
    out = redact({"auth": {"user": "bob", "pin": 1234, "token_env": "API_TOKEN", "otp": None}})
    assert out == {"auth": {"user": MASK, "pin": MASK, "token_env": "API_TOKEN", "otp": None}}
