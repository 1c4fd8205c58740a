"""Checkpoint bytes: JSON, then zstd (optional), then AES-256-GCM (optional), in a checked envelope.

Every document is wrapped in a small self-describing envelope, so a reader can tell a
flipped byte from a cut-short file from a wrong key from a document of another run,
and say which, before it trusts a single byte of the content:

    offset  size  field
    0       4     magic b"MPCK"
    4       8     total length of the envelope in bytes (big-endian)
    12      4     CRC-32 of bytes [4, 12): a damaged length is told from a short file
    16      32    SHA-256 of bytes [48, end)
    48      1     envelope version (1)
    49      1     flags: bit 0 zstd, bit 1 AES-256-GCM; other bits must be 0
    50      2     n, the length of the identity (big-endian)
    52      n     identity: UTF-8 JSON ["pipeline", "run id", "checkpoint id"]
    52+n    8     key id: the first 8 bytes of HMAC-SHA256(key, "milepost checkpoint
                  key id"), zeros when not encrypted
    60+n    ...   body: the JSON, compressed and/or encrypted; when encrypted, a fresh
                  random 12-byte nonce, then ciphertext and tag

The first 48 bytes keep this layout in every envelope version, so the checks run
before anything version-specific is read: a file shorter than its length is
truncated; a length failing its CRC, or a hash mismatch, is corruption; only a
document whose hash holds can claim to be from a newer milepost.

The identity is in clear so a listing can tell which run a document belongs to
without a key; it is not secret. When encrypting, bytes [48, 60+n) (version, flags,
identity, key id) are the associated data: a document copied in from another
pipeline, run or id fails authentication even if someone edits the header to match.
The SHA-256 is an integrity check, not a signature: it tells accidental damage apart
from a wrong key, and it is what guards unencrypted documents. The key id names the
key (so "wrong key" can be said plainly) without helping anyone guess it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import zstandard

from milepost.checkpoints.errors import (
    CheckpointCorrupt,
    CheckpointKeyError,
    CheckpointMismatch,
    CheckpointNotEncrypted,
    CheckpointTruncated,
    CheckpointVersionError,
    CheckpointWrongKey,
)
from milepost.checkpoints.model import Checkpoint, load_document
from milepost.checkpoints.redact import looks_like_key_material

if TYPE_CHECKING:
    from milepost.checkpoints.settings import CheckpointSettings

MAGIC = b"MPCK"
ENVELOPE_VERSION = 1
FLAG_ZSTD = 0x01
FLAG_AES = 0x02
KEY_BYTES = 32
NONCE_BYTES = 12
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_AES
_FRAME = struct.Struct(">4sQI32s")  # magic, total length, CRC-32 of the length, SHA-256
_HEAD = struct.Struct(">BBH")  # envelope version, flags, identity length
_NO_KEY_ID = bytes(8)
_ZSTD_LEVEL = 3


@dataclass(frozen=True)
class Identity:
    """Whose document it is: bound into every envelope."""

    pipeline: str
    run_id: str
    checkpoint_id: str

    def encoded(self) -> bytes:
        return json.dumps([self.pipeline, self.run_id, self.checkpoint_id]).encode()


@dataclass(frozen=True)
class Header:
    """An envelope's header, read and checked against its integrity hash."""

    identity: Identity
    compressed: bool
    encrypted: bool
    key_id: str | None
    body_offset: int
    size: int

    @property
    def aad(self) -> slice:
        """Where the associated data lies: version, flags, identity and key id."""
        return slice(_FRAME.size, self.body_offset)


class Codec(Protocol):
    """Turns a checkpoint into stored bytes and back (the seam DESIGN.md names)."""

    def encode(self, checkpoint: Checkpoint) -> bytes: ...

    def decode(
        self, data: bytes, *, pipeline: str, checkpoint_id: str, run_id: str | None = None
    ) -> Checkpoint: ...


def key_id(key: bytes) -> str:
    """A short public name of a key (16 hex digits) that does not reveal it."""
    return hmac.new(key, b"milepost checkpoint key id", hashlib.sha256).digest()[:8].hex()


