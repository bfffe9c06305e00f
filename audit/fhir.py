"""Audit events as a FHIR R5 AuditEvent Bundle (fhir.resources validates every resource)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from fhir.resources.bundle import Bundle

from audit.models import AuditEvent

OUTCOME_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-outcome"
OUTCOME_DISPLAY = {0: "Success", 4: "Minor failure", 8: "Serious failure", 12: "Major failure"}
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
CHAIN_EXTENSION = "urn:omniclinic:fhir:audit-chain"
DICOM_UID_SYSTEM = "urn:dicom:uid"


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_event_resource(event: AuditEvent) -> dict[str, object]:
    """One event as a FHIR AuditEvent (dict); its place in the chain as an extension."""
    coding = {"system": event.type_system, "code": event.type_code}
    if event.type_display:
        coding["display"] = event.type_display
    agent: dict[str, object] = {"who": {"identifier": {"value": event.agent_user}}, "requestor": event.agent_requestor}
    if event.agent_role:
        agent["role"] = [{"text": event.agent_role}]
    if event.source_address:
        agent["networkString"] = event.source_address
    entities: list[dict[str, object]] = []
    if event.patient_pseudonym:
        entities.append(
            {
                "what": {"identifier": {"value": event.patient_pseudonym}},
                "role": {"coding": [{"system": OBJECT_ROLE_SYSTEM, "code": "1", "display": "Patient"}]},
            }
        )
    for item in json.loads(event.entities):
        identifier = (
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{item['id']}"}
            if item["kind"] in ("study", "series", "instance")
            else {"value": item["id"]}
        )
        entities.append({"what": {"identifier": identifier, "display": item["kind"]}})
    resource: dict[str, object] = {
        "resourceType": "AuditEvent",
        "id": event.event_id,
        "extension": [
            {
                "url": CHAIN_EXTENSION,
                "extension": [
                    {"url": "seq", "valueInteger64": event.seq},
                    {"url": "leafHash", "valueString": event.leaf_hash},
                    {"url": "prevHash", "valueString": event.prev_hash},
                ],
            }
        ],
        "category": [{"coding": [coding]}],
        "code": {"coding": [coding]},
        "action": event.action,
        "recorded": _instant(event.recorded),
        "outcome": {
            "code": {"system": OUTCOME_SYSTEM, "code": str(event.outcome), "display": OUTCOME_DISPLAY[event.outcome]}
        },
        "agent": [agent],
        "source": {"observer": {"display": event.source_node or "omniclinic"}},
    }
    if event.purpose_of_use:
        resource["authorization"] = [{"coding": [{"system": PURPOSE_SYSTEM, "code": event.purpose_of_use}]}]
    if entities:
        resource["entity"] = entities
    return resource


def audit_bundle(events: Iterable[AuditEvent]) -> Bundle:
    """A validated ``collection`` Bundle of AuditEvents."""
    entries = [{"fullUrl": f"urn:uuid:{e.event_id}", "resource": audit_event_resource(e)} for e in events]
    return Bundle.model_validate(
        {"resourceType": "Bundle", "type": "collection", "timestamp": _instant(datetime.now(UTC)), "entry": entries}
    )
