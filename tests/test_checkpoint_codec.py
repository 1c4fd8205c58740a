"""The codec: round trips, and one distinct, clear error for each way a document goes bad.

Corruption is exhaustive where it is cheap: every single byte of an envelope is flipped
and every shorter prefix is tried, in all four compress/encrypt combinations. Forged
envelopes (an attacker editing the clear header and recomputing its hash) are built
from the layout the codec documents, which also checks that the documentation is right.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from pathlib import Path

import pytest

from milepost.checkpoints import (
    ChainCodec,
    Checkpoint,
    CheckpointCorrupt,
    CheckpointKeyError,
    CheckpointMismatch,
    CheckpointNotEncrypted,
    CheckpointSettings,
    CheckpointTruncated,
    CheckpointVersionError,
    CheckpointWrongKey,
    codec_for,
    generate_key,
    key_id,
    load_key,
    parse_key,
    read_header,
)
from test_checkpoint_model import make_checkpoint

KEY = bytes.fromhex("8f" * 32)
OTHER_KEY = bytes.fromhex("17" * 32)
COMBOS = [
    pytest.param(False, None, id="plain"),
    pytest.param(True, None, id="zstd"),
    pytest.param(False, KEY, id="aes"),
    pytest.param(True, KEY, id="zstd+aes"),
]


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return make_checkpoint(reason="distinctive-reason-text")


def decode(codec: ChainCodec, data: bytes, cp: Checkpoint, **kw: object) -> Checkpoint:
    args = {"pipeline": cp.pipeline, "checkpoint_id": cp.id, "run_id": cp.run_id} | kw
    return codec.decode(data, **args)  # type: ignore[arg-type]


def reframe(rest: bytes) -> bytes:
    """An envelope around `rest` (bytes 48.. of the documented layout), hash recomputed."""
    total = 48 + len(rest)
    length = struct.pack(">Q", total)
    return (
        b"MPCK"
        + length
        + struct.pack(">I", zlib.crc32(length))
        + hashlib.sha256(rest).digest()
        + rest
    )


def identity_bytes(pipeline: str, run_id: str, checkpoint_id: str) -> bytes:
    return json.dumps([pipeline, run_id, checkpoint_id]).encode()


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(("compress", "key"), COMBOS)
def test_round_trip(compress: bool, key: bytes | None, checkpoint: Checkpoint) -> None:
    codec = ChainCodec(compress=compress, key=key)
    data = codec.encode(checkpoint)
    assert decode(codec, data, checkpoint) == checkpoint
    assert decode(codec, data, checkpoint, run_id=None) == checkpoint  # any run of the pipeline
    header = read_header(data)
    assert (header.compressed, header.encrypted) == (compress, key is not None)
    assert header.identity.checkpoint_id == checkpoint.id
    assert header.key_id == (key_id(key) if key else None)


def test_encoding_is_canonical_json_when_plain(checkpoint: Checkpoint) -> None:
    data = ChainCodec(compress=False).encode(checkpoint)
    body = data[read_header(data).body_offset :]
    assert (
        body
        == json.dumps(
            checkpoint.to_document(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


def test_compression_makes_a_real_document_smaller() -> None:
    big = make_checkpoint(config={"streams": [{"table": f"table_{i}"} for i in range(300)]})
    assert (
        len(ChainCodec(compress=True).encode(big)) < len(ChainCodec(compress=False).encode(big)) / 3
    )


def test_each_encryption_uses_a_fresh_nonce(checkpoint: Checkpoint) -> None:
    codec = ChainCodec(compress=False, key=KEY)
    a, b = codec.encode(checkpoint), codec.encode(checkpoint)
    start = read_header(a).body_offset
    assert a[start : start + 12] != b[start : start + 12]
    assert a[start:] != b[start:]


@pytest.mark.parametrize("compress", [False, True])
def test_the_ciphertext_does_not_contain_the_plaintext(
    compress: bool, checkpoint: Checkpoint
) -> None:
    plain = ChainCodec(compress=compress).encode(checkpoint)
    sealed = ChainCodec(compress=compress, key=KEY).encode(checkpoint)
    body = plain[read_header(plain).body_offset :]
    sealed_body = sealed[read_header(sealed).body_offset :]
    # The header names pipeline, run and id in clear (by design); nothing else is readable.
    for text in (b"distinctive-reason-text", b"0f3c5a9e7d1b2c44", b"rows_done", b"in_progress"):
        assert text in ChainCodec(compress=False).encode(checkpoint)
        assert text not in sealed
    assert checkpoint.stream("orders").name.encode() not in sealed_body
    # Nor does any 16-byte run of the unencrypted body appear in it.
    assert not any(body[i : i + 16] in sealed_body for i in range(0, len(body) - 16, 4))


def test_the_codec_never_shows_its_key() -> None:
    codec = ChainCodec(key=KEY)
    assert KEY.hex() not in repr(codec) and "8f8f" not in repr(codec)


# --- damage ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("compress", "key"), COMBOS)
def test_every_flipped_byte_is_reported_as_corruption(
    compress: bool, key: bytes | None, checkpoint: Checkpoint
) -> None:
    codec = ChainCodec(compress=compress, key=key)
    data = codec.encode(checkpoint)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01 if i % 2 else 0x80
        with pytest.raises(CheckpointCorrupt) as caught:
            decode(codec, bytes(bad), checkpoint)
        assert type(caught.value) is CheckpointCorrupt, i
        assert checkpoint.id in str(caught.value)


@pytest.mark.parametrize(("compress", "key"), COMBOS)
def test_every_truncation_is_reported_as_truncated(
    compress: bool, key: bytes | None, checkpoint: Checkpoint
) -> None:
    codec = ChainCodec(compress=compress, key=key)
    data = codec.encode(checkpoint)
    for n in range(len(data)):
        with pytest.raises(CheckpointTruncated) as caught:
            decode(codec, data[:n], checkpoint)
        assert checkpoint.id in str(caught.value)
    with pytest.raises(CheckpointTruncated, match=f"{len(data) - 1} of its {len(data)} bytes"):
        decode(codec, data[:-1], checkpoint)


def test_extra_bytes_and_foreign_files_are_corrupt(checkpoint: Checkpoint) -> None:
    codec = ChainCodec()
    data = codec.encode(checkpoint)
    with pytest.raises(CheckpointCorrupt, match="1 bytes more"):
        decode(codec, data + b"\0", checkpoint)
    for foreign in (b'{"format_version": 2}', b"PK\x03\x04zipfile", b"X"):
        with pytest.raises(CheckpointCorrupt, match="not a milepost checkpoint"):
            decode(codec, foreign, checkpoint)


def test_a_damaged_length_is_corruption_not_truncation(checkpoint: Checkpoint) -> None:
    data = bytearray(ChainCodec().encode(checkpoint))
    data[11] ^= 0x40  # the length now claims more bytes than there are
    with pytest.raises(CheckpointCorrupt, match="damaged length"):
        decode(ChainCodec(), bytes(data), checkpoint)


def test_a_sound_envelope_of_a_newer_version_asks_for_an_upgrade(checkpoint: Checkpoint) -> None:
    rest = bytearray(ChainCodec().encode(checkpoint)[48:])
    rest[0] = 2  # envelope version
    with pytest.raises(CheckpointVersionError, match="upgrade milepost"):
        decode(ChainCodec(), reframe(bytes(rest)), checkpoint)
    rest[0], rest[1] = 1, 0x80  # a flag this version does not know
    with pytest.raises(CheckpointVersionError):
        decode(ChainCodec(), reframe(bytes(rest)), checkpoint)


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_a_wrong_key_is_named_as_such_without_showing_either_key(
    compress: bool, checkpoint: Checkpoint
) -> None:
    data = ChainCodec(compress=compress, key=KEY).encode(checkpoint)
    with pytest.raises(CheckpointWrongKey) as caught:
        decode(ChainCodec(compress=compress, key=OTHER_KEY), data, checkpoint)
    message = str(caught.value)
    assert checkpoint.id in message and key_id(KEY) in message
    assert KEY.hex() not in message and OTHER_KEY.hex() not in message


def test_an_encrypted_document_without_a_key_is_a_key_error(checkpoint: Checkpoint) -> None:
    data = ChainCodec(key=KEY).encode(checkpoint)
    with pytest.raises(CheckpointKeyError, match="no key is configured"):
        decode(ChainCodec(), data, checkpoint)


def test_a_plaintext_document_is_refused_when_encryption_is_on(checkpoint: Checkpoint) -> None:
    data = ChainCodec().encode(checkpoint)
    with pytest.raises(CheckpointNotEncrypted, match="could have been planted"):
        decode(ChainCodec(key=KEY), data, checkpoint)
    assert decode(ChainCodec(key=KEY, accept_plaintext=True), data, checkpoint) == checkpoint


# --- documents from elsewhere ---------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "aes"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pipeline", "other_pipeline"),
        ("run_id", "run-2"),
        ("checkpoint_id", "20261123T000000.000Z-aaaaaa"),
    ],
)
def test_a_document_from_another_pipeline_run_or_id_is_rejected(
    key: bytes | None, field: str, value: str, checkpoint: Checkpoint
) -> None:
    codec = ChainCodec(key=key)
    data = codec.encode(checkpoint)
    with pytest.raises(CheckpointMismatch) as caught:
        decode(codec, data, checkpoint, **{field: value})
    assert value in str(caught.value)


def test_an_encrypted_document_with_a_forged_identity_fails_authentication(
    checkpoint: Checkpoint,
) -> None:
    """Someone copies run-1's document into run-2's place and edits the clear header."""
    data = ChainCodec(key=KEY).encode(checkpoint)
    old = identity_bytes(checkpoint.pipeline, checkpoint.run_id, checkpoint.id)
    new = identity_bytes(checkpoint.pipeline, "run-2", checkpoint.id)
    assert len(old) == len(new) and old in data
    forged = reframe(data[48:].replace(old, new))
    assert read_header(forged).identity.run_id == "run-2"  # the frame checks pass
    with pytest.raises(CheckpointCorrupt, match="failed authentication"):
        decode(ChainCodec(key=KEY), forged, checkpoint, run_id="run-2")


def test_a_plain_document_whose_header_was_edited_is_caught_by_its_content() -> None:
    theirs = make_checkpoint(run_id="run-1")
    data = ChainCodec().encode(theirs)
    forged = data[48:].replace(
        identity_bytes(theirs.pipeline, "run-1", theirs.id),
        identity_bytes(theirs.pipeline, "run-2", theirs.id),
    )
    with pytest.raises(CheckpointMismatch, match="document inside says"):
        decode(ChainCodec(), reframe(forged), theirs, run_id="run-2")


# --- key text --------------------------------------------------------------------------------


def test_generated_keys_are_64_hex_digits_and_differ() -> None:
    a, b = generate_key(), generate_key()
    assert len(a) == 64 and int(a, 16) >= 0 and a != b
    assert parse_key(a, source="test") == bytes.fromhex(a)


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper() + "\n",
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode().rstrip("="),
    ],
)
def test_keys_are_read_as_hex_or_base64(text: str) -> None:
    assert len(parse_key(text, source="test")) == 32


@pytest.mark.parametrize(
    "text",
    ["", "   ", "ab" * 31, "ab" * 33, base64.b64encode(b"k" * 31).decode(), "not a key at all!"],
)
def test_malformed_keys_are_refused_without_being_shown(text: str) -> None:
    with pytest.raises(CheckpointKeyError) as caught:
        parse_key(text, source="the environment variable CK")
    assert "CK" in str(caught.value)
    if text.strip():
        assert text.strip() not in str(caught.value)


def test_a_key_of_the_wrong_size_is_refused_by_the_codec() -> None:
    with pytest.raises(CheckpointKeyError, match="31 bytes"):
        ChainCodec(key=b"k" * 31)


def test_keys_load_from_the_environment(tmp_path: Path) -> None:
    key = generate_key()
    assert load_key(key_env="CK", environ={"CK": key}) == bytes.fromhex(key)
    with pytest.raises(CheckpointKeyError, match="CK is not set"):
        load_key(key_env="CK", environ={})
    with pytest.raises(CheckpointKeyError) as caught:
        load_key(key_env=key, environ={})
    assert "not hold the key" in str(caught.value) and key not in str(caught.value)


def test_keys_load_from_a_file(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "ck.key"
    path.write_text(key + "\n")
    assert load_key(key_file=str(path)) == bytes.fromhex(key)
    with pytest.raises(CheckpointKeyError, match="does not exist"):
        load_key(key_file=str(tmp_path / "missing.key"))
    path.write_bytes(b"\xff\xfe binary")
    with pytest.raises(CheckpointKeyError, match="not text"):
        load_key(key_file=str(path))
    with pytest.raises(CheckpointKeyError, match="exactly one"):
        load_key(key_env="CK", key_file=str(path))
    with pytest.raises(CheckpointKeyError, match="exactly one"):
        load_key()


def test_key_ids_name_keys_without_revealing_them() -> None:
    assert key_id(KEY) == key_id(bytes(KEY)) and key_id(KEY) != key_id(OTHER_KEY)
    assert len(key_id(KEY)) == 16 and key_id(KEY) not in KEY.hex()


def test_codec_for_settings(checkpoint: Checkpoint) -> None:
    key = generate_key()
    settings = CheckpointSettings.model_validate({"encrypt": {"key_env": "CK"}, "compress": False})
    codec = codec_for(settings, environ={"CK": key})
    assert codec.key == bytes.fromhex(key) and not codec.compress
    assert codec_for(CheckpointSettings()) == ChainCodec(compress=True, key=None)
    data = codec.encode(checkpoint)
    assert read_header(data).encrypted and not read_header(data).compressed
