"""The `checkpoints:` section of a pipeline file.

Defaults follow DESIGN.md: a checkpoint every 15 minutes, at phase boundaries and
before risky operations, in `.milepost/checkpoints`, compressed, not encrypted, the
last five kept for a week. `store_options` is passed to the store as it is (for an
fsspec URL: storage options such as `endpoint_url`, `key`, `secret`; write secrets as
`${VAR}`, and they are masked in every checkpoint's config snapshot).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from milepost.checkpoints.redact import looks_like_key_material
from milepost.checkpoints.retention import RetentionPolicy

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EncryptSettings(BaseModel):
    """Where the AES-256 key lives: an environment variable or a file, exactly one."""

    # The checks run on the whole mapping, and inputs are hidden from pydantic's own
    # rendering, so that a key pasted where its variable name belongs is never echoed.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    key_env: str | None = None
    key_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_pointer(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        env, file = data.get("key_env"), data.get("key_file")
        if (env is None) == (file is None):
            raise ValueError("give exactly one of key_env and key_file")
        if env is not None and (
            not isinstance(env, str) or not _ENV_NAME.match(env) or looks_like_key_material(env)
        ):
            raise ValueError(
                "key_env names the environment variable that holds the key (e.g. "
                "MILEPOST_CHECKPOINT_KEY); it must not hold the key itself"
            )
        if file is not None and (not isinstance(file, str) or not file.strip()):
            raise ValueError("key_file must be the path of the file that holds the key")
        if file is not None and looks_like_key_material(file):
            raise ValueError("key_file is the path of the key file, not the key itself")
        return data


class CheckpointSettings(BaseModel):
    """When checkpoints are made, where they are kept, how they are encoded and kept."""

    # Pydantic renders the input of a failed check using the outermost model's setting,
    # and an input here may be a key pasted in the wrong place (or store credentials).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    every_records: int | None = Field(default=None, ge=1)
    every_seconds: float | None = Field(default=900, gt=0)
    phase_boundaries: bool = True
    before_risky: bool = True
    store: str = Field(default=".milepost/checkpoints", min_length=1)
    store_options: dict[str, Any] = Field(default_factory=dict)
    compress: bool = True
    encrypt: EncryptSettings | None = None
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    keep_after_success: bool = False
