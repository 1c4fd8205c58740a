"""The `checkpoints:` section: its defaults, its limits, and a key in the wrong place."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from milepost.checkpoints import CheckpointSettings, EncryptSettings, RetentionPolicy, generate_key


def test_defaults_follow_the_design() -> None:
    s = CheckpointSettings()
    assert s.every_records is None and s.every_seconds == 900
    assert s.phase_boundaries and s.before_risky
    assert s.store == ".milepost/checkpoints" and s.store_options == {}
    assert s.compress and s.encrypt is None
    assert s.retention == RetentionPolicy(
        keep_last=5, keep_phase_boundaries=True, max_age_hours=168
    )
    assert s.keep_after_success is False


def test_the_design_example_validates() -> None:
    s = CheckpointSettings.model_validate(
        {
            "every_records": 100000,
            "every_seconds": 900,
            "phase_boundaries": True,
            "before_risky": True,
            "store": "s3://bucket/prefix",
            "store_options": {"endpoint_url": "http://127.0.0.1:9000"},
            "compress": True,
            "encrypt": {"key_env": "MILEPOST_CHECKPOINT_KEY"},
            "retention": {"keep_last": 5, "keep_phase_boundaries": True, "max_age_hours": 168},
            "keep_after_success": False,
        }
    )
    assert s.encrypt == EncryptSettings(key_env="MILEPOST_CHECKPOINT_KEY")
    assert CheckpointSettings.model_validate({"every_seconds": None}).every_seconds is None


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"every_record": 5}, "every_record"),
        ({"every_records": 0}, "every_records"),
        ({"every_seconds": 0}, "every_seconds"),
        ({"retention": {"keep_last": 0}}, "keep_last"),
        ({"retention": {"keep_forever": True}}, "keep_forever"),
        ({"encrypt": {}}, "encrypt"),
        ({"encrypt": {"key_env": "A", "key_file": "/k"}}, "encrypt"),
        ({"encrypt": {"key_env": "not a name"}}, "encrypt"),
        ({"encrypt": {"key_file": " "}}, "encrypt"),
        ({"store": ""}, "store"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(data: dict, where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CheckpointSettings.model_validate(data)
    assert where in ".".join(str(p) for p in caught.value.errors()[0]["loc"])


@pytest.mark.parametrize("field", ["key_env", "key_file"])
def test_a_key_pasted_where_its_name_belongs_is_refused_and_never_echoed(field: str) -> None:
    key = generate_key()
    with pytest.raises(ValidationError) as caught:
        CheckpointSettings.model_validate({"encrypt": {field: key}})
    shown = str(caught.value) + repr(caught.value.errors(include_input=False))
    assert "not hold the key" in shown or "not the key itself" in shown
    for i in range(0, len(key) - 8):
        assert key[i : i + 8] not in shown
    assert not any(isinstance(e.get("input"), str) for e in caught.value.errors())


def test_key_pointers_are_accepted() -> None:
    assert EncryptSettings(key_file="~/.config/milepost/ck.key").key_file
    assert EncryptSettings(key_env="lower_case_ok").key_env == "lower_case_ok"
