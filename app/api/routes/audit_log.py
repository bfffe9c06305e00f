"""The audit trail for auditors and admins: events, verification, FHIR export. Every read is itself recorded."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.api.deps import require
from app.services.auditing import Actor, record_access
from audit import Action, list_events, unit_of_work, verify_log

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class EventPublic(BaseModel):
    seq: int
    recorded: datetime
    action: str
    type_code: str
    type_display: str
    outcome: int
    agent_user: str
    agent_role: str
    source_address: str
    entities: list[dict[str, str]]
    request_id: str
    details: dict[str, object]


class VerifyPublic(BaseModel):
    ok: bool
    events: int
    checkpoints: int
    signatures_checked: bool
    witness_checked: bool
    uncovered: int
    root: str
    first_failure: str | None


def _log_used(request: Request, actor: Actor, purpose: str) -> None:
    with unit_of_work(request.app.state.engine) as session:
        record_access(session, actor, action=Action.READ, type_code="110101", details={"activity": purpose})


@router.get("/events", response_model=list[EventPublic])
def events(
    request: Request,
    actor: Annotated[Actor, Depends(require("audit:read"))],
    user: Annotated[str | None, Query(max_length=128)] = None,
    entity: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[EventPublic]:
    _log_used(request, actor, "list events")
    with Session(request.app.state.engine) as session:
        rows = list_events(
            session=session, user=user, entity=entity, since=since, until=until, limit=limit, offset=offset
        )
        return [
            EventPublic(
                seq=row.seq,
                recorded=row.recorded,
                action=row.action,
                type_code=row.type_code,
                type_display=row.type_display,
                outcome=row.outcome,
                agent_user=row.agent_user,
                agent_role=row.agent_role,
                source_address=row.source_address,
                entities=json.loads(row.entities),
                request_id=row.request_id,
                details=json.loads(row.details),
            )
            for row in rows
        ]


@router.get("/verify", response_model=VerifyPublic)
def verify(request: Request, actor: Annotated[Actor, Depends(require("audit:read"))]) -> VerifyPublic:
    """Recompute every hash, link, Merkle root and signature, and prove the kept checkpoint is in the log."""
    from app.services.audit_log import first_signing_key, witness
    from audit.checkpoints import CheckpointFileError, SigningKeyError

    _log_used(request, actor, "verify")
    settings = request.app.state.settings
    engine = request.app.state.engine
    try:
        key, kept = first_signing_key(engine, settings), witness(settings)
    except (SigningKeyError, CheckpointFileError, OSError, UnicodeDecodeError) as exc:
        raise HTTPException(
            503, f"the audit keys or the kept checkpoint cannot be read ({type(exc).__name__})"
        ) from None
    with Session(engine) as session:
        report = verify_log(session=session, public_key=key, witness=kept)
    failure = report.first_failure
    return VerifyPublic(
        ok=report.ok,
        events=report.events,
        checkpoints=report.checkpoints,
        signatures_checked=report.signatures_checked,
        witness_checked=report.witness_checked,
        uncovered=report.uncovered,
        root=report.root,
        first_failure=None if failure is None else failure.reason,
    )


@router.get("/export", response_class=Response, responses={200: {"content": {"application/fhir+json": {}}}})
def export(
    request: Request,
    actor: Annotated[Actor, Depends(require("audit:read"))],
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Response:
    """Events as a FHIR R5 Bundle of AuditEvent resources."""
    from audit.fhir import audit_bundle

    _log_used(request, actor, "export")
    with Session(request.app.state.engine) as session:
        bundle = audit_bundle(list_events(session=session, since=since, until=until, limit=limit))
        return Response(bundle.model_dump_json(), media_type="application/fhir+json")
