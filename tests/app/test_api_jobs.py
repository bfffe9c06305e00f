"""The API's report-drafting jobs: queued, run in the background, resumable, each draft a report to sign."""

from __future__ import annotations

import time

import pydicom
from fastapi.testclient import TestClient
from pydicom.filebase import DicomBytesIO

from app.services.drafting import study_key
from tests.app.conftest import audit_events, login, upload


def wait_for(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("finished", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError("the job did not finish")


def test_a_job_drafts_stored_studies_into_reports_and_files(client: TestClient) -> None:
    clinician = login(client, "clinician")
    study_uid = upload(client, clinician)

    created = client.post("/api/v1/jobs/draft-reports", json={"study_uids": [study_uid]}, headers=clinician)

    assert created.status_code == 202, created.text
    job = wait_for(client, clinician, created.json()["id"])
    assert job["status"] == "finished" and (job["total"], job["done"], job["failed"]) == (1, 1, 0)
    assert job["outcomes"][0]["study_uid"] == study_uid and job["outcomes"][0]["status"] == "drafted"

    text = client.get(f"/api/v1/jobs/{job['id']}/studies/{study_uid}/text", headers=clinician)
    assert text.status_code == 200 and text.text.startswith("PRELIMINARY DRAFT by tiny (random weights)")
    fhir = client.get(f"/api/v1/jobs/{job['id']}/studies/{study_uid}/fhir", headers=clinician).json()
    assert fhir["status"] == "preliminary" and fhir["study"][0]["identifier"]["value"] == f"urn:oid:{study_uid}"
    sr = client.get(f"/api/v1/jobs/{job['id']}/studies/{study_uid}/sr", headers=clinician)
    assert sr.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(DicomBytesIO(sr.content)).StudyInstanceUID == study_uid

    reports = client.get(f"/api/v1/studies/{study_uid}/reports", headers=clinician).json()
    assert [r["status"] for r in reports] == ["draft"] and reports[0]["draft_text"] == text.text

    resumed = client.post(f"/api/v1/jobs/{job['id']}/resume", headers=clinician)
    assert resumed.status_code == 202
    again = wait_for(client, clinician, job["id"])
    assert again["outcomes"][0]["status"] == "skipped"  # drafted before: not drafted twice
    assert len(client.get(f"/api/v1/studies/{study_uid}/reports", headers=clinician).json()) == 1

    activities = [e["details"].get("activity") for e in audit_events(client) if isinstance(e.get("details"), dict)]
    assert activities.count("study read for report drafting") == 1
    assert activities.count("report drafted") == 1

    assert client.delete(f"/api/v1/studies/{study_uid}", headers=login(client, "admin")).status_code == 204
    gone = client.get(f"/api/v1/jobs/{job['id']}/studies/{study_uid}/fhir", headers=clinician)
    assert gone.status_code == 404  # a deleted study's drafts go with it
    assert not list(client.app.state.settings.data_dir.glob(f"jobs/*/{study_key(study_uid)}"))


def test_jobs_are_refused_to_roles_without_report_writing_and_for_unknown_studies(client: TestClient) -> None:
    clinician = login(client, "clinician")
    for role in ("researcher", "auditor", "admin"):
        refused = client.post("/api/v1/jobs/draft-reports", json={}, headers=login(client, role))
        assert refused.status_code == 403
    assert client.post("/api/v1/jobs/draft-reports", json={}, headers=clinician).status_code == 422  # none stored
    unknown = client.post("/api/v1/jobs/draft-reports", json={"study_uids": ["1.2.3"]}, headers=clinician)
    assert unknown.status_code == 404
    bad_format = client.post("/api/v1/jobs/draft-reports", json={"formats": ["xml"]}, headers=clinician)
    assert bad_format.status_code == 422
    assert client.get("/api/v1/jobs/no-such-job", headers=clinician).status_code == 404
    traversal = client.get("/api/v1/jobs/x/studies/..%2F..%2Fomniclinic.db/text", headers=clinician)
    assert traversal.status_code == 404
