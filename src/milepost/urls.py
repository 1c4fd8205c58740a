"""Database URLs: parsed once by SQLAlchemy, shown to people only with the password masked."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from milepost.errors import ConfigError

_FAMILIES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed connection URL that knows its engine family and never prints its password."""

    url: URL
    family: str
    # An HTTP API's base URL as written (http and https: SQLAlchemy's form does not fit it).
    web: str | None = None

    @property
    def masked(self) -> str:
        if self.web is not None:
            from milepost.checkpoints.redact import mask_url

            return mask_url(self.web)
        if self.family == "python":
            return "python:"
        return self.url.render_as_string(hide_password=True)

    @property
    def identity(self) -> str:
        """What the data is, without credentials: part of the pipeline's fingerprint."""
        u = self.url
        if self.family == "http":
            # Scheme, host, port and path: user info and query parameters may hold tokens.
            return f"{u.drivername}://{u.host or ''}:{u.port or ''}{u.database or ''}"
        if self.family == "python":
            return "python:"
        if self.family == "sqlite":
            return f"sqlite:///{u.database or ''}"
        return f"{self.family}://{u.host or ''}:{u.port or ''}/{u.database or ''}"

    def __str__(self) -> str:
        return self.masked

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.masked!r})"


def parse_database_url(raw: str, *, key: str, password: str | None = None) -> DatabaseUrl:
    """Parse `raw` for the pipeline key `key`; `password` overrides one given in the URL.

    A source may also be an HTTP API (`http://`, `https://`) or, for a pipeline whose
    streams are all Python generators, `python:` (docs/sources/)."""
    if key.startswith("source") and raw.strip().lower().startswith(("http://", "https://")):
        return _web_url(raw.strip(), key)
    if key.startswith("source") and raw.strip().lower() in ("python:", "python://"):
        return DatabaseUrl(url=URL.create("python"), family="python")
    try:
        url = make_url(raw)
    except ArgumentError:
        shown = raw.split("@")[-1] if "@" in raw else raw
        raise ConfigError(
            f"{key}: '…{shown}' is not a database URL.",
            hint="Write it as postgresql://user@host:5432/db, mysql://user@host:3306/db "
            "or sqlite:///path/to.db.",
        ) from None
    family = _FAMILIES.get(url.get_backend_name())
    if family is None:
        raise ConfigError(
            f"{key}: the scheme '{url.drivername}' of {url.render_as_string(hide_password=True)} "
            "is not supported.",
            hint="milepost reads and writes postgresql://, mysql:// (MariaDB too) and sqlite:///.",
        )
    if password is not None:
        url = url.set(password=password)
    if family != "sqlite" and not url.database:
        raise ConfigError(
            f"{key}: {url.render_as_string(hide_password=True)} names no database.",
            hint="Add the database after the host, e.g. postgresql://user@host:5432/mydb.",
        )
    if family == "sqlite" and not url.database:
        raise ConfigError(
            f"{key}: {raw} names no file; an in-memory SQLite database cannot be resumed.",
            hint="Use sqlite:///relative/path.db or sqlite:////absolute/path.db.",
        )
    return DatabaseUrl(url=url, family=family)


def _web_url(raw: str, key: str) -> DatabaseUrl:
    """An HTTP API's base URL: parsed with the standard library (no database fields)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname:
        from milepost.checkpoints.redact import mask_url

        raise ConfigError(
            f"{key}: '{mask_url(raw)}' is not an HTTP URL.",
            hint="Write it as https://api.example.com/v1 (endpoints are relative to it).",
        )
    url = URL.create(parts.scheme.lower(), host=parts.hostname, port=port, database=parts.path)
    return DatabaseUrl(url=url, family="http", web=raw)
