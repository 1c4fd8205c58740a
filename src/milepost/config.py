"""The pipeline: a pydantic model loaded from YAML, with ${ENV} values and errors that name the key.

Everything a run needs to know about *what* to copy lives here; nothing here touches a
server. Checks that need a server (does the table exist?) happen in the runner's
preflight, before anything is written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from milepost.checkpoints.settings import CheckpointSettings
from milepost.errors import ConfigError
from milepost.urls import DatabaseUrl, parse_database_url

# Keys from DESIGN.md that this version does not carry out yet. Naming them in the error
# is kinder than "unknown key", and refusing them is safer than ignoring them.
_NOT_YET: dict[str, str] = {}

# Values never echoed back in an error: they may be, or contain, credentials.
_SECRET_KEYS = {"password", "alert_webhook"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Endpoint(_Strict):
    """Where data comes from or goes to."""

    url: str
    password: SecretStr | None = None
    # HTTP sources: sent with every request. Values may hold tokens (`${GITHUB_TOKEN}`), so
    # they are never shown, logged or kept in a checkpoint.
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)

    def parsed(self, key: str) -> DatabaseUrl:
        secret = self.password.get_secret_value() if self.password else None
        return parse_database_url(self.url, key=f"{key}.url", password=secret)


# What a stream reads: exactly one of these keys names its source.
STREAM_KINDS = ("table", "query", "endpoint", "python")

# The column types an HTTP or Python stream may declare (`columns:`), as milepost's logical
# kinds (milepost/typemap.py).
DECLARED_TYPES = (
    "integer",
    "bigint",
    "float",
    "numeric",
    "text",
    "boolean",
    "date",
    "timestamp",
    "timestamptz",
    "json",
    "uuid",
)


class Paginate(_Strict):
    """How an HTTP resource hands out its pages (docs/sources/http.md).

    cursor: each response carries a token (`next`, a dotted path in the body) sent back as
    `param`; next_link: the next page's URL, from the `Link: <…>; rel="next"` header or a
    body path (`next`); page: page numbers from `start`, sent as `param`, with `size` per
    page as `size_param`; none: one response is the whole resource.
    """

    style: Literal["cursor", "next_link", "page", "none"] = "none"
    param: str | None = None
    next: str | None = None
    size_param: str | None = None
    size: int | None = Field(default=None, ge=1, le=100_000)
    start: int = 1


class StreamConfig(_Strict):
    """One source table, query, HTTP resource or Python generator copied into one table."""

    table: str | None = Field(default=None, min_length=1)
    query: str | None = Field(default=None, min_length=1)
    endpoint: str | None = Field(default=None, min_length=1)
    # "package.module:function" naming a generator decorated with @milepost.source, or
    # (Python API) the decorated function itself.
    python: Any = None
    schema_: str | None = Field(default=None, alias="schema")
    name: str | None = Field(default=None, min_length=1)
    cursor: list[str] | None = None
    # Columns appended to a non-unique cursor to make it unique; the primary key when omitted.
    tie_breaker: list[str] | None = None
    where: str | None = None
    # migrate: copy once; incremental: every run copies what is new since the last one.
    mode: Literal["migrate", "incremental"] = "migrate"
    # append: add to what the destination table holds (refused on a fresh run if it holds
    # rows); upsert: insert or update by `key`; replace: a fresh run backs the table up,
    # then empties it (a risky operation).
    write: Literal["append", "upsert", "replace"] = "append"
    # The columns `write: upsert` matches rows by: the primary key when omitted.
    key: list[str] | None = None
    # Incremental runs re-read this far behind the watermark, for rows that committed late:
    # a duration ("90s", "5m", "2h", "1d") for date and time cursors, a number for numeric
    # ones. Needs `write: upsert`, which turns the re-read rows into updates.
    lookback: str | int | float | None = None
    # HTTP resources (docs/sources/http.md).
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    records: str = ""
    columns: dict[str, str] | None = None
    paginate: Paginate = Paginate()
    parent: str | None = None
    since_param: str | None = None

    @field_validator("cursor", "tie_breaker", "key", mode="before")
    @classmethod
    def _one_column_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cursor", "tie_breaker", "key")
    @classmethod
    def _columns_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("names at least one column")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("names each column once")
        return value

    @field_validator("columns")
    @classmethod
    def _known_types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, kind in (value or {}).items():
            if kind not in DECLARED_TYPES:
                raise ValueError(
                    f"column '{column}' has type '{kind}'; expected one of "
                    f"{', '.join(DECLARED_TYPES)}"
                )
        return value

    @field_validator("lookback")
    @classmethod
    def _lookback_readable(cls, value: str | int | float | None) -> str | int | float | None:
        if isinstance(value, str):
            parse_duration(value)
        elif value is not None and (isinstance(value, bool) or value < 0):
            raise ValueError("expected a duration such as 5m, or a number not below 0")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> StreamConfig:
        given = [k for k in STREAM_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a stream names exactly one of table, query, endpoint or python"
                + (f" (this one names {' and '.join(given)})" if given else "")
            )
        kind = given[0]
        if kind != "table" and not self.name:
            raise ValueError(f"a stream with `{kind}:` needs a `name:` for its destination table")
        if kind != "table" and self.where:
            raise ValueError(
                "`where:` filters a table; put the condition in the query itself"
                if kind == "query"
                else "`where:` filters a table; it does not apply here"
            )
        if kind == "endpoint" and not self.columns:
            raise ValueError("an HTTP stream declares its `columns:` (name: type)")
        if kind not in ("endpoint",) and (self.parent or self.since_param or self.params):
            raise ValueError("`parent:`, `since_param:` and `params:` belong to HTTP streams")
        if self.lookback is not None and self.mode != "incremental":
            raise ValueError(
                "`lookback:` re-reads behind an incremental watermark; it needs `mode: incremental`"
            )
        if self.lookback is not None and self.write != "upsert":
            raise ValueError(
                "`lookback:` reads some rows a second time; it needs `write: upsert` so that "
                "they update the rows already copied instead of doubling them"
            )
        if self.mode == "incremental" and self.write == "replace":
            raise ValueError(
                "`write: replace` empties the table on every run, which defeats "
                "`mode: incremental`; use append or upsert"
            )
        return self

    @property
    def kind(self) -> str:
        """table, query, endpoint or python."""
        return next(k for k in STREAM_KINDS if getattr(self, k) is not None)

    @property
    def target(self) -> str:
        """The destination table's name."""
        return self.name or self.table or ""

    def source_identity(self) -> str:
        """What the stream reads, for the fingerprint: the table, the query text, the
        endpoint, or the generator's import path."""
        if self.python is not None and not isinstance(self.python, str):
            return f"{self.python.__module__}:{self.python.__qualname__}"
        return str(getattr(self, self.kind))


