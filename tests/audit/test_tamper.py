"""Change any column of any row, delete, insert, reorder, truncate, forge: verify catches each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.orm import Session

from audit import Agent, Entity, create_checkpoint, record, unit_of_work, verify_log
from audit.events import COLUMNS, GENESIS_HASH, canonical_bytes
from audit.merkle import leaf_hash
from audit.models import AuditCheckpoint, AuditEvent

EVENTS = 12
TARGET = 5


@pytest.fixture
def log(sqlite_engine: Engine, signing_key: Ed25519PrivateKey) -> Engine:
    for index in range(EVENTS):
        with unit_of_work(sqlite_engine) as session:
            record(
                session=session,
                action="R",
                type_code="110110",
                agent=Agent(f"user{index % 3}", "radiologist"),
                entities=[Entity("study", f"1.2.{index}")],
                patient_pseudonym=f"P{index}",
            )
        if index == 7:
            with unit_of_work(sqlite_engine) as session:
                create_checkpoint(session=session, signing_key=signing_key)
    return sqlite_engine


def _verify(engine: Engine, key: Ed25519PrivateKey | None = None):  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return verify_log(session=session, public_key=key.public_key() if key else None)


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return 4 if value == 0 else value + 1000
    if hasattr(value, "tzinfo"):
        return value + timedelta(seconds=1)  # type: ignore[operator]
    if value == "R":
        return "U"
    return str(value) + "x"


def test_an_intact_log_verifies_with_signatures(log: Engine, signing_key: Ed25519PrivateKey) -> None:
    report = _verify(log, signing_key)
    assert report.ok and report.events == EVENTS and report.checkpoints == 1 and report.uncovered == 4


@pytest.mark.parametrize("column", COLUMNS)
def test_changing_any_column_is_caught_at_that_event(log: Engine, column: str) -> None:
    with Session(log) as session, session.begin():
        old = session.scalar(select(getattr(AuditEvent, column)).where(AuditEvent.seq == TARGET))
        session.execute(update(AuditEvent).where(AuditEvent.seq == TARGET).values({column: _changed(old)}))
    report = _verify(log)
    assert not report.ok
    assert report.first_failure.seq == TARGET


def test_deleting_an_event_is_caught(log: Engine) -> None:
    with log.begin() as connection:
        connection.execute(delete(AuditEvent).where(AuditEvent.seq == TARGET))
    failure = _verify(log).first_failure
    assert failure.seq == TARGET and "missing" in failure.reason


def test_reordering_events_is_caught(log: Engine) -> None:
    with log.begin() as connection:
        connection.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(seq=10**9))
        connection.execute(update(AuditEvent).where(AuditEvent.seq == 4).values(seq=3))
        connection.execute(update(AuditEvent).where(AuditEvent.seq == 10**9).values(seq=4))
    failure = _verify(log).first_failure
    assert failure.seq == 3 and "link" in failure.reason


def test_truncating_the_end_is_caught_by_a_checkpoint(log: Engine, signing_key: Ed25519PrivateKey) -> None:
    with unit_of_work(log) as session:
        create_checkpoint(session=session, signing_key=signing_key)
    with log.begin() as connection:
        connection.execute(delete(AuditEvent).where(AuditEvent.seq >= EVENTS - 2))
    failure = _verify(log).first_failure
    assert failure.seq is None and "deleted from its end" in failure.reason


def _rewrite(engine: Engine, rows: list[dict[str, object]]) -> None:
    """Replace the log with ``rows``, recomputing every link and hash: a full, consistent forgery."""
    previous = GENESIS_HASH
    for seq, row in enumerate(rows):
        row["seq"], row["prev_hash"] = seq, previous
        row["leaf_hash"] = previous = leaf_hash(canonical_bytes(row)).hex()
    with engine.begin() as connection:
        connection.execute(delete(AuditEvent))
        connection.execute(insert(AuditEvent), rows)


def _rows(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as connection:
        return [
            dict(r._mapping)
            for r in connection.execute(select(*[getattr(AuditEvent, c) for c in COLUMNS]).order_by(AuditEvent.seq))
        ]


def test_inserting_an_event_with_a_recomputed_chain_is_caught_by_the_signed_root(log: Engine) -> None:
    rows = _rows(log)
    forged = dict(rows[2], event_id="00000000-0000-4000-8000-000000000000", agent_user="mallory")
    _rewrite(log, [*rows[:3], forged, *rows[3:]])
    failure = _verify(log).first_failure
    assert failure.seq is None and "history rewritten" in failure.reason


def test_an_edit_with_a_recomputed_chain_after_the_checkpoint_is_only_a_chain(log: Engine) -> None:
    """What a checkpoint cannot cover: events after it. verify says how many, so operators sign often."""
    rows = _rows(log)
    rows[10]["agent_user"] = "mallory"
    _rewrite(log, rows)
    report = _verify(log)
    assert report.ok and report.uncovered == 4


def test_forged_or_foreign_signatures_are_caught(log: Engine, signing_key: Ed25519PrivateKey) -> None:
    assert not _verify(log, Ed25519PrivateKey.generate()).ok  # someone else's key
    with log.begin() as connection:
        signature = connection.scalar(select(AuditCheckpoint.signature))
        connection.execute(
            update(AuditCheckpoint).values(signature=signature[:-2] + ("00" if signature[-2:] != "00" else "01"))
        )
    failure = _verify(log, signing_key).first_failure
    assert failure.seq is None and "not signed by this log's key" in failure.reason
