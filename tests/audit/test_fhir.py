from __future__ import annotations

import json

from fhir.resources.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.bundle import Bundle
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from audit import Agent, Entity, Source, list_events, record, unit_of_work
from audit.fhir import audit_bundle


def test_export_is_a_valid_auditevent_bundle_that_round_trips(engine: Engine) -> None:
    with unit_of_work(engine) as session:
        record(
            session=session,
            action="R",
            type_code="110110",
            agent=Agent("dr.grey", "radiologist"),
            source=Source("ws-7", "10.1.2.3"),
            entities=[Entity("study", "1.2.840.1"), Entity("report", "r-9")],
            patient_pseudonym="P7",
            purpose_of_use="TREAT",
            outcome=8,
        )
    with Session(engine) as session:
        bundle = audit_bundle(list_events(session=session))
    parsed = Bundle.model_validate_json(bundle.model_dump_json())
    assert parsed.type == "collection" and len(parsed.entry) == 1
    event = FhirAuditEvent.model_validate(json.loads(bundle.model_dump_json())["entry"][0]["resource"])
    assert event.action == "R" and event.code.coding[0].code == "110110"
    assert event.outcome.code.code == "8"
    assert event.agent[0].who.identifier.value == "dr.grey" and event.agent[0].networkString == "10.1.2.3"
    values = [e.what.identifier.value for e in event.entity]
    assert values == ["P7", "urn:oid:1.2.840.1", "r-9"]
    assert event.authorization[0].coding[0].code == "TREAT"
