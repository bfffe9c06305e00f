"""Reading the log: filtered listings and inclusion proofs. There is no update or delete path."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit.merkle import inclusion_path, merkle_root, verify_inclusion
from audit.models import AuditCheckpoint, AuditEvent


def list_events(
    *,
    session: Session,
    user: str | None = None,
    entity: str | None = None,
    patient: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEvent]:
    """Events in log order, filtered by user, an entity id (study/series/instance UID, report id),
    pseudonymous patient id, and a time range (``since`` inclusive, ``until`` exclusive)."""
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if user:
        query = query.where(AuditEvent.agent_user == user)
    if entity:
        query = query.where(AuditEvent.entities.contains(f'"id":{json.dumps(entity)},', autoescape=True))
    if patient:
        query = query.where(AuditEvent.patient_pseudonym == patient)
    if since:
        query = query.where(AuditEvent.recorded >= since)
    if until:
        query = query.where(AuditEvent.recorded < until)
    return list(session.scalars(query.limit(limit).offset(offset)))


def log_size(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


@dataclass(frozen=True)
class InclusionProof:
    """RFC 9162 inclusion proof of one event in the tree of the first ``tree_size`` events."""

    seq: int
    leaf_hash: str
    tree_size: int
    root: str
    path: list[str]
    checkpoint_signature: str | None
    checkpoint_key_id: str | None

    def verifies(self) -> bool:
        return verify_inclusion(
            bytes.fromhex(self.leaf_hash),
            self.seq,
            self.tree_size,
            [bytes.fromhex(h) for h in self.path],
            bytes.fromhex(self.root),
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def inclusion_proof(*, session: Session, seq: int) -> InclusionProof:
    """Prove event ``seq`` against the first signed checkpoint that covers it, else the current tree.

    Raises:
        LookupError: no such event.
    """
    checkpoint = session.scalars(
        select(AuditCheckpoint).where(AuditCheckpoint.tree_size > seq).order_by(AuditCheckpoint.tree_size).limit(1)
    ).first()
    size = checkpoint.tree_size if checkpoint is not None else log_size(session)
    if not 0 <= seq < size:
        raise LookupError(f"there is no event {seq} in the log")
    leaves = [
        bytes.fromhex(h)
        for h in session.scalars(select(AuditEvent.leaf_hash).where(AuditEvent.seq < size).order_by(AuditEvent.seq))
    ]
    return InclusionProof(
        seq=seq,
        leaf_hash=leaves[seq].hex(),
        tree_size=size,
        root=checkpoint.root_hash if checkpoint is not None else merkle_root(leaves).hex(),
        path=[h.hex() for h in inclusion_path(leaves, seq)],
        checkpoint_signature=checkpoint.signature if checkpoint is not None else None,
        checkpoint_key_id=checkpoint.key_id if checkpoint is not None else None,
    )