@dataclass(frozen=True)
class ChainCodec:
    """JSON -> zstd (when `compress`) -> AES-256-GCM (when `key` is given) -> envelope.

    With a key, a plaintext document is refused (CheckpointNotEncrypted) unless
    `accept_plaintext`: otherwise anyone who can write to the store could plant one.
    """

    compress: bool = True
    key: bytes | None = field(default=None, repr=False)
    accept_plaintext: bool = False

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) != KEY_BYTES:
            raise CheckpointKeyError(
                f"The checkpoint encryption key has {len(self.key)} bytes; AES-256 needs 32."
            )

    # -- documents --

    def encode(self, checkpoint: Checkpoint) -> bytes:
        return self.seal(serialize(checkpoint), identity_of(checkpoint))

    def decode(
        self, data: bytes, *, pipeline: str, checkpoint_id: str, run_id: str | None = None
    ) -> Checkpoint:
        """The checkpoint in `data`, which must be `checkpoint_id` of `pipeline` (and of
        `run_id`, when given: pass None to read a document of any run of the pipeline)."""
        identity, payload = self.unseal(
            data, pipeline=pipeline, checkpoint_id=checkpoint_id, run_id=run_id
        )
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointCorrupt(
                f"Checkpoint {checkpoint_id} passed its checks but does not hold JSON.",
                hint="It was written by something other than milepost.",
            ) from None
        checkpoint = load_document(doc)
        inside = Identity(checkpoint.pipeline, checkpoint.run_id, checkpoint.id)
        if inside != identity:
            raise CheckpointMismatch(
                f"Checkpoint {checkpoint_id}: its envelope says {_describe(identity)} but the "
                f"document inside says {_describe(inside)}.",
                hint="It was edited or assembled by hand; it is not used.",
            )
        return checkpoint

    # -- bytes --

    def seal(self, payload: bytes, identity: Identity) -> bytes:
        """Wrap `payload` (compressing and encrypting as configured) for `identity`."""
        ident = identity.encoded()
        if len(ident) > 0xFFFF:
            raise ValueError("checkpoint identity too long")
        flags = (FLAG_ZSTD if self.compress else 0) | (FLAG_AES if self.key else 0)
        head = _HEAD.pack(ENVELOPE_VERSION, flags, len(ident)) + ident
        head += bytes.fromhex(key_id(self.key)) if self.key else _NO_KEY_ID
        body = payload
        if self.compress:
            body = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(body)
        if self.key:
            # cryptography loads in ~20 ms: only pipelines that encrypt pay for it
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            nonce = os.urandom(NONCE_BYTES)
            body = nonce + AESGCM(self.key).encrypt(nonce, body, head)
        rest = head + body
        total = _FRAME.size + len(rest)
        length = struct.pack(">Q", total)
        frame = _FRAME.pack(MAGIC, total, zlib.crc32(length), hashlib.sha256(rest).digest())
        return frame + rest

    def unseal(
        self, data: bytes, *, pipeline: str, checkpoint_id: str, run_id: str | None = None
    ) -> tuple[Identity, bytes]:
        """The identity and payload in `data`, after every check (see the module doc)."""
        header = read_header(data, checkpoint_id=checkpoint_id)
        ident = header.identity
        if (
            ident.pipeline != pipeline
            or ident.checkpoint_id != checkpoint_id
            or (run_id is not None and ident.run_id != run_id)
        ):
            expected = Identity(pipeline, run_id or ident.run_id, checkpoint_id)
            raise CheckpointMismatch(
                f"Checkpoint {checkpoint_id} belongs to {_describe(ident)}, not to "
                f"{_describe(expected)}.",
                hint="It was copied or renamed from elsewhere; it is not used.",
            )
        body = bytes(data[header.body_offset :])
        if header.encrypted:
            if self.key is None:
                raise CheckpointKeyError(
                    f"Checkpoint {checkpoint_id} is encrypted, and no key is configured.",
                    hint="Set checkpoints.encrypt.key_env or key_file to the key it was "
                    "written with.",
                )
            if header.key_id != key_id(self.key):
                raise CheckpointWrongKey(
                    f"Checkpoint {checkpoint_id} was encrypted with another key (key id "
                    f"{header.key_id}; the configured key's id is {key_id(self.key)}).",
                    hint="Configure the key it was written with; `milepost checkpoints "
                    "keygen` makes new keys, it cannot recover old ones.",
                )
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            try:
                body = AESGCM(self.key).decrypt(
                    body[:NONCE_BYTES], body[NONCE_BYTES:], bytes(data[header.aad])
                )
            except (InvalidTag, ValueError):
                raise CheckpointCorrupt(
                    f"Checkpoint {checkpoint_id} failed authentication although its key "
                    "matches: it was altered after writing, and its hash recomputed.",
                    hint="Treat the store as tampered with; this document is not used.",
                ) from None
        elif self.key is not None and not self.accept_plaintext:
            raise CheckpointNotEncrypted(
                f"Checkpoint {checkpoint_id} is not encrypted, but this pipeline encrypts "
                "its checkpoints; a plaintext document could have been planted.",
                hint="If it predates turning encryption on, remove it with `milepost "
                "checkpoints clear`, or turn encryption off to read it.",
            )
        if header.compressed:
            try:
                body = zstandard.ZstdDecompressor().decompress(body)
            except zstandard.ZstdError:
                raise CheckpointCorrupt(
                    f"Checkpoint {checkpoint_id} passed its checks but does not decompress.",
                    hint="It was written by something other than milepost.",
                ) from None
        return ident, body


