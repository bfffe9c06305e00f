"""``omniclinic audit``: record, list, verify, export, checkpoint and prove audit events.

Reading the log (``list``, ``export``) is itself recorded as an "Audit Log Used" event (DCM 110101),
as IHE ATNA asks.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from app.commands.common import EXIT_FAILED, EXIT_USAGE
from app.commands.common import fail as _fail

EXIT_UNSIGNED = 3
"""``audit verify`` found the log intact but checked no signature (no public key): not a clean pass."""

audit_cli = typer.Typer(name="audit", help="The tamper-evident audit trail.", no_args_is_help=True)


class ExportFormat(StrEnum):
    fhir = "fhir"


def audit_engine(*, migrate: bool = True):  # type: ignore[no-untyped-def]
    """The app database with its audit tables ready (the data folder made first).

    With ``migrate=False`` (verify, list, prove) nothing is created or migrated: a database without
    the current audit tables is an error, and a missing SQLite file is not made.
    """
    from sqlalchemy.engine import make_url

    from app.commands.common import current_settings, open_app_database
    from app.core.db import make_engine
    from audit.store import schema_is_current

    settings = current_settings()
    if migrate:
        return open_app_database(settings)
    url = make_url(settings.database_url.get_secret_value())
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise _fail("there is no audit log yet: no database file (nothing was recorded)", EXIT_FAILED)
    engine = make_engine(settings.database_url.get_secret_value())
    try:
        current = schema_is_current(engine)
    except Exception as exc:  # unreachable server, bad credentials: the driver's type, never the URL
        raise _fail(f"cannot read the audit database ({type(exc).__name__})", EXIT_FAILED) from None
    if not current:
        raise _fail(
            "this database holds no audit log at the current version; a command that records (deid, ingest, "
            "audit record, audit checkpoint) creates or upgrades it",
            EXIT_FAILED,
        )
    return engine


def _parse_time(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"{option} takes an ISO 8601 time, e.g. 2026-01-31 or 2026-01-31T08:00:00+01:00", EXIT_USAGE
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_entities(values: list[str]):  # type: ignore[no-untyped-def]
    from audit import Entity

    entities = []
    for value in values:
        kind, _, identifier = value.rpartition(":")
        entities.append(Entity(kind or "study", identifier))
    return entities


def operator():  # type: ignore[no-untyped-def]
    """The person at the command line, as an audit agent and source."""
    from app.services.auditing import Actor

    actor = Actor.at_command_line()
    return actor.agent(), actor.source()


def record_operator_event(
    engine,
    *,
    type_code: str,
    studies=(),
    outcome: int = 0,  # type: ignore[no-untyped-def]
    details: dict[str, object] | None = None,
    checkpoint: bool = True,
) -> None:
    """Record, in its own unit of work, an act of the person at the command line on patient data.

    Raises whatever stops the event being written: callers let it stop them (fail closed).
    """
    from audit import Action, Entity, record, unit_of_work

    agent, source = operator()
    with unit_of_work(engine) as session:
        record(
            session=session,
            action=Action.READ,
            type_code=type_code,
            agent=agent,
            source=source,
            entities=[Entity("study", uid) for uid in sorted(studies)],
            outcome=outcome,
            details=details,
        )
    if checkpoint:
        checkpoint_if_due(engine)


def checkpoint_if_due(engine, *, force: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Sign a checkpoint when the settings' event count or age is reached (always with ``force``)."""
    from sqlalchemy.orm import Session

    from app.commands.common import current_settings
    from audit.checkpoints import checkpoint_due

    settings = current_settings()
    if not force:
        with Session(engine) as session:
            due = checkpoint_due(
                session=session,
                every_events=settings.audit_checkpoint_events,
                every_seconds=settings.audit_checkpoint_seconds,
            )
        if not due:
            return
    sign_checkpoint(engine, settings)


