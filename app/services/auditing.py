"""Who is acting, as the audit trail names them, and the one way services record an access."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from audit import Action, Agent, Entity, ModelCall, Outcome, Source, record

AUDIT_CHUNK = 200
"""Studies named in one audit event."""


@dataclass(frozen=True)
class Actor:
    """A logged-in user of the API or the UI, or the person at the command line."""

    username: str
    role: str
    address: str = ""
    request_id: str = ""

    @classmethod
    def at_command_line(cls) -> Actor:
        return cls(getpass.getuser()[:64], "cli")

    def agent(self) -> Agent:
        return Agent(self.username, self.role)

    def source(self) -> Source:
        return Source(node=socket.gethostname()[:128], address=self.address[:64])


def record_access(
    session: Session,
    actor: Actor,
    *,
    action: Action,
    type_code: str,
    studies: Sequence[str] = (),
    entities: Sequence[Entity] = (),
    outcome: Outcome = Outcome.SUCCESS,
    details: ModelCall | dict[str, object] | None = None,
) -> None:
    """Record the access in ``session``'s unit of work: it commits with the data it covers, or neither
    does. Every study is named: a long list is recorded as several events of ``AUDIT_CHUNK`` studies."""
    chunks = [list(studies[start : start + AUDIT_CHUNK]) for start in range(0, len(studies), AUDIT_CHUNK)] or [[]]
    for chunk in chunks:
        record(
            session=session,
            action=action,
            type_code=type_code,
            agent=actor.agent(),
            source=actor.source(),
            entities=[*(Entity("study", uid) for uid in chunk), *entities],
            outcome=outcome,
            request_id=actor.request_id[:64],
            details=details,
        )


def record_model_call(session: Session, actor: Actor, study_uid: str, details: ModelCall | dict[str, object]) -> None:
    """A question about a study answered by the model (DICOM "instances accessed", action execute),
    with the call as hashes."""
    record_access(session, actor, action=Action.EXECUTE, type_code="110103", studies=[study_uid], details=details)
