"""``omniclinic users ...`` and ``omniclinic ask ...`` from a terminal."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from app.cli import cli

runner = CliRunner()


def _events(type_code: str) -> list[dict[str, object]]:
    result = runner.invoke(cli, ["audit", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    return [row for row in rows if row["type_code"] == type_code]


def test_users_add_from_piped_stdin_then_login_passwd_disable(isolated_settings: Path) -> None:
    added = runner.invoke(cli, ["users", "add", "dr.who", "--role", "clinician"], input="a good long password\n")
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["users", "list"])
    assert "dr.who\tclinician" in listed.output
    weak = runner.invoke(cli, ["users", "add", "x", "--role", "clinician"], input="short\n")
    assert weak.exit_code == 2 and "12 characters" in weak.output
    bad_role = runner.invoke(cli, ["users", "add", "y", "--role", "superuser"], input="a good long password\n")
    assert bad_role.exit_code == 2 and "role must be one of" in bad_role.output
    again = runner.invoke(cli, ["users", "add", "dr.who", "--role", "admin"], input="a good long password\n")
    assert again.exit_code == 2 and "already" in again.output
    assert runner.invoke(cli, ["users", "passwd", "dr.who"], input="another long password\n").exit_code == 0
    assert runner.invoke(cli, ["users", "disable", "dr.who"]).exit_code == 0
    assert "disabled" in runner.invoke(cli, ["users", "list"]).output
    activities = [row["details"]["activity"] for row in _events("110100")]
    assert activities[-3:] == ["user added", "password changed", "user disabled"]


def test_ask_from_the_terminal_prints_json_speaks_and_is_audited(isolated_settings: Path, tmp_path: Path) -> None:
    out = tmp_path / "answer.wav"
    result = runner.invoke(
        cli, ["ask", get_testdata_file("CT_small.dcm"), "--text", "Is there a nodule?", "--json", "--speak", str(out)]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["answer"] and body["model"]["untrained_parts"]
    assert out.read_bytes()[:4] == b"RIFF"
    calls = _events("110103")
    assert len(calls) == 1 and calls[0]["details"]["output_sha256"]


def test_ask_refuses_what_it_cannot_use(isolated_settings: Path, tmp_path: Path) -> None:
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("Jane Doe, MRN 1234567")
    result = runner.invoke(cli, ["ask", str(not_dicom), "--text", "x"])
    assert result.exit_code == 1 and "no readable DICOM study" in result.output and "Jane" not in result.output
    neither = runner.invoke(cli, ["ask", get_testdata_file("CT_small.dcm")])
    assert neither.exit_code == 2
    noise = tmp_path / "q.wav"
    noise.write_bytes(b"RIFF" + b"\0" * 100)
    corrupt = runner.invoke(cli, ["ask", get_testdata_file("CT_small.dcm"), "--audio", str(noise)])
    assert corrupt.exit_code == 1 and "error:" in corrupt.output