def _log_used(session, purpose: str) -> None:  # type: ignore[no-untyped-def]
    """Record that this operator read the audit log."""
    from audit import Action, record

    agent, source = operator()
    record(session=session, action=Action.READ, type_code="110101", agent=agent, source=source, purpose_of_use=purpose)


@audit_cli.command("record")
def record_event(
    action: Annotated[str, typer.Option(help="C, R, U, D or E (FHIR AuditEventAction).")],
    type_code: Annotated[str, typer.Option("--type", help="Event type code, e.g. DCM 110110 Patient Record.")],
    user: Annotated[str, typer.Option(help="Who did it.")],
    entity: Annotated[
        list[str], typer.Option(help="What was touched: a study UID, or KIND:ID (study, series, instance, report).")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    outcome: Annotated[int, typer.Option(help="0 success, 4 minor, 8 serious, 12 major failure.")] = 0,
    role: Annotated[str, typer.Option(help="The agent's role.")] = "",
    source: Annotated[str, typer.Option(help="The system that reports the event.")] = "",
    address: Annotated[str, typer.Option(help="The client's network address.")] = "",
    patient: Annotated[str, typer.Option(help="Pseudonymous patient id.")] = "",
    purpose: Annotated[str, typer.Option(help="Purpose of use (v3 ActReason, e.g. TREAT).")] = "",
) -> None:
    """Record an event reported by another system (the ATNA "record audit event" role)."""
    from audit import Agent, AuditError, Source, record, unit_of_work

    engine = audit_engine()
    try:
        with unit_of_work(engine) as session:
            event = record(
                session=session,
                action=action.upper(),
                type_code=type_code,
                agent=Agent(user, role),
                outcome=outcome,
                source=Source(source, address),
                entities=_parse_entities(entity),
                patient_pseudonym=patient,
                purpose_of_use=purpose,
            )
    except AuditError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    typer.echo(f"recorded event {event.seq} ({event.event_id})")
    checkpoint_if_due(engine)


@audit_cli.command("list")
def list_cmd(
    user: Annotated[str | None, typer.Option(help="Only this user's events.")] = None,
    study: Annotated[str | None, typer.Option(help="Only events touching this study (or any entity) id.")] = None,
    patient: Annotated[str | None, typer.Option(help="Only this pseudonymous patient.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601, inclusive).")] = None,
    until: Annotated[str | None, typer.Option(help="Until this time (ISO 8601, exclusive).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """List events in log order."""
    from audit import list_events, unit_of_work

    filters = {
        "user": user,
        "entity": study,
        "patient": patient,
        "since": _parse_time(since, "--since"),
        "until": _parse_time(until, "--until"),
    }
    with unit_of_work(audit_engine(migrate=False)) as session:
        events = list_events(session=session, limit=limit, **filters)
        rows = [_row(event) for event in events]
        _log_used(session, "HOPERAT")
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            entities = ", ".join(f"{e['kind']}:{e['id']}" for e in row["entities"])
            typer.echo(
                f"{row['seq']:>6}  {row['recorded']}  {row['action']}  {row['type_code']:<7} "
                f"outcome {row['outcome']:<2}  {row['user']}  {entities}".rstrip()
            )


def _row(event) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "recorded": event.recorded.isoformat(),
        "action": event.action,
        "type_code": event.type_code,
        "outcome": event.outcome,
        "user": event.agent_user,
        "role": event.agent_role,
        "patient": event.patient_pseudonym,
        "entities": json.loads(event.entities),
        "details": json.loads(event.details),
    }


@audit_cli.command("verify")
def verify_cmd(
    public_key: Annotated[
        Path | None, typer.Option(help="Public key to check checkpoint signatures [default: the data folder's].")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="A checkpoint kept outside the database (audit checkpoint --out) [default: the data folder's]."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute every event hash, link, Merkle root and signature, and prove the kept checkpoint is in the log.

    Exit 0 when everything checks out, 1 on any change, 3 when the log is intact but no signature was checked.
    """
    from sqlalchemy.orm import Session

    from app.commands.common import current_settings
    from audit import load_public_key, verify_log
    from audit.checkpoints import CheckpointFileError, CheckpointInfo, SigningKeyError

    settings = current_settings()
    engine = audit_engine(migrate=False)
    key = None
    if public_key is not None:
        if not public_key.exists():
            raise _fail(f"no public key at {public_key}", EXIT_USAGE)
        try:
            key = load_public_key(public_key)
        except SigningKeyError as exc:
            raise _fail(str(exc), EXIT_USAGE) from None
    else:
        key = _first_signing_key(engine, settings)
    witness_path = checkpoint or settings.audit_witness_path
    witness = None
    if witness_path.exists():
        try:
            witness = CheckpointInfo.from_json(witness_path.read_text(encoding="utf-8"))
        except (CheckpointFileError, OSError, UnicodeDecodeError) as exc:
            raise _fail(f"{witness_path}: {exc}", EXIT_USAGE) from None
    elif checkpoint is not None:
        raise _fail(f"no checkpoint file at {checkpoint}", EXIT_USAGE)
    with Session(engine) as session:
        report = verify_log(session=session, public_key=key, witness=witness)
    failure = report.first_failure
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "events": report.events,
                    "checkpoints": report.checkpoints,
                    "signatures_checked": report.signatures_checked,
                    "witness_checked": report.witness_checked,
                    "consistency_proof": report.consistency_proof,
                    "uncovered": report.uncovered,
                    "root": report.root,
                    "first_failure": None if failure is None else {"seq": failure.seq, "reason": failure.reason},
                }
            )
        )
    elif report.ok:
        signed = "signatures checked" if report.signatures_checked else "signatures NOT checked (no public key)"
        kept = (
            f"contains the kept checkpoint's {witness.tree_size} events (consistency proof of "
            f"{len(report.consistency_proof)} hashes)"
            if witness is not None
            else "no kept checkpoint to compare with"
        )
        typer.echo(
            f"ok: {report.events} events, {report.checkpoints} checkpoints ({signed}), {kept}, "
            f"{report.uncovered} events after the last checkpoint; root {report.root}"
        )
    else:
        where = f"event {failure.seq}" if failure.seq is not None else "the log"
        typer.secho(f"FAILED at {where}: {failure.reason}", fg=typer.colors.RED)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)
    if not report.signatures_checked:
        typer.echo(
            "signatures were not checked: pass --public-key PEM (kept where the database's owners cannot change it)"
        )
        raise typer.Exit(EXIT_UNSIGNED)


