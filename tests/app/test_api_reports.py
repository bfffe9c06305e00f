"""Report drafts: written by the model, edited and signed by a clinician, exported for retraining."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.app.conftest import audit_events, login, upload


def test_draft_edit_sign_keeps_every_version_and_signed_is_final(client: TestClient) -> None:
    headers = login(client, "clinician")
    uid = upload(client, headers)
    draft = client.post(f"/api/v1/studies/{uid}/reports", headers=headers)
    assert draft.status_code == 201
    report = draft.json()
    assert report["draft_text"].startswith("PRELIMINARY DRAFT by tiny (random weights)")
    assert "TECHNIQUE:\nCT;" in report["draft_text"]
    edited = client.put(f"/api/v1/reports/{report['id']}", json={"text": "No acute findings."}, headers=headers)
    assert edited.json()["status"] == "edited" and edited.json()["draft_text"] == report["draft_text"]
    signed = client.post(f"/api/v1/reports/{report['id']}/sign", headers=headers).json()
    assert signed["signed_text"] == "No acute findings." and signed["signed_by"] == "clinician"
    assert client.put(f"/api/v1/reports/{report['id']}", json={"text": "changed"}, headers=headers).status_code == 409
    assert client.post(f"/api/v1/reports/{report['id']}/sign", headers=headers).status_code == 409
    assert client.post(f"/api/v1/reports/{report['id']}/sign", headers=login(client, "researcher")).status_code == 403
    assert [r["id"] for r in client.get(f"/api/v1/studies/{uid}/reports", headers=headers).json()] == [report["id"]]


def test_signed_reports_export_as_training_conversations(client: TestClient, tmp_path: Path) -> None:
    from training.conversations import load_conversations

    headers = login(client, "clinician")
    uid = upload(client, headers)
    report = client.post(f"/api/v1/studies/{uid}/reports", headers=headers).json()
    client.put(f"/api/v1/reports/{report['id']}", json={"text": "Small left effusion."}, headers=headers)
    client.post(f"/api/v1/reports/{report['id']}/sign", headers=headers)
    client.post(f"/api/v1/studies/{uid}/reports", headers=headers)  # an unsigned draft is not exported
    assert client.get("/api/v1/reports/export", headers=headers).status_code == 403
    exported = client.get("/api/v1/reports/export", headers=login(client, "researcher"))
    assert exported.status_code == 200
    path = tmp_path / "signed.jsonl"
    path.write_bytes(exported.content)
    conversations = load_conversations(path)
    assert len(conversations) == 1 and conversations[0].group == uid
    assert conversations[0].text(["assistant"]) == "Small left effusion."
    assert any(e["type_code"] == "110106" for e in audit_events(client))


def test_audit_routes_for_auditors_verify_and_export(client: TestClient) -> None:
    upload(client, login(client, "clinician"))
    auditor = login(client, "auditor")
    verify = client.get("/api/v1/audit/verify", headers=auditor)
    assert verify.status_code == 200 and verify.json()["ok"] and verify.json()["events"] > 0
    bundle = client.get("/api/v1/audit/export", headers=auditor)
    assert bundle.json()["resourceType"] == "Bundle" and bundle.json()["entry"]
    assert client.get("/api/v1/audit/verify", headers=login(client, "clinician")).status_code == 403
    assert any(e["type_code"] == "110101" for e in audit_events(client))  # the auditor's reading is on record