def read_header(data: bytes, *, checkpoint_id: str = "?") -> Header:
    """Parse and check an envelope's frame and header; no key needed."""
    name = f"Checkpoint {checkpoint_id}"
    size = len(data)
    if size == 0:
        raise CheckpointTruncated(f"{name} is empty (0 bytes).", hint=_FALLBACK)
    if bytes(data[:4]) != MAGIC[: min(size, 4)]:
        raise CheckpointCorrupt(
            f"{name} is not a milepost checkpoint: it does not start with the MPCK header.",
            hint=_FALLBACK,
        )
    if size < 16:
        raise CheckpointTruncated(
            f"{name} is cut short: {size} bytes, not even its frame.", hint=_FALLBACK
        )
    if zlib.crc32(bytes(data[4:12])) != struct.unpack_from(">I", data, 12)[0]:
        raise CheckpointCorrupt(f"{name} has a damaged length in its frame.", hint=_FALLBACK)
    (total,) = struct.unpack_from(">Q", data, 4)
    if size < total:
        raise CheckpointTruncated(
            f"{name} is cut short: {size} of its {total} bytes are there.", hint=_FALLBACK
        )
    if size > total:
        raise CheckpointCorrupt(
            f"{name} has {size - total} bytes more than its frame declares.", hint=_FALLBACK
        )
    if total < _FRAME.size + _HEAD.size or not hmac.compare_digest(
        hashlib.sha256(data[_FRAME.size :]).digest(), bytes(data[16 : _FRAME.size])
    ):
        raise CheckpointCorrupt(
            f"{name} fails its integrity check: its bytes changed after it was written.",
            hint=_FALLBACK,
        )
    version, flags, n = _HEAD.unpack_from(data, _FRAME.size)
    if version != ENVELOPE_VERSION or flags & ~_KNOWN_FLAGS:
        raise CheckpointVersionError(
            f"{name} is in envelope version {version} (flags {flags:#04x}); this milepost "
            f"reads version {ENVELOPE_VERSION}.",
            hint="It was written by a newer milepost: upgrade milepost to read it.",
        )
    start = _FRAME.size + _HEAD.size
    body_offset = start + n + 8
    try:
        if body_offset > size:
            raise ValueError
        raw = json.loads(bytes(data[start : start + n]))
        if not (isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, str) for x in raw)):
            raise ValueError
    except ValueError:
        raise CheckpointCorrupt(
            f"{name} has an unreadable identity in its header.",
            hint="It was written by something other than milepost.",
        ) from None
    encrypted = bool(flags & FLAG_AES)
    return Header(
        identity=Identity(*raw),
        compressed=bool(flags & FLAG_ZSTD),
        encrypted=encrypted,
        key_id=bytes(data[start + n : body_offset]).hex() if encrypted else None,
        body_offset=body_offset,
        size=size,
    )


