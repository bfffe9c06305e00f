"""``omniclinic audit``: record, list, verify, export, checkpoint and prove audit events.

Reading the log (``list``, ``export``) is itself recorded as an "Audit Log Used" event (DCM 110101),
as IHE ATNA asks.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from app.commands.errors import EXIT_FAILED, EXIT_USAGE
from app.commands.errors import fail as _fail

audit_cli = typer.Typer(name="audit", help="The tamper-evident audit trail.", no_args_is_help=True)


class ExportFormat(StrEnum):
    fhir = "fhir"


def audit_engine():  # type: ignore[no-untyped-def]
    """The app database with its audit tables ready (the data folder made first)."""
    from app.cli import current_settings
    from app.core.config import SettingsError
    from app.core.db import open_database

    try:
        return open_database(current_settings())
    except SettingsError as exc:
        raise _fail(str(exc), EXIT_USAGE) from None


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
    from audit import Agent, Source

    return Agent(getpass.getuser(), "cli"), Source(socket.gethostname()[:128])


def record_operator_event(
    engine,
    *,
    type_code: str,
    studies=(),
    outcome: int = 0,  # type: ignore[no-untyped-def]
    details: dict[str, object] | None = None,
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
    with unit_of_work(audit_engine()) as session:
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
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute every event hash, link, Merkle root and signature. Exit 1 on any change."""
    from sqlalchemy.orm import Session

    from app.cli import current_settings
    from audit import load_public_key, verify_log
    from audit.checkpoints import SigningKeyError, public_path

    settings = current_settings()
    key_path = public_key or public_path(settings.audit_key_path)
    key = None
    if key_path.exists():
        try:
            key = load_public_key(key_path)
        except SigningKeyError as exc:
            raise _fail(str(exc), EXIT_USAGE) from None
    elif public_key is not None:
        raise _fail(f"no public key at {public_key}", EXIT_USAGE)
    with Session(audit_engine()) as session:
        report = verify_log(session=session, public_key=key)
    if as_json:
        failure = report.first_failure
        typer.echo(
            json.dumps(
                {
                    "ok": report.ok,
                    "events": report.events,
                    "checkpoints": report.checkpoints,
                    "signatures_checked": report.signatures_checked,
                    "uncovered": report.uncovered,
                    "root": report.root,
                    "first_failure": None if failure is None else {"seq": failure.seq, "reason": failure.reason},
                }
            )
        )
    elif report.ok:
        signed = "signatures checked" if report.signatures_checked else "signatures NOT checked (no public key)"
        typer.echo(
            f"ok: {report.events} events, {report.checkpoints} checkpoints ({signed}), "
            f"{report.uncovered} events after the last checkpoint; root {report.root}"
        )
    else:
        failure = report.first_failure
        where = f"event {failure.seq}" if failure.seq is not None else "the log"
        typer.secho(f"FAILED at {where}: {failure.reason}", fg=typer.colors.RED)
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


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
def checkpoint_cmd() -> None:
    """Sign the current tree head with the data folder's key."""
    from app.cli import current_settings
    from audit import create_checkpoint, load_or_create_signing_key, unit_of_work

    key = load_or_create_signing_key(current_settings().audit_key_path)
    with unit_of_work(audit_engine()) as session:
        checkpoint = create_checkpoint(session=session, signing_key=key)
    if checkpoint is None:
        typer.echo("the log is empty: nothing to sign")
    else:
        state = "signed" if checkpoint.new else "unchanged since"
        typer.echo(f"{state} checkpoint: {checkpoint.tree_size} events, root {checkpoint.root_hash}")


@audit_cli.command("prove")
def prove_cmd(seq: Annotated[int, typer.Argument(help="The event's sequence number.", min=0)]) -> None:
    """Print an RFC 9162 inclusion proof of one event (against the first signed checkpoint covering it)."""
    from sqlalchemy.orm import Session

    from audit import inclusion_proof

    with Session(audit_engine()) as session:
        try:
            proof = inclusion_proof(session=session, seq=seq)
        except LookupError as exc:
            raise _fail(str(exc), EXIT_FAILED) from None
    typer.echo(json.dumps(proof.as_dict(), indent=2))
