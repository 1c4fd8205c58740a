"""Masking secrets in the config snapshot a checkpoint carries.

A checkpoint outlives the shell that started the run: it is copied, attached to
tickets, kept in object storage. So the snapshot of the pipeline config inside it must
hold nothing that grants access. The rules, from the most to the least obvious:

- A value whose key *names a secret* is masked: the key's words (split at `_`, `-`,
  `.` and camelCase) include password, passwd, pwd, passphrase, secret, token, key,
  apikey, credential(s), creds, auth, authorization, cookie, signature, sig, private,
  or end in `pass` (`db_pass`). Under such a key every scalar below is masked too
  (`auth: {user: .., password: ..}`). Missing values (None) stay None: that a password
  is *not* set is not a secret.
- Except when the key *points to* a secret instead of holding it: its last word is env,
  file, path, var, variable, name, arn, ref, url, uri, endpoint, type, kind, method,
  scheme or provider. `key_env: MILEPOST_CHECKPOINT_KEY` names an environment variable
  and `key_file: /run/secrets/ck` a path; both are useful in a snapshot and give
  nothing away. But people write `key_env: ${MY_KEY}` meaning "the key is in MY_KEY",
  and interpolation then puts the key itself there; so a pointer whose value looks like
  key material (32+ hex digits, or base64 of 16-64 bytes mixing cases and digits) is
  masked anyway.
- "key" next to primary, foreign, sort, partition, unique, cursor, shard,
  distribution, cluster, join or natural names a column, not a credential.
- Every value under a `headers` mapping is masked except a few that never carry
  credentials (Accept, Content-Type, User-Agent, ...): custom auth headers have no
  fixed names.
- Every string, under any key, has the password of a URL masked
  (`postgresql://etl:***@db/prod`), secret-named query parameters masked
  (`?api_key=***`, `&X-Amz-Signature=***`), and `password=...` in a libpq keyword DSN
  masked.

Over-masking loses a little detail in a snapshot; under-masking leaks a credential
into every copy of every checkpoint, so the rules lean towards masking.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr
from sqlalchemy.engine import make_url

MASK = "***"

_SECRET_WORDS = {
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "tokens",
    "key",
    "apikey",
    "credential",
    "credentials",
    "creds",
    "auth",
    "authorization",
    "cookie",
    "cookies",
    "signature",
    "sig",
    "private",
}
# Glued forms such as "accesstoken", "clientsecret", "dbpassword".
_SECRET_PARTS = ("password", "passwd", "secret", "token", "credential", "apikey", "privatekey")
_POINTER_WORDS = {
    "env",
    "file",
    "path",
    "var",
    "variable",
    "name",
    "arn",
    "ref",
    "url",
    "uri",
    "endpoint",
    "type",
    "kind",
    "method",
    "scheme",
    "provider",
}
_COLUMN_KEY_WORDS = {
    "primary",
    "foreign",
    "sort",
    "partition",
    "unique",
    "cursor",
    "shard",
    "distribution",
    "cluster",
    "join",
    "natural",
}
_HARMLESS_HEADERS = {
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-type",
    "user-agent",
}

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]+")
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;?]+)=([^&#;]*)")
_DSN_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s]+)")
_HEX_KEY = re.compile(r"^[0-9A-Fa-f]{32,128}$")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


@functools.lru_cache(maxsize=4096)
def is_pointer_name(name: str) -> bool:
    """The key names where a secret lives (an env var, a file, ...), not the secret."""
    words = _words(name)
    return bool(words) and words[-1] in _POINTER_WORDS


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """The key's value is a secret (and it is not merely a pointer to one)."""
    words = _words(name)
    if not words or is_pointer_name(name):
        return False
    for i, word in enumerate(words):
        if word == "key":
            if i > 0 and words[i - 1] in _COLUMN_KEY_WORDS:
                continue
            return True
        if word in _SECRET_WORDS or any(part in word for part in _SECRET_PARTS):
            return True
    return words[-1] == "pass" or words[-1].endswith("pass")


def looks_like_key_material(value: str) -> bool:
    """64 hex digits, or base64 of 16 to 64 bytes: something that should never be shown."""
    text = value.strip()
    if _HEX_KEY.match(text):
        return True
    if len(text) < 22 or len(text) > 90 or not re.fullmatch(r"[A-Za-z0-9+/_\-]+=*", text):
        return False
    # Names such as MILEPOST_CHECKPOINT_KEY use the base64 alphabet too; random key
    # material mixes lower case, upper case and digits.
    if not (re.search("[a-z]", text) and re.search("[A-Z]", text) and re.search("[0-9]", text)):
        return False
    padded = text + "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded)
        except (binascii.Error, ValueError):
            continue
        if 16 <= len(raw) <= 64:
            return True
    return False


def mask_url(url: str) -> str:
    """A URL with its password and secret query parameters masked; other URLs unchanged.

    SQLAlchemy's rendering is used first, so a database URL reads exactly as
    `milepost.urls.DatabaseUrl.masked` shows it. Its parser ends a password at the first
    '@', so for an unescaped '@' inside a password a second pass masks everything up to
    the last '@' of the authority, so no tail of the password is left behind.
    """
    out = url
    try:
        parsed = make_url(url)
    except Exception:  # not SQLAlchemy's form: the passes below still apply
        parsed = None
    if parsed is not None and parsed.password is not None:
        out = parsed.render_as_string(hide_password=True)
    out = _mask_userinfo(out)
    return _QUERY_PARAM.sub(_mask_param, out)


def _mask_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    before_query = rest.split("?", 1)[0].split("#", 1)[0]
    at = before_query.rfind("@")
    if at < 0:
        return url
    userinfo = before_query[:at]
    colon = userinfo.find(":")
    if colon < 0:
        return url
    if userinfo[colon + 1 :] == MASK:
        return url
    return f"{scheme}://{userinfo[:colon]}:{MASK}{rest[at:]}"


def _mask_param(match: re.Match[str]) -> str:
    lead, name, value = match.groups()
    if value and value != MASK and (is_secret_name(name) or _words(name)[-1:] == ["sig"]):
        return f"{lead}{name}={MASK}"
    return match.group(0)


def redact_text(text: str) -> str:
    """Free text (a reason, an error message) with every URL's password masked."""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return _DSN_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy of `config` with every secret masked (see the module's rules).

    Tuples become lists, pydantic secrets become the mask, and anything else that JSON
    cannot hold becomes its `str()`. Redacting twice changes nothing.
    """
    return {str(k): _value(str(k), v, inherited=False) for k, v in config.items()}


def _value(key: str, value: Any, *, inherited: bool) -> Any:
    secret = inherited or is_secret_name(key)
    if isinstance(value, Mapping):
        if _words(key)[-1:] == ["headers"]:
            return {
                str(k): (
                    _value(str(k), v, inherited=secret)
                    if str(k).lower() in _HARMLESS_HEADERS
                    else _masked(v)
                )
                for k, v in value.items()
            }
        return {str(k): _value(str(k), v, inherited=secret) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_value(key, v, inherited=secret) for v in items]
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if value is None:
        return None
    if secret and not is_pointer_name(key):
        return MASK
    if isinstance(value, bool | int | float):
        return value
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if is_pointer_name(key) and looks_like_key_material(text):
        return MASK
    return redact_text(text)


def _masked(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return None if value is None else MASK
