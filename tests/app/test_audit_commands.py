"""`omniclinic audit ...` as an administrator uses it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from fhir.resources.bundle import Bundle
from typer.testing import CliRunner

from app.cli import cli
from audit.query import InclusionProof

runner = CliRunner()


def _run(*arguments: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, ["audit", *arguments])


def _record(user: str = "dr.grey", *extra: str):  # type: ignore[no-untyped-def]
    return _run(
        "record",
        "--action",
        "R",
        "--type",
        "110110",
        "--user",
        user,
        "--entity",
        "1.2.3",
        "--entity",
        "series:1.2.3.4",
        *extra,
    )


def test_record_list_verify_export_prove(isolated_settings: Path, tmp_path: Path) -> None:
    assert _record().exit_code == 0
    assert _run("checkpoint").stdout.startswith("unchanged since checkpoint: 1 events")  # signed with the first event
    assert _record("dr.house", "--outcome", "4", "--patient", "P9").exit_code == 0

    listing = _run("list", "--json")
    rows = [json.loads(line) for line in listing.stdout.splitlines()]
    assert [row["user"] for row in rows] == ["dr.grey", "dr.house"]
    assert rows[0]["entities"] == [{"id": "1.2.3", "kind": "study"}, {"id": "1.2.3.4", "kind": "series"}]
    assert [json.loads(x)["user"] for x in _run("list", "--json", "--user", "dr.house").stdout.splitlines()] == [
        "dr.house"
    ]

    verified = _run("verify")
    assert verified.exit_code == 0 and "signatures checked" in verified.stdout
    # each of the two listings was itself recorded (DCM 110101 Audit Log Used)
    assert json.loads(_run("verify", "--json").stdout)["events"] == 4
    codes = [json.loads(line)["type_code"] for line in _run("list", "--json").stdout.splitlines()]
    assert codes == ["110110", "110110", "110101", "110101"]

    out = tmp_path / "audit.json"
    assert _run("export", "--format", "fhir", "--out", str(out)).exit_code == 0
    bundle = Bundle.model_validate_json(out.read_text())
    assert [entry.resource.code.coding[0].code for entry in bundle.entry][:2] == ["110110", "110110"]

    proof = InclusionProof(**json.loads(_run("prove", "0").stdout))
    assert proof.verifies() and proof.checkpoint_signature


def test_verify_names_the_first_changed_event_and_exits_1(isolated_settings: Path) -> None:
    for user in ("a", "b", "c"):
        _record(user)
    with sqlite3.connect(isolated_settings / "omniclinic.db") as connection:
        connection.execute("UPDATE audit_events SET agent_user = 'mallory' WHERE seq = 1")
    result = _run("verify")
    assert result.exit_code == 1
    assert "FAILED at event 1: its content changed" in result.stdout


def test_bad_input_is_a_usage_error(isolated_settings: Path) -> None:
    result = _run("record", "--action", "Z", "--type", "110110", "--user", "u")
    assert result.exit_code == 2 and "action must be one of" in result.stderr
    result = _run("list", "--since", "yesterday")
    assert result.exit_code == 2 and "ISO 8601" in result.stderr
    assert _run("prove", "99").exit_code == 1
