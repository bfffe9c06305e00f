"""The audit tables: events (append-only, hash-chained) and signed checkpoints of the Merkle tree."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, DateTime, Index, SmallInteger, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class AuditBase(DeclarativeBase):
    pass


class AuditEvent(AuditBase):
    """One access to patient data (or other audited act), modelled on FHIR AuditEvent.

    ``leaf_hash`` = SHA-256(0x00 || canonical bytes of every other column), and the canonical bytes
    include ``prev_hash``, the previous event's ``leaf_hash``: a hash chain whose links are the
    leaves of the log's Merkle tree.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    recorded: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(1))
    type_system: Mapped[str] = mapped_column(String(128))
    type_code: Mapped[str] = mapped_column(String(64))
    type_display: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[int] = mapped_column(SmallInteger)
    agent_user: Mapped[str] = mapped_column(String(128))
    agent_role: Mapped[str] = mapped_column(String(64))
    agent_requestor: Mapped[bool] = mapped_column(Boolean)
    source_node: Mapped[str] = mapped_column(String(128))
    source_address: Mapped[str] = mapped_column(String(64))
    patient_pseudonym: Mapped[str] = mapped_column(String(64))
    entities: Mapped[str] = mapped_column(Text)
    purpose_of_use: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    leaf_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("action IN ('C', 'R', 'U', 'D', 'E')", name="ck_audit_events_action"),
        CheckConstraint("outcome IN (0, 4, 8, 12)", name="ck_audit_events_outcome"),
        CheckConstraint("seq >= 0", name="ck_audit_events_seq"),
        Index("ix_audit_events_recorded", "recorded"),
        Index("ix_audit_events_agent_user", "agent_user"),
        Index("ix_audit_events_patient", "patient_pseudonym"),
    )


class AuditCheckpoint(AuditBase):
    """A signed tree head: the Merkle root of the first ``tree_size`` events, signed with Ed25519."""

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime)
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))
    frontier: Mapped[str] = mapped_column(Text)
    """The compact range at this size (JSON), so the next checkpoint hashes only newer events."""
    next_public_key: Mapped[str] = mapped_column(Text, default="", server_default="")
    """A hand-over checkpoint names (PEM) the key that signs the checkpoints after it; signed with the old key."""
