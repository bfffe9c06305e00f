from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import __version__
from app.cli import cli

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"omniclinic {__version__}"


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).with_name("omniclinic")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_doctor_passes_on_the_default_path(isolated_settings: Path) -> None:
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "the default path can run" in result.stdout
    assert str(isolated_settings.resolve()) in result.stdout
    assert "torch" in result.stdout and "pydicom" in result.stdout


def test_doctor_json_lists_every_check() -> None:
    result = runner.invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    names = {check["name"] for check in report["checks"]}
    assert {"python", "torch", "data folder", "secret key", "database", "espeak-ng"} <= names
    for check in report["checks"]:
        if check["status"] != "ok":
            assert check["fix"], f"{check['name']} is not ok and gives no fix"


def test_doctor_fails_with_fix_when_data_dir_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OMNICLINIC_DATA_DIR", str(blocker))
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "MISS data folder" in result.stdout
    assert "fix: set OMNICLINIC_DATA_DIR" in result.stdout
    assert "required item(s) missing" in result.stdout


def test_doctor_fails_when_database_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_DATABASE_URL", f"sqlite:///{tmp_path}/no/such/folder/x.db")
    result = runner.invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 1
    database = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "database")
    assert database["status"] == "missing" and database["blocking"]


def test_bad_setting_is_usage_error_without_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_PORT", "not-a-port")
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 2
    assert "OMNICLINIC_PORT" in result.stderr
    assert "Traceback" not in result.output


def test_serve_refuses_a_busy_port() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(cli, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert "already in use" in result.stderr


def test_serve_refuses_to_start_without_its_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_DATABASE_URL", f"sqlite:///{tmp_path}/no/such/folder/x.db")
    result = runner.invoke(cli, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.output
