"""Uploading, reading and deleting studies, with a hospital's messy files and an attacker's crafted ones."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from tests.app.conftest import audit_events, ct_file, login, upload


def test_upload_deidentifies_lists_and_describes(client: TestClient, isolated_settings: Path) -> None:
    headers = login(client, "clinician")
    response = client.post(
        "/api/v1/studies", files=[("files", ("../../Doe^Jane 1234567.dcm", ct_file()))], headers=headers
    )
    assert response.status_code == 201, response.text
    study = response.json()["studies"][0]
    original = pydicom.dcmread(io.BytesIO(ct_file()))
    assert study["deidentified"] and study["study_uid"] != original.StudyInstanceUID
    stored = list((isolated_settings / "studies").rglob("*.dcm"))
    assert len(stored) == 1 and "Doe" not in str(stored[0])
    kept = pydicom.dcmread(stored[0])
    assert kept.PatientIdentityRemoved == "YES" and str(original.PatientName) not in str(kept.PatientName)
    assert [s["study_uid"] for s in client.get("/api/v1/studies", headers=headers).json()] == [study["study_uid"]]
    detail = client.get(f"/api/v1/studies/{study['study_uid']}", headers=headers).json()
    assert detail["summary"]["series"][0]["modality"] == "CT"
    assert str(original.PatientName) not in str(detail)
    imports = [e for e in audit_events(client) if e["type_code"] == "110107"]
    assert imports and imports[-1]["entities"] == [{"kind": "study", "id": study["study_uid"]}]


def test_slice_png_with_window_and_bounds(client: TestClient) -> None:
    headers = login(client, "clinician")
    uid = upload(client, headers)
    lung = client.get(f"/api/v1/studies/{uid}/image?window=lung", headers=headers)
    bone = client.get(f"/api/v1/studies/{uid}/image?window=bone", headers=headers)
    assert lung.status_code == 200 and lung.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert lung.headers["X-Slice-Count"] == "1" and lung.content != bone.content
    assert client.get(f"/api/v1/studies/{uid}/image?window=nonsense", headers=headers).status_code == 422
    assert client.get(f"/api/v1/studies/{uid}/image?index=5", headers=headers).status_code == 404
    assert client.get("/api/v1/studies/1.2.3/image", headers=headers).status_code == 404
    assert client.get("/api/v1/studies/..%2F..%2Fetc/image", headers=headers).status_code == 404


def test_zip_upload_with_path_tricks_in_member_names(client: TestClient, isolated_settings: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../../../tmp/evil.dcm", ct_file())
        archive.writestr("/etc/cron.d/x", b"not dicom")
    response = client.post(
        "/api/v1/studies", files=[("files", ("a.zip", buffer.getvalue()))], headers=login(client, "clinician")
    )
    assert response.status_code == 201, response.text
    assert len(response.json()["studies"]) == 1 and response.json()["rejected"]
    assert not Path("/tmp/evil.dcm").exists()
    assert all(str(isolated_settings) not in r["file"] for r in response.json()["rejected"])


def test_bad_uploads_are_refused_with_a_reason_and_the_server_goes_on(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_upload_bytes=200_000, max_upload_files=2)
    headers = login(client, "clinician")
    not_dicom = client.post("/api/v1/studies", files=[("files", ("x.dcm", b"hello" * 100))], headers=headers)
    assert not_dicom.status_code == 415 and "neither DICOM" in not_dicom.json()["detail"]
    truncated = ct_file()[:2000]
    broken = client.post("/api/v1/studies", files=[("files", ("x.dcm", truncated))], headers=headers)
    assert broken.status_code == 422 and "nothing usable" in broken.json()["detail"]
    huge = client.post("/api/v1/studies", files=[("files", ("x.dcm", b"\0" * 300_000))], headers=headers)
    assert huge.status_code == 413
    many = client.post("/api/v1/studies", files=[("files", (f"{i}.dcm", ct_file())) for i in range(3)], headers=headers)
    assert many.status_code == 413
    assert client.get("/health").status_code == 200
    assert upload(client, headers)  # and a good upload still works


def test_only_admin_deletes_and_delete_removes_the_files(client: TestClient, isolated_settings: Path) -> None:
    uid = upload(client, login(client, "clinician"))
    assert client.delete(f"/api/v1/studies/{uid}", headers=login(client, "clinician")).status_code == 403
    assert client.delete(f"/api/v1/studies/{uid}", headers=login(client, "admin")).status_code == 204
    assert client.get(f"/api/v1/studies/{uid}", headers=login(client, "clinician")).status_code == 404
    assert not list((isolated_settings / "studies").rglob("*.dcm"))
    assert any(e["type_code"] == "110105" for e in audit_events(client))


def test_an_upload_never_replaces_a_stored_instance(client: TestClient, isolated_settings: Path) -> None:
    headers = login(client, "clinician")
    uid = upload(client, headers)
    stored = next((isolated_settings / "studies").rglob("*.dcm"))
    before = stored.read_bytes()
    again = client.post("/api/v1/studies", files=[("files", ("again.dcm", ct_file()))], headers=headers)
    assert again.status_code == 201 and again.json()["rejected"][0]["code"] == "duplicate"
    assert stored.read_bytes() == before
    assert client.get("/api/v1/studies", headers=headers).json()[0]["study_uid"] == uid
