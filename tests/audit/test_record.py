from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from audit import (
    Agent,
    AuditError,
    Entity,
    ModelCall,
    Source,
    create_audit_engine,
    list_events,
    record,
    sha256_hex,
    unit_of_work,
    upgrade_database,
    verify_log,
)
from audit.events import GENESIS_HASH
from audit.models import AuditEvent


def _append(engine: Engine, user: str = "dr.grey", study: str = "1.2.3", **kwargs: object) -> int:
    with unit_of_work(engine) as session:
        event = record(
            session=session,
            action="R",
            type_code="110110",
            agent=Agent(user, "radiologist"),
            entities=[Entity("study", study)],
            **kwargs,  # type: ignore[arg-type]
        )
    return event.seq  # given when the unit of work committed


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def test_events_chain_from_genesis(engine: Engine) -> None:
    assert [_append(engine) for _ in range(3)] == [0, 1, 2]
    with Session(engine) as session:
        rows = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    assert rows[0].prev_hash == GENESIS_HASH
    assert rows[1].prev_hash == rows[0].leaf_hash and rows[2].prev_hash == rows[1].leaf_hash
    assert all(row.recorded.tzinfo is not None for row in rows)
    with Session(engine) as session:
        assert verify_log(session=session).ok


def test_migrations_are_idempotent(engine: Engine) -> None:
    _append(engine)
    upgrade_database(engine)
    assert _count(engine) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "X"}, "action"),
        ({"outcome": 3}, "outcome"),
        ({"type_code": ""}, "type code"),
        ({"agent": Agent("u" * 200)}, "agent_user"),
        ({"entities": [Entity("patient-name", "x")]}, "entity kind"),
    ],
)
def test_invalid_events_are_refused_and_nothing_is_written(
    engine: Engine, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"action": "R", "type_code": "110110", "agent": Agent("dr.grey")} | kwargs
    with pytest.raises(AuditError, match=message), unit_of_work(engine) as session:
        record(session=session, **arguments)  # type: ignore[arg-type]
    assert _count(engine) == 0


def read_study_with_audit(engine: Engine, user: str) -> str:
    """A patient-data access done the way the app does it: data and its event in one unit of work."""
    with unit_of_work(engine) as session:
        pixels = "the study's pixels"
        record(session=session, action="R", type_code="110103", agent=Agent(user), entities=[Entity("study", "1.2")])
        return pixels


def test_fail_closed_when_the_event_is_invalid(engine: Engine) -> None:
    with pytest.raises(AuditError):
        read_study_with_audit(engine, "u" * 500)
    assert _count(engine) == 0


def test_fail_closed_when_the_database_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    writable = create_audit_engine(f"sqlite:///{path}")
    upgrade_database(writable)
    writable.dispose()
    read_only = create_audit_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(OperationalError):
        read_study_with_audit(read_only, "dr.grey")  # the access fails with the event
    assert _count(create_audit_engine(f"sqlite:///{path}")) == 0


def test_model_call_details_hold_hashes_and_text_only_when_given(engine: Engine) -> None:
    call = ModelCall(
        "omniclinic-demo",
        "0.1.0",
        prompt_sha256=sha256_hex("Is there a fracture?"),
        image_sha256=(sha256_hex(b"pixels"),),
        output_sha256=sha256_hex("No fracture."),
    )
    with unit_of_work(engine) as session:
        record(
            session=session,
            action="E",
            type_code="110112",
            agent=Agent("dr.grey"),
            details=call,
            source=Source("ws-12", "10.0.0.12"),
        )
    with Session(engine) as session:
        (event,) = list_events(session=session)
        details = json.loads(event.details)
    assert details["prompt_sha256"] == sha256_hex("Is there a fracture?")
    assert "prompt_text" not in details and "output_text" not in details
    assert event.source_address == "10.0.0.12"


def test_list_filters(engine: Engine) -> None:
    _append(engine, user="a", study="1.2.3")
    _append(engine, user="b", study="1.2.30")
    _append(engine, user="a", study="1.2.4", patient_pseudonym="P42")
    with Session(engine) as session:
        assert [e.seq for e in list_events(session=session, user="a")] == [0, 2]
        assert [e.seq for e in list_events(session=session, entity="1.2.3")] == [0]  # not 1.2.30
        assert [e.seq for e in list_events(session=session, patient="P42")] == [2]
        future = datetime.now(UTC) + timedelta(hours=1)
        assert list_events(session=session, since=future) == []
        assert len(list_events(session=session, until=future)) == 3
        assert [e.seq for e in list_events(session=session, limit=1, offset=1)] == [1]


def test_a_recorded_event_commits_with_its_unit_of_work_and_only_then(sqlite_engine: Engine) -> None:
    """A failed savepoint inside the unit of work keeps its event; a rolled-back session loses it."""
    with unit_of_work(sqlite_engine) as session:
        record(session=session, action="R", type_code="110110", agent=Agent("kept"))
        try:
            with session.begin_nested():
                session.execute(select(1))
                raise ValueError("a step that failed and was rolled back to its savepoint")
        except ValueError:
            pass
    with Session(sqlite_engine) as session:
        record(session=session, action="R", type_code="110110", agent=Agent("rolled.back"))
        session.rollback()
        session.commit()
    with Session(sqlite_engine) as session:
        users = list(session.scalars(select(AuditEvent.agent_user).order_by(AuditEvent.seq)))
    assert users == ["kept"]
