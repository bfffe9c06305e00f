"""Who is acting, as the audit trail names them, and the one way services record an access."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from audit import Action, Agent, Entity, ModelCall, Outcome, Source, record


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
    """Record one event in ``session``'s unit of work: it commits with the data it covers, or neither does."""
    record(
        session=session,
        action=action,
        type_code=type_code,
        agent=actor.agent(),
        source=actor.source(),
        entities=[*(Entity("study", uid) for uid in studies), *entities],
        outcome=outcome,
        request_id=actor.request_id[:64],
        details=details,
    )