def _first_signing_key(engine, settings):  # type: ignore[no-untyped-def]
    from app.services.audit_log import first_signing_key
    from audit.checkpoints import SigningKeyError

    try:
        return first_signing_key(engine, settings)
    except SigningKeyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


@audit_cli.command("export")
def export_cmd(
    format: Annotated[ExportFormat, typer.Option("--format", help="Export format.")] = ExportFormat.fhir,
    out: Annotated[Path | None, typer.Option(help="File to write [default: standard output].")] = None,
    user: Annotated[str | None, typer.Option()] = None,
    study: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option()] = None,
    until: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000)] = 100_000,
) -> None:
    """Write the events as a FHIR R5 Bundle of AuditEvents."""
    from audit import list_events, unit_of_work
    from audit.fhir import audit_bundle

    with unit_of_work(audit_engine()) as session:
        events = list_events(
            session=session,
            user=user,
            entity=study,
            since=_parse_time(since, "--since"),
            until=_parse_time(until, "--until"),
            limit=limit,
        )
        text = audit_bundle(events).model_dump_json(indent=2)
        _log_used(session, "HOPERAT")
    if out is None:
        sys.stdout.write(text + "\n")
    else:
        out.write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {len(events)} events to {out}", err=True)


@audit_cli.command("checkpoint")
def checkpoint_cmd(
    out: Annotated[
        Path | None, typer.Option(help="Also write the signed checkpoint here, for a witness to keep elsewhere.")
    ] = None,
) -> None:
    """Sign the current tree head with the data folder's key (refused when the log does not check out)."""
    from app.commands.common import current_settings

    checkpoint = sign_checkpoint(audit_engine(), current_settings())
    if checkpoint is None:
        typer.echo("the log is empty: nothing to sign")
        return
    state = "signed" if checkpoint.new else "unchanged since"
    typer.echo(f"{state} checkpoint: {checkpoint.tree_size} events, root {checkpoint.root_hash}")
    if out is not None:
        from omniclinic_common.files import write_atomically

        write_atomically(out, checkpoint.to_json() + "\n")
        typer.echo(f"wrote the checkpoint to {out}: keep it where the database's administrators cannot change it")


