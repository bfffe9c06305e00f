"""The audit log against a database administrator: a witness file, refused checkpoints, key custody."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from app.cli import cli
from app.core.config import get_settings
from audit import create_audit_engine
from audit.events import COLUMNS, GENESIS_HASH, canonical_bytes
from audit.merkle import leaf_hash
from audit.models import AuditCheckpoint, AuditEvent

runner = CliRunner()


def _run(*arguments: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, ["audit", *arguments])


def _record(count: int, user: str = "dr.grey") -> None:
    for index in range(count):
        result = _run("record", "--action", "R", "--type", "110110", "--user", user, "--entity", f"1.2.{index}")
        assert result.exit_code == 0, result.output


def _rewrite_wholesale(database: Path, seq: int) -> None:
    """What an administrator with write access can do: change an event and recompute every hash and
    link after it so that the chain is whole again, and delete every checkpoint row."""
    engine = create_audit_engine(f"sqlite:///{database}")
    columns = [getattr(AuditEvent, name) for name in COLUMNS]
    with Session(engine) as session, session.begin():
        session.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(agent_user="someone.else"))
        previous = GENESIS_HASH
        for row in session.execute(select(*columns).order_by(AuditEvent.seq)).all():
            event = dict(zip(COLUMNS, row, strict=True)) | {"prev_hash": previous}
            event["leaf_hash"] = leaf_hash(canonical_bytes(event)).hex()
            session.execute(
                update(AuditEvent)
                .where(AuditEvent.seq == event["seq"])
                .values(prev_hash=event["prev_hash"], leaf_hash=event["leaf_hash"])
            )
            previous = event["leaf_hash"]
        session.execute(delete(AuditCheckpoint))
    engine.dispose()


def test_a_kept_checkpoint_catches_a_log_rewritten_after_its_checkpoints_were_deleted(
    isolated_settings: Path, tmp_path: Path
) -> None:
    _record(6)
    witness = tmp_path / "witness" / "checkpoint.json"
    assert _run("checkpoint", "--out", str(witness)).exit_code == 0
    kept = json.loads(witness.read_text())
    assert kept["tree_size"] == 6 and len(kept["signature"]) == 128
    _record(3)
    public_key = isolated_settings / "audit_signing_key.pub.pem"
    intact = _run("verify", "--public-key", str(public_key), "--checkpoint", str(witness), "--json")
    assert intact.exit_code == 0, intact.output
    assert json.loads(intact.stdout)["witness_checked"] and json.loads(intact.stdout)["consistency_proof"]

    _rewrite_wholesale(isolated_settings / "omniclinic.db", seq=2)
    unwitnessed = _run("verify", "--public-key", str(public_key), "--checkpoint", str(_empty_witness(tmp_path)))
    assert unwitnessed.exit_code == 2  # not a checkpoint file: a usage error, not a pass
    rewritten = _run("verify", "--public-key", str(public_key), "--checkpoint", str(witness))
    assert rewritten.exit_code == 1
    assert "kept checkpoint" in rewritten.stdout  # its rows are gone, and the log no longer contains its tree
    refused = _run("checkpoint")  # the data folder keeps the last checkpoint too: no signature for the new history
    assert refused.exit_code == 1 and "checkpoint refused" in refused.output


def _empty_witness(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-checkpoint.json"
    path.write_text("{}")
    return path


def test_verify_without_a_public_key_says_so_with_its_own_exit_code(isolated_settings: Path) -> None:
    _record(2)
    assert _run("checkpoint").exit_code == 0
    (isolated_settings / "audit_signing_key.pub.pem").unlink()
    result = _run("verify")
    assert result.exit_code == 3
    assert "signatures were not checked" in result.stdout


def test_verify_list_and_prove_create_nothing(isolated_settings: Path) -> None:
    for arguments in (("verify",), ("list",), ("prove", "0")):
        result = _run(*arguments)
        assert result.exit_code == 1 and "no audit log yet" in result.output, arguments
    assert not (isolated_settings / "omniclinic.db").exists()


def test_a_missing_private_key_is_an_error_not_a_new_key(isolated_settings: Path) -> None:
    _record(2)
    assert _run("checkpoint").exit_code == 0
    public_key = isolated_settings / "audit_signing_key.pub.pem"
    before = public_key.read_bytes()
    (isolated_settings / "audit_signing_key.pem").unlink()
    _record(1)
    result = _run("checkpoint")
    assert result.exit_code == 2 and "restore the key from your backup" in result.output
    assert public_key.read_bytes() == before and not (isolated_settings / "audit_signing_key.pem").exists()


def test_rotate_key_hands_over_and_the_old_public_key_still_verifies_everything(
    isolated_settings: Path, tmp_path: Path
) -> None:
    _record(3)
    assert _run("checkpoint").exit_code == 0
    old_public = tmp_path / "auditor-copy.pub.pem"
    old_public.write_bytes((isolated_settings / "audit_signing_key.pub.pem").read_bytes())
    rotated = _run("rotate-key")
    assert rotated.exit_code == 0, rotated.output
    assert (isolated_settings / "audit_signing_key.pub.pem").read_bytes() != old_public.read_bytes()
    _record(2)
    assert _run("checkpoint").exit_code == 0  # signed with the new key
    verified = _run("verify", "--public-key", str(old_public), "--json")
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["checkpoints"] == 4  # the first event, 3, the hand-over, 6
    by_default = _run("verify")  # from the data folder's retired key, along the hand-over
    assert by_default.exit_code == 0, by_default.output


def test_rotation_when_a_checkpoint_is_due_still_hands_over(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(2)
    monkeypatch.setenv("OMNICLINIC_AUDIT_CHECKPOINT_SECONDS", "0.001")
    get_settings.cache_clear()
    rotated = _run("rotate-key")
    assert rotated.exit_code == 0, rotated.output
    assert _run("verify").exit_code == 0


def test_deleting_every_checkpoint_row_is_caught_and_nothing_new_is_signed(
    isolated_settings: Path, tmp_path: Path
) -> None:
    """Events after the last checkpoint can be rewritten unseen, but the deleted signed rows cannot."""
    _record(5)
    witness = tmp_path / "checkpoint.json"
    assert _run("checkpoint", "--out", str(witness)).exit_code == 0
    _record(2)
    engine = create_audit_engine(f"sqlite:///{isolated_settings / 'omniclinic.db'}")
    with Session(engine) as session, session.begin():
        session.execute(delete(AuditCheckpoint))
    engine.dispose()
    result = _run("verify", "--checkpoint", str(witness))
    assert result.exit_code == 1 and "not among the database's checkpoints" in result.stdout
    assert _run("checkpoint").exit_code == 1


def _checkpoints(isolated_settings: Path) -> list[int]:
    engine = create_audit_engine(f"sqlite:///{isolated_settings / 'omniclinic.db'}")
    with Session(engine) as session:
        sizes = list(session.scalars(select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size)))
    engine.dispose()
    return sizes


def test_checkpoints_are_signed_every_n_events_and_kept_in_the_data_folder(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNICLINIC_AUDIT_CHECKPOINT_EVENTS", "4")
    get_settings.cache_clear()
    _record(9)
    assert _checkpoints(isolated_settings) == [1, 5, 9]  # the first event, then every four
    kept = json.loads((isolated_settings / "audit_checkpoint.json").read_text())
    assert kept["tree_size"] == 9


def test_checkpoints_are_signed_when_new_events_are_old_enough(
    isolated_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(3)
    assert _checkpoints(isolated_settings) == [1]  # 100 events or 300 s by default
    monkeypatch.setenv("OMNICLINIC_AUDIT_CHECKPOINT_SECONDS", "0.001")
    get_settings.cache_clear()
    _record(1)
    assert _checkpoints(isolated_settings) == [1, 4]


def test_a_deid_run_ends_under_a_signed_checkpoint(isolated_settings: Path, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    result = runner.invoke(cli, ["deid", get_testdata_file("CT_small.dcm"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    sizes = _checkpoints(isolated_settings)
    assert sizes[-1] == 2  # started and finished: both covered


def test_a_forged_hand_over_naming_our_key_is_not_signed_on_top_of(isolated_settings: Path) -> None:
    """A row that claims the log was handed over to this key must carry the old key's signature."""
    from audit.checkpoints import public_path

    _record(3)
    public = public_path(isolated_settings / "audit_signing_key.pem").read_text()
    engine = create_audit_engine(f"sqlite:///{isolated_settings / 'omniclinic.db'}")
    with Session(engine) as session, session.begin():
        first = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)).first()
        assert first is not None
        first.next_public_key, first.signature = public, "00" * 64  # a hand-over nobody signed
    engine.dispose()
    _record(1)  # a checkpoint is due only at 100 events: this one just adds an event
    result = _run("checkpoint")
    assert result.exit_code == 1 and "does not verify with this log's signing key" in result.output