def _python(stream: Any) -> bool:
    value = stream.get("python") if isinstance(stream, dict) else getattr(stream, "python", None)
    return value is not None


def endpoint_fields(endpoint: str) -> list[str]:
    """The `{field}` names in an HTTP endpoint, filled from a parent stream's records."""
    return [name for _, name, _, _ in string.Formatter().parse(endpoint) if name]


def _check_page_streams(streams: list[StreamConfig], source_url: str) -> None:
    """What HTTP and Python streams ask of the source and of each other: an `endpoint:`
    needs an http(s) source, a table or query a database; a `parent:` is an HTTP stream
    declared earlier whose columns fill the child's `{field}`s."""
    url = source_url.strip().lower()
    web = url.startswith(("http://", "https://"))
    earlier: dict[str, StreamConfig] = {}
    for s in streams:
        if s.kind == "endpoint" and not web:
            raise ValueError(
                f"stream '{s.target}' reads an `endpoint:`, which needs an http:// or "
                "https:// `source.url`"
            )
        if s.kind in ("table", "query") and (web or url.startswith("python:")):
            raise ValueError(f"stream '{s.target}' reads a {s.kind}, which needs a database source")
        fields = endpoint_fields(s.endpoint) if s.endpoint else []
        parent = earlier.get(s.parent) if s.parent else None
        if s.parent and (parent is None or parent.kind != "endpoint"):
            raise ValueError(
                f"stream '{s.target}' names `parent: {s.parent}`, which must be an HTTP stream "
                "declared before it"
            )
        if parent is not None and not fields:
            raise ValueError(
                f"stream '{s.target}' has a parent, so its endpoint names the parent's fields "
                "it is filled from, e.g. /repos/{full_name}/pulls"
            )
        unknown = [f for f in fields if parent is None or f not in (parent.columns or {})]
        if unknown:
            raise ValueError(
                f"stream '{s.target}': its endpoint uses {{{unknown[0]}}}, which "
                + (
                    f"is not a column of its parent '{s.parent}'"
                    if parent is not None
                    else "only the records of a `parent:` stream can fill in"
                )
            )
        earlier[s.target] = s


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '5m', '2h', '1d' as a timedelta (a two-letter grammar, not worth a library)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration such as 30s, 5m, 2h or 1d (got {text!r})")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


