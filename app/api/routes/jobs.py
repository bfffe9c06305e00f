"""Jobs: batch report drafting over stored studies, queued here and run in the background."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from app.api.deps import require
from app.models import Job
from app.services.auditing import Actor, record_access
from app.services.drafting import FILE_NAMES
from audit import Action, unit_of_work

router = APIRouter(prefix="/api/v1", tags=["jobs"])
MEDIA_TYPES = {"text": "text/plain; charset=utf-8", "fhir": "application/fhir+json", "sr": "application/dicom"}


class DraftJobCreate(BaseModel):
    study_uids: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=10_000, description="Stored studies to draft; all of them when empty."
    )
    formats: list[Literal["text", "fhir", "sr"]] = Field(default=["text", "fhir", "sr"], min_length=1)


class StudyOutcomePublic(BaseModel):
    position: int
    study_uid: str
    status: str
    reason: str
    images: int
    seconds: float


class JobPublic(BaseModel):
    id: str
    kind: str
    status: str
    created_by: str
    created: datetime
    updated: datetime
    total: int
    done: int
    failed: int
    formats: list[str]
    error: str | None
    outcomes: list[StudyOutcomePublic]

    @classmethod
    def of(cls, job: Job, *, with_outcomes: bool = True) -> JobPublic:
        detail = json.loads(job.detail or "{}")
        outcomes = (
            []
            if not with_outcomes
            else [
                StudyOutcomePublic(
                    study_uid=o["study_instance_uid"],
                    **{k: o[k] for k in ("position", "status", "reason", "images", "seconds")},
                )
                for o in detail.get("outcomes", [])
            ]
        )
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            created_by=job.created_by,
            created=job.created,
            updated=job.updated,
            total=job.total,
            done=job.done,
            failed=job.failed,
            formats=detail.get("formats", []),
            error=detail.get("error"),
            outcomes=outcomes,
        )


@router.post("/jobs/draft-reports", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
def create_draft_job(
    body: DraftJobCreate, request: Request, actor: Annotated[Actor, Depends(require("reports:write"))]
) -> JobPublic:
    """Queue a job that drafts a report for each study (text, FHIR DiagnosticReport, DICOM SR); each
    draft also becomes a report to edit and sign. Poll ``GET /jobs/{id}`` for its progress."""
    return JobPublic.of(request.app.state.jobs.create_drafts(body.study_uids, list(body.formats), actor))


@router.get("/jobs", response_model=list[JobPublic])
def list_jobs(request: Request, actor: Annotated[Actor, Depends(require("reports:write"))]) -> list[JobPublic]:
    """The latest jobs and their counts (each study's outcome: ``GET /jobs/{id}``)."""
    return [JobPublic.of(job, with_outcomes=False) for job in request.app.state.jobs.list()]


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: str, request: Request, actor: Annotated[Actor, Depends(require("reports:write"))]) -> JobPublic:
    return JobPublic.of(request.app.state.jobs.get(job_id))


@router.post("/jobs/{job_id}/resume", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED)
def resume_job(job_id: str, request: Request, actor: Annotated[Actor, Depends(require("reports:write"))]) -> JobPublic:
    """Run an interrupted or finished job again: studies drafted before are skipped, failed ones retried."""
    return JobPublic.of(request.app.state.jobs.resume(job_id, actor))


@router.get("/jobs/{job_id}/studies/{study_uid}/{fmt}", response_class=FileResponse)
def job_file(
    job_id: str,
    study_uid: str,
    fmt: Literal["text", "fhir", "sr"],
    request: Request,
    actor: Annotated[Actor, Depends(require("reports:write"))],
) -> FileResponse:
    """One study's draft in one format, as written (audited as a read of the study)."""
    path = request.app.state.jobs.output_file(job_id, study_uid, FILE_NAMES[fmt])
    with unit_of_work(request.app.state.engine) as session:
        record_access(session, actor, action=Action.READ, type_code="110103", studies=[study_uid])
    return FileResponse(path, media_type=MEDIA_TYPES[fmt], filename=path.name)