_FALLBACK = "It is not used; the previous good checkpoint, or the ledger, is."


def _describe(identity: Identity) -> str:
    return (
        f"pipeline '{identity.pipeline}', run {identity.run_id}, "
        f"checkpoint {identity.checkpoint_id}"
    )


# --- keys ----------------------------------------------------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def serialize(checkpoint: Checkpoint) -> bytes:
    """The canonical JSON of a checkpoint: the bytes that are sealed, and compared."""
    return json.dumps(
        checkpoint.to_document(),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


def identity_of(checkpoint: Checkpoint) -> Identity:
    return Identity(checkpoint.pipeline, checkpoint.run_id, checkpoint.id)


def generate_key() -> str:
    """A fresh key: 32 random bytes as 64 hex digits (`milepost checkpoints keygen`)."""
    return os.urandom(KEY_BYTES).hex()


def parse_key(text: str, *, source: str) -> bytes:
    """The 32 key bytes in `text` (64 hex digits, or base64 / URL-safe base64).

    `source` says where the text came from, for the error; the text is never shown.
    """
    value = text.strip()
    if not value:
        raise CheckpointKeyError(f"The checkpoint key in {source} is empty.", hint=_KEYGEN)
    if re.fullmatch(r"[0-9A-Fa-f]{64}", value):
        return bytes.fromhex(value)
    if re.fullmatch(r"[A-Za-z0-9+/_\-]+={0,2}", value):
        padded = value + "=" * (-len(value) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(padded)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == KEY_BYTES:
                return raw
    raise CheckpointKeyError(
        f"The checkpoint key in {source} is not 32 bytes written as 64 hex digits or base64 "
        f"(it has {len(value)} characters).",
        hint=_KEYGEN,
    )


_KEYGEN = "`milepost checkpoints keygen` prints a fresh key."


def load_key(
    *,
    key_env: str | None = None,
    key_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> bytes:
    """The key from an environment variable or a file; exactly one of the two."""
    if (key_env is None) == (key_file is None):
        raise CheckpointKeyError("checkpoints.encrypt needs exactly one of key_env and key_file.")
    if key_env is not None:
        if not _ENV_NAME.match(key_env) or looks_like_key_material(key_env):
            raise CheckpointKeyError(
                "checkpoints.encrypt.key_env must name an environment variable, not hold the key.",
                hint="Write key_env: MILEPOST_CHECKPOINT_KEY, not key_env: ${...}.",
            )
        env = os.environ if environ is None else environ
        if key_env not in env:
            raise CheckpointKeyError(
                f"The checkpoint key variable {key_env} is not set.",
                hint=f"Export {key_env}=<64 hex digits>; {_KEYGEN}",
            )
        return parse_key(env[key_env], source=f"the environment variable {key_env}")
    assert key_file is not None
    path = Path(key_file).expanduser()
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise CheckpointKeyError(f"The checkpoint key file {path} does not exist.") from None
    except UnicodeDecodeError:
        raise CheckpointKeyError(
            f"The checkpoint key file {path} is not text.", hint=_KEYGEN
        ) from None
    except OSError as exc:
        raise CheckpointKeyError(
            f"The checkpoint key file {path} cannot be read: {exc.strerror}."
        ) from None
    return parse_key(text, source=f"the file {path}")


def codec_for(settings: CheckpointSettings, environ: dict[str, str] | None = None) -> ChainCodec:
    """The codec a pipeline's `checkpoints:` section asks for (loads the key now)."""
    key = None
    if settings.encrypt is not None:
        key = load_key(
            key_env=settings.encrypt.key_env, key_file=settings.encrypt.key_file, environ=environ
        )
    return ChainCodec(compress=settings.compress, key=key)