class RetrySettings(_Strict):
    """Backoff for transient errors: a dropped connection, a server restart, a deadlock.

    Attempts count failures in a row without progress: a batch that commits between
    two failures starts the count again, so a long run survives many separate outages.
    """

    max_attempts: int = Field(default=8, ge=1, le=1000)
    initial_delay_s: float = Field(default=0.5, gt=0, le=3600)
    max_delay_s: float = Field(default=60.0, gt=0, le=86_400)


class VerifySettings(_Strict):
    """The verify phase between copy and finalize (docs/verify.md).

    full: every chunk of every stream; sample: a random `sample` share of each stream's
    chunks (at least one); off: none. After a resume, the streams the interrupted run
    had started are verified in full whatever the mode.
    """

    mode: Literal["full", "sample", "off"] = "full"
    sample: float = Field(default=0.1, gt=0, le=1)

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare `off` as false: `mode: off` means what it says."""
        return "off" if value is False else value


class Pipeline(_Strict):
    """A whole migration: the model behind the YAML file and the Python API."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    source: Endpoint
    destination: Endpoint
    streams: list[StreamConfig] = Field(min_length=1)
    batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # Two chunks in flight keep both servers busy across each other's batch boundaries
    # (see bench/results/copy.md); 1 halves the load on the source.
    workers: int = Field(default=2, ge=1, le=64)
    strict: bool = False
    retry: RetrySettings = RetrySettings()
    # fail: stop at the first row the destination refuses; skip: set it aside and go on.
    on_row_error: Literal["fail", "skip"] = "fail"
    # POSTed a JSON alert when a run gives up retrying; may carry a token, so never shown.
    alert_webhook: SecretStr | None = None
    checkpoints: CheckpointSettings = Field(default_factory=CheckpointSettings)
    verify: VerifySettings = VerifySettings()

    @model_validator(mode="before")
    @classmethod
    def _generators_need_no_source(cls, data: Any) -> Any:
        """A pipeline whose streams are all Python generators reads from no server: its
        `source` may be left out (it is then `python:`)."""
        if isinstance(data, dict) and "source" not in data:
            streams = data.get("streams")
            if isinstance(streams, list) and streams and all(_python(s) for s in streams):
                return {**data, "source": {"url": "python:"}}
        return data

    @model_validator(mode="after")
    def _streams_fit(self) -> Pipeline:
        _check_page_streams(self.streams, self.source.url)
        return self

    @field_validator("name")
    @classmethod
    def _not_only_dots(cls, value: str) -> str:
        if set(value) == {"."}:
            raise ValueError("a name of dots only would be a directory, not a pipeline")
        return value

    @field_validator("alert_webhook")
    @classmethod
    def _webhook_is_http(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            import httpx  # ~90 ms of imports: only for a pipeline that has a webhook

            try:
                url = httpx.URL(value.get_secret_value())
            except httpx.InvalidURL:
                url = None
            if url is None or url.scheme not in ("http", "https") or not url.host:
                raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("streams")
    @classmethod
    def _targets_unique(cls, streams: list[StreamConfig]) -> list[StreamConfig]:
        seen: set[str] = set()
        for s in streams:
            if s.target in seen:
                raise ValueError(f"two streams write into the destination table '{s.target}'")
            seen.add(s.target)
        return streams

    @property
    def incremental(self) -> bool:
        """Does a completed run have a successor (a `mode: incremental` stream)?"""
        return any(s.mode == "incremental" for s in self.streams)

    def source_url(self) -> DatabaseUrl:
        return self.source.parsed("source")

    def destination_url(self) -> DatabaseUrl:
        return self.destination.parsed("destination")

    def fingerprint(self) -> str:
        """What the run means, without tuning knobs or credentials.

        Workers and batch size may change between runs of the same migration; the
        source, destination, streams, cursors and filters may not.
        """
        doc = {
            "source": self.source_url().identity,
            "destination": self.destination_url().identity,
            "streams": [
                {
                    "table": s.table,
                    "schema": s.schema_,
                    "target": s.target,
                    "cursor": s.cursor,
                    "where": s.where,
                    # Only when not the default, so pipelines from before these keys
                    # keep their fingerprint and resume.
                    **({"write": s.write} if s.write != "append" else {}),
                    **({s.kind: s.source_identity()} if s.kind != "table" else {}),
                    **{
                        k: v
                        for k, v in (
                            ("mode", s.mode if s.mode != "migrate" else None),
                            ("key", s.key),
                            ("tie_breaker", s.tie_breaker),
                            ("records", s.records or None),
                            ("parent", s.parent),
                            ("columns", s.columns),
                            # Without secret-named ones (api_key): a rotated key is the
                            # same pipeline, as for `headers:`.
                            ("params", _public(s.params) or None),
                            ("since_param", s.since_param),
                            (
                                "paginate",
                                s.paginate.model_dump() if s.paginate != Paginate() else None,
                            ),
                        )
                        if v is not None
                    },
                }
                for s in self.streams
            ],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **changes: Any) -> Pipeline:
        """A copy with CLI overrides (workers, batch size, strict) applied and re-validated."""
        data = self.model_dump(by_alias=True)
        data.update({k: v for k, v in changes.items() if v is not None})
        if self.source.password:
            data["source"]["password"] = self.source.password.get_secret_value()
        if self.destination.password:
            data["destination"]["password"] = self.destination.password.get_secret_value()
        if self.alert_webhook:
            data["alert_webhook"] = self.alert_webhook.get_secret_value()
        for side in ("source", "destination"):
            endpoint = getattr(self, side)
            data[side]["headers"] = {k: v.get_secret_value() for k, v in endpoint.headers.items()}
        return build_pipeline(data, origin="the command line")


def load_pipeline(path: str | Path, env: dict[str, str] | None = None) -> Pipeline:
    """Read a pipeline file; every problem becomes one ConfigError naming file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Pipeline file {path} does not exist.") from None
    except OSError as exc:
        raise ConfigError(f"Pipeline file {path} cannot be read: {exc.strerror}.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{path}: {problem}{where}.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, source, destination, streams.")
    data = _interpolate(raw, env if env is not None else dict(os.environ), path)
    _store_beside_the_file(data, path)
    return build_pipeline(data, origin=str(path))


def _store_beside_the_file(data: dict[str, Any], path: Path) -> None:
    """A relative checkpoint directory is relative to the pipeline file, not to wherever
    milepost happens to be started from: the next run (from cron, from another shell)
    must find the same checkpoints."""
    section = data.get("checkpoints", {})
    if not isinstance(section, dict):
        return
    store = section.get("store", CheckpointSettings.model_fields["store"].default)
    if isinstance(store, str) and "://" not in store and not Path(store).is_absolute():
        data["checkpoints"] = {**section, "store": str(path.resolve().parent / store)}


def build_pipeline(data: dict[str, Any], *, origin: str = "pipeline") -> Pipeline:
    """Validate a plain mapping (the Python API and the YAML loader both come here)."""
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc)}") from None
    pipeline.source_url()
    pipeline.destination_url()
    return pipeline


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            if key in _NOT_YET:
                parts.append(f"'{where}': {_NOT_YET[key]} is not supported by this version")
            else:
                parts.append(f"unknown key '{where}'")
        elif err["type"] == "missing":
            parts.append(f"missing key '{where}'")
        else:
            shown = err.get("input")
            secret = any(str(part) in _SECRET_KEYS for part in err["loc"])
            got = "" if secret or isinstance(shown, dict | list) else f" (got {shown!r})"
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"'{where}': {msg}{got}")
    more = len(exc.errors()) - 5
    tail = f"; and {more} more" if more > 0 else ""
    return "; ".join(parts) + tail + "."


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _interpolate(node: Any, env: dict[str, str], path: Path, where: str = "") -> Any:
    """Replace ${VAR} in every string value, naming the key when a variable is unset."""
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, path, f"{where}.{k}" if where else str(k))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, path, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        try:
            return string.Template(node).substitute(env)
        except KeyError as exc:
            raise ConfigError(
                f"{path}: '{where}' uses the environment variable {exc.args[0]}, which is not set."
            ) from None
        except ValueError:
            raise ConfigError(
                f"{path}: '{where}' has a '$' that is not a ${{VAR}} reference; write $$ for a "
                "literal dollar sign."
            ) from None
    return node


def _public(params: dict[str, Any]) -> dict[str, Any]:
    """HTTP `params:` without the ones whose names say they hold a secret."""
    from milepost.checkpoints.redact import is_secret_name

    return {k: v for k, v in params.items() if not is_secret_name(k)}
