"""Recording audit events: the one append path, used by the app and by ``omniclinic audit record``.

Modelled on FHIR AuditEvent (action, type, outcome, agent, source, entity, purpose of use). Every
column goes into the canonical bytes of the event, and those bytes into its leaf hash, so verify
notices a change to any of them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum

from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select
from sqlalchemy.orm import Session, SessionTransaction

from audit.merkle import leaf_hash
from audit.models import AuditEvent
from audit.store import lock_log

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first event."""
DICOM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
CANONICAL_VERSION = 1


class Action(StrEnum):
    """FHIR AuditEventAction."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """FHIR AuditEventOutcome (R4 codes, as IHE ATNA uses them)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


# DICOM audit event IDs (DCM, PS3.15 A.5 / CID 400) that the app records.
EVENT_TYPES: dict[str, str] = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110110": "Patient Record",
    "110112": "Query",
    "110114": "User Authentication",
}
ENTITY_KINDS = frozenset({"study", "series", "instance", "report", "job", "file"})


class AuditError(ValueError):
    """An event that cannot be recorded as given (bad code, oversized field); nothing was written."""


@dataclass(frozen=True)
class Agent:
    user_id: str
    role: str = ""
    requestor: bool = True


@dataclass(frozen=True)
class Source:
    node: str = ""
    address: str = ""


@dataclass(frozen=True)
class Entity:
    """What was touched: a study/series/instance UID, a report or job id."""

    kind: str
    id: str


@dataclass(frozen=True)
class ModelCall:
    """What a model saw and said, as hashes; raw text only where the deployment allows it."""

    model_name: str
    model_version: str
    prompt_sha256: str = ""
    image_sha256: tuple[str, ...] = ()
    audio_sha256: str = ""
    output_sha256: str = ""
    prompt_text: str | None = None
    output_text: str | None = None

    def as_details(self) -> dict[str, object]:
        details: dict[str, object] = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "prompt_sha256": self.prompt_sha256,
            "image_sha256": list(self.image_sha256),
            "audio_sha256": self.audio_sha256,
            "output_sha256": self.output_sha256,
        }
        if self.prompt_text is not None:
            details["prompt_text"] = self.prompt_text
        if self.output_text is not None:
            details["output_text"] = self.output_text
        return details


def sha256_hex(data: bytes | str) -> str:
    """Hex SHA-256 of bytes, or of a string's UTF-8."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass
class RecordedEvent:
    """An event recorded in a unit of work. ``seq``, ``recorded`` and ``leaf_hash`` are set when it is
    appended, just before the unit of work commits (or by ``append_pending``); until then ``seq`` is -1."""

    event_id: str
    details: dict[str, object] = field(default_factory=dict)
    seq: int = -1
    recorded: datetime | None = None
    leaf_hash: str = ""


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, UTF-8 text: one spelling for one value."""
    return _ENCODER.encode(value)


def canonical_bytes(row: dict[str, object]) -> bytes:
    """The bytes a leaf hash covers: every column but ``leaf_hash``, as sorted compact JSON.

    ``recorded`` is spelled ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, always six fraction digits).
    """
    recorded = row["recorded"]
    assert isinstance(recorded, datetime)
    if recorded.utcoffset():
        recorded = recorded.astimezone(UTC)
    payload = dict(row)
    payload.pop("leaf_hash", None)
    payload["recorded"] = recorded.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    payload["v"] = CANONICAL_VERSION
    return _ENCODER.encode(payload).encode("utf-8")


COLUMNS = tuple(column.name for column in AuditEvent.__table__.columns)

LIMITS = {
    "type_system": 128,
    "type_code": 64,
    "type_display": 128,
    "agent_user": 128,
    "agent_role": 64,
    "source_node": 128,
    "source_address": 64,
    "patient_pseudonym": 64,
    "purpose_of_use": 64,
    "request_id": 64,
}


