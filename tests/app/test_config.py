from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.core.config import Settings, SettingsError, load_settings


def test_defaults_put_database_in_data_dir(isolated_settings: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == isolated_settings.resolve()
    assert settings.database_url.get_secret_value() == f"sqlite:///{isolated_settings.resolve() / 'omniclinic.db'}"
    assert (settings.host, settings.port) == ("127.0.0.1", 7860)


def test_environment_prefix_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_PORT", "8123")
    monkeypatch.setenv("OMNICLINIC_DATABASE_URL", "postgresql+psycopg://db/omni")
    settings = load_settings()
    assert settings.port == 8123
    assert settings.database_url.get_secret_value() == "postgresql+psycopg://db/omni"


def test_the_database_url_is_a_secret_never_shown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL may hold the database password: no repr, str or log of the settings shows it."""
    monkeypatch.setenv("OMNICLINIC_DATABASE_URL", "postgresql+psycopg://audit:hunter2-pass@db/omni")
    settings = load_settings()
    import logging

    logging.getLogger("test").warning("settings: %s %r", settings, settings)
    for text in (repr(settings), str(settings), settings.model_dump_json(), caplog.text):
        assert "hunter2-pass" not in text


def test_invalid_setting_is_one_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_PORT", "seventy")
    with pytest.raises(SettingsError, match="OMNICLINIC_PORT"):
        load_settings()


def test_secret_key_generated_once_with_mode_0600(isolated_settings: Path) -> None:
    settings = load_settings()
    first = settings.resolve_secret_key().get_secret_value()
    key_file = isolated_settings / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_settings().resolve_secret_key().get_secret_value() == first


def test_two_data_dirs_get_different_keys(tmp_path: Path) -> None:
    one = Settings(data_dir=tmp_path / "a").resolve_secret_key().get_secret_value()
    two = Settings(data_dir=tmp_path / "b").resolve_secret_key().get_secret_value()
    assert one != two


def test_readable_key_file_is_refused(isolated_settings: Path) -> None:
    settings = load_settings()
    settings.resolve_secret_key()
    (isolated_settings / "secret_key").chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        load_settings().resolve_secret_key()


@pytest.mark.parametrize("weak", ["changeme", "secret", "short-but-not-a-placeholder"])
def test_weak_secret_from_environment_is_refused(monkeypatch: pytest.MonkeyPatch, weak: str) -> None:
    monkeypatch.setenv("OMNICLINIC_SECRET_KEY", weak)
    with pytest.raises(SettingsError, match="OMNICLINIC_SECRET_KEY") as caught:
        load_settings()
    assert weak not in str(caught.value)  # a secret never appears in an error message


def test_strong_secret_from_environment_is_used_and_not_written(
    monkeypatch: pytest.MonkeyPatch, isolated_settings: Path
) -> None:
    key = "k" * 40
    monkeypatch.setenv("OMNICLINIC_SECRET_KEY", key)
    assert load_settings().resolve_secret_key().get_secret_value() == key
    assert not (isolated_settings / "secret_key").exists()


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(SettingsError, match="OMNICLINIC_DATA_DIR"):
        Settings(data_dir=blocker).prepare_data_dir()
