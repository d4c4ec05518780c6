"""Server settings: flags over SEQCAST_* environment over a TOML file over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from seqcast.server.settings import ServerSettings


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "seqcast.toml"
    config.write_text(f'model_dir = "{tmp_path}"\nport = 7000\nmax_input_chars = 500\nintra_op_threads = 2\n')
    monkeypatch.setenv("SEQCAST_PORT", "7001")
    monkeypatch.setenv("SEQCAST_MAX_INPUT_CHARS", "600")
    settings = ServerSettings(config=config, port=7002)
    assert settings.port == 7002  # flag
    assert settings.max_input_chars == 600  # environment
    assert settings.intra_op_threads == 2  # file
    assert settings.host == "127.0.0.1"  # default


def test_the_config_file_can_come_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "seqcast.toml"
    config.write_text(f'model_dir = "{tmp_path}"\ndefault_model = "en-de"\n')
    monkeypatch.setenv("SEQCAST_CONFIG", str(config))
    assert ServerSettings().default_model == "en-de"


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(model_dir="/no/such/dir"), "is not a directory"),
        (dict(port=70000), "less than or equal to 65535"),
        (dict(device="tpu"), "'auto', 'cpu' or 'cuda'"),
        (dict(unknown_field=1), "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(tmp_path: Path, fields: dict, message: str) -> None:
    fields.setdefault("model_dir", tmp_path)
    with pytest.raises(ValidationError, match=message):
        ServerSettings(**fields)


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = ServerSettings(model_dir=tmp_path)
    with pytest.raises(ValidationError):
        settings.port = 1
