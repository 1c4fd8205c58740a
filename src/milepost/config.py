"""The pipeline: a pydantic model loaded from YAML, with ${ENV} values and errors that name the key.

Everything a run needs to know about *what* to copy lives here; nothing here touches a
server. Checks that need a server (does the table exist?) happen in the runner's
preflight, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from milepost.checkpoints.settings import CheckpointSettings
from milepost.errors import ConfigError
from milepost.urls import DatabaseUrl, parse_database_url

# Keys from DESIGN.md that this version does not carry out yet. Naming them in the error
# is kinder than "unknown key", and refusing them is safer than ignoring them.
_NOT_YET = {
    "query": "query streams",
    "mode": "incremental mode",
}

# Values never echoed back in an error: they may be, or contain, credentials.
_SECRET_KEYS = {"password", "alert_webhook"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Endpoint(_Strict):
    """Where data comes from or goes to."""

    url: str
    password: SecretStr | None = None

    def parsed(self, key: str) -> DatabaseUrl:
        secret = self.password.get_secret_value() if self.password else None
        return parse_database_url(self.url, key=f"{key}.url", password=secret)


class StreamConfig(_Strict):
    """One source table copied into one destination table."""

    table: str = Field(min_length=1)
    schema_: str | None = Field(default=None, alias="schema")
    name: str | None = Field(default=None, min_length=1)
    cursor: list[str] | None = None
    where: str | None = None
    # append: add to what the destination table holds (refused on a fresh run if it holds
    # rows); replace: a fresh run backs the table up, then empties it (a risky operation).
    write: Literal["append", "replace"] = "append"

    @field_validator("write", mode="before")
    @classmethod
    def _upsert_not_yet(cls, value: Any) -> Any:
        if value == "upsert":
            raise ValueError("write: upsert is not supported by this version")
        return value

    @field_validator("cursor", mode="before")
    @classmethod
    def _one_column_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cursor")
    @classmethod
    def _cursor_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("a cursor names at least one column")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a cursor names each column once")
        return value

    @property
    def target(self) -> str:
        """The destination table's name."""
        return self.name or self.table


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
                    # Only when not the default, so pipelines from before write modes
                    # keep their fingerprint and resume.
                    **({"write": s.write} if s.write != "append" else {}),
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