def record(
    *,
    session: Session,
    action: Action | str,
    type_code: str,
    agent: Agent,
    outcome: Outcome | int = Outcome.SUCCESS,
    type_system: str = DICOM_SYSTEM,
    type_display: str | None = None,
    source: Source = Source(),
    entities: Sequence[Entity] = (),
    patient_pseudonym: str = "",
    purpose_of_use: str = "",
    request_id: str = "",
    details: ModelCall | dict[str, object] | None = None,
) -> RecordedEvent:
    """Record one event in the caller's unit of work (fail closed: if the append fails, nothing commits).

    The event is checked now and appended when the unit of work commits (``append_pending``): only
    then is the log's lock taken, the event linked to the head and given its ``seq``. Use it inside
    ``audit.store.unit_of_work`` and return the data only after the unit of work has committed.

    Raises:
        AuditError: an invalid action, outcome, entity kind or an oversized field.
    """
    try:
        action = Action(action)
        outcome = Outcome(int(outcome))
    except ValueError:
        raise AuditError("action must be one of C, R, U, D, E and outcome one of 0, 4, 8, 12") from None
    for entity in entities:
        if entity.kind not in ENTITY_KINDS or not entity.id:
            raise AuditError(f"entity kind must be one of {', '.join(sorted(ENTITY_KINDS))}, with an id")
    detail_map = details.as_details() if isinstance(details, ModelCall) else dict(details or {})
    row: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "action": action.value,
        "type_system": type_system,
        "type_code": type_code,
        "type_display": EVENT_TYPES.get(type_code, "") if type_display is None else type_display,
        "outcome": int(outcome),
        "agent_user": agent.user_id,
        "agent_role": agent.role,
        "agent_requestor": agent.requestor,
        "source_node": source.node,
        "source_address": source.address,
        "patient_pseudonym": patient_pseudonym,
        "entities": canonical_json([{"kind": e.kind, "id": e.id} for e in entities]),
        "purpose_of_use": purpose_of_use,
        "request_id": request_id,
        "details": canonical_json(detail_map),
    }
    for name, limit in LIMITS.items():
        if len(str(row[name])) > limit:
            raise AuditError(f"{name} is longer than {limit} characters")
    if not type_code or not agent.user_id:
        raise AuditError("an event needs a type code and an agent user id")

    recorded_event = RecordedEvent(str(row["event_id"]), detail_map)
    if session.get_transaction() is None:
        session.begin()  # what autobegin would do (no connection yet): a rollback now discards the event
    _pending(session).append((row, recorded_event))
    return recorded_event


PENDING_KEY = "omniclinic_audit_pending"


def _now() -> datetime:
    """The clock events are stamped with (one place, so a test can set it back)."""
    return datetime.now(UTC)


def _pending(session: Session) -> list[tuple[dict[str, object], RecordedEvent]]:
    """The session's events waiting for the append; the first call hooks the append to its commit."""
    if PENDING_KEY not in session.info:
        session.info[PENDING_KEY] = []
        sqlalchemy_event.listen(session, "before_commit", append_pending)
        sqlalchemy_event.listen(session, "after_transaction_end", _discard_pending)
    return session.info[PENDING_KEY]


def _discard_pending(session: Session, transaction: SessionTransaction) -> None:
    """When the outermost transaction ends, nothing recorded in it may wait for a later one.

    After a commit the list is already empty (appended); after a rollback the events go with the
    data they were about. A savepoint's end (``begin_nested``) leaves them alone: the outer unit of
    work still commits them.
    """
    if transaction.parent is None and not transaction.nested:
        session.info.get(PENDING_KEY, []).clear()


def append_pending(session: Session) -> None:
    """Append the session's recorded events to the log now, under the log's lock.

    Runs by itself just before the unit of work commits: the lock is held from here to the commit,
    not while the caller reads the data the event is about, and the event is committed before the
    unit of work returns anything. ``recorded`` is taken under the lock and never goes back in
    time, so timestamps follow sequence order.
    """
    pending = session.info.get(PENDING_KEY)
    if not pending:
        return
    lock_log(session)
    head = session.execute(
        select(AuditEvent.seq, AuditEvent.leaf_hash, AuditEvent.recorded).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq = 0 if head is None else head.seq + 1
    previous = GENESIS_HASH if head is None else head.leaf_hash
    last_time = None if head is None else head.recorded
    for row, recorded_event in pending:
        now = _now()
        recorded = now if last_time is None or now >= last_time else last_time
        row.update(seq=seq, prev_hash=previous, recorded=recorded)
        row["leaf_hash"] = leaf_hash(canonical_bytes(row)).hex()
        session.add(AuditEvent(**row))
        recorded_event.seq, recorded_event.recorded = seq, recorded
        recorded_event.leaf_hash = str(row["leaf_hash"])
        seq, previous, last_time = seq + 1, str(row["leaf_hash"]), recorded
    pending.clear()
    session.flush()
