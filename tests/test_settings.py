"""Settings: every RAIOX_* variable is parsed by its field's type, lands in its area's part,
and is the one README documents."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from appliance.settings import ImageLimits, Settings, SettingsError, SpacesSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def _variables(part: object) -> set[str]:
    names = set()
    for f in fields(part):  # type: ignore[arg-type]
        value = getattr(part, f.name)
        names |= _variables(value) if is_dataclass(value) else {f.metadata["env"]}
    return names


def test_every_variable_is_documented_in_readme_and_back() -> None:
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| (.+?) \|", table, flags=re.M):
        # `RAIOX_SPACES_ENDPOINT`, `_REGION`, `_ACCESS_KEY`: the first short name replaces as
        # many trailing words of the full one as it has; the others share that prefix.
        names = re.findall(r"`(RAIOX_[A-Z_]+|_[A-Z_]+)`", row)
        full = [name for name in names if name.startswith("RAIOX_")]
        short = [name for name in names if name.startswith("_")]
        prefix = full[0].rsplit("_", short[0].count("_"))[0] if short else ""
        documented |= set(full) | {prefix + name for name in short}
    assert _variables(Settings()) == documented


def test_values_are_parsed_by_type_into_their_part() -> None:
    settings = Settings.from_env(
        {
            "RAIOX_DATA_DIR": "/srv/raiox",
            "RAIOX_ALLOW_UNTRAINED_MODEL": "yes",
            "RAIOX_MAX_UPLOAD_BYTES": "1000",
            "RAIOX_BATCH_MAX_WAIT_MS": "3.5",
            "RAIOX_LOCAL_RETENTION_DAYS": "7",
            "RAIOX_JOTFORM_UPLOAD_ORIGINS": "https://a.example/, https://b.example",
            "RAIOX_JOTFORM_FIELD_MAP": "q1=nome, q2=file",
            "RAIOX_PORT": "9000",
            "RAIOX_SPACES_PRESIGN_SECONDS": " ",
        },
        env_file=Path("/nonexistent"),
    )
    assert settings.data_dir == Path("/srv/raiox") and settings.allow_untrained_model is True
    assert settings.limits == ImageLimits(max_bytes=1000)
    assert settings.encoder.batch_max_wait_ms == 3.5
    assert settings.sync.local_retention_days == 7
    assert settings.jotform.upload_origins == ("https://a.example", "https://b.example")
    assert settings.jotform.field_map == (("q1", "nome"), ("q2", "file"))
    assert settings.server.port == 9000
    assert settings.spaces == SpacesSettings()  # blank means unset: the default


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RAIOX_PORT", "eighty"),
        ("RAIOX_ALLOW_UNTRAINED_MODEL", "maybe"),
        ("RAIOX_MAX_IMAGE_SIDE", "0"),
        ("RAIOX_SYNC_LEASE_SECONDS", "-1"),
        ("RAIOX_JOTFORM_FIELD_MAP", "q1"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value}, env_file=Path("/nonexistent"))


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env(
        {"RAIOX_WEBHOOK_TOKEN": "tok-123", "RAIOX_JOTFORM_API_KEY": "key-456"},
        env_file=Path("/nonexistent"),
    )
    assert "tok-123" not in repr(settings) and "key-456" not in repr(settings)