def sign_checkpoint(engine, settings, next_key=None):  # type: ignore[no-untyped-def]
    """``app.services.audit_log.sign_checkpoint``, its failures as one line and an exit status."""
    from app.services.audit_log import sign_checkpoint as sign
    from audit.checkpoints import CheckpointFileError, CheckpointRefused, SigningKeyError

    try:
        return sign(engine, settings, next_key)
    except SigningKeyError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None
    except (CheckpointFileError, OSError, UnicodeDecodeError) as exc:
        raise _fail(f"{settings.audit_witness_path}: {exc}", EXIT_FAILED) from None
    except CheckpointRefused as exc:
        raise _fail(f"checkpoint refused: {exc}", EXIT_FAILED) from None


@audit_cli.command("rotate-key")
def rotate_key_cmd() -> None:
    """Replace the signing key: the old key signs a hand-over checkpoint naming the new one.

    The old public key is kept beside the new one (``audit_signing_key.KEYID.pub.pem``): auditors keep
    verifying with the key they trust, and verify follows the hand-over to the new key.
    """
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from app.commands.common import current_settings
    from audit.checkpoints import key_id, load_or_create_signing_key, public_path, public_pem, retired_public_path
    from omniclinic_common.files import replace_private_file

    settings = current_settings()
    key_path = settings.audit_key_path
    if not key_path.exists():
        raise _fail(f"no signing key at {key_path} to hand over from", EXIT_USAGE)
    old_public = load_or_create_signing_key(key_path).public_key()
    new_key = Ed25519PrivateKey.generate()
    staged = key_path.with_name(".next-" + key_path.name)
    replace_private_file(
        staged,
        new_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    engine = audit_engine()
    record_operator_event(  # the rotation is itself on record, and the hand-over checkpoint covers it
        engine,
        type_code="110100",
        details={
            "activity": "audit signing key rotation",
            "from": key_id(old_public),
            "to": key_id(new_key.public_key()),
        },
        checkpoint=False,  # the hand-over itself is the next checkpoint
    )
    try:
        checkpoint = sign_checkpoint(engine, settings, next_key=new_key.public_key())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    if checkpoint is None:
        staged.unlink(missing_ok=True)
        raise _fail("the log is empty: there is nothing to hand over yet", EXIT_FAILED)
    retired = retired_public_path(key_path, key_id(old_public))
    retired.write_bytes(public_pem(old_public))
    os.replace(staged, key_path)
    public_path(key_path).write_bytes(public_pem(new_key.public_key()))
    new_id = key_id(new_key.public_key())
    typer.echo(
        f"handed over at {checkpoint.tree_size} events from key {key_id(old_public)} to {new_id}; "
        f"the old public key is kept as {retired.name}"
    )


@audit_cli.command("prove")
def prove_cmd(seq: Annotated[int, typer.Argument(help="The event's sequence number.", min=0)]) -> None:
    """Print an RFC 9162 inclusion proof of one event (against the first signed checkpoint covering it)."""
    from sqlalchemy.orm import Session

    from audit import inclusion_proof

    with Session(audit_engine(migrate=False)) as session:
        try:
            proof = inclusion_proof(session=session, seq=seq)
        except LookupError as exc:
            raise _fail(str(exc), EXIT_FAILED) from None
    typer.echo(json.dumps(proof.as_dict(), indent=2))
