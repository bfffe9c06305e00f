"""Reports: the model drafts, a clinician edits and signs; signed reports export as training conversations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel, Field

from app.api.deps import require
from app.models import Report
from app.services.auditing import Actor

router = APIRouter(prefix="/api/v1", tags=["reports"])


class ReportPublic(BaseModel):
    id: str
    study_uid: str
    status: str
    model_name: str
    draft_text: str
    edited_text: str | None
    signed_text: str | None
    drafted_by: str
    drafted: datetime
    edited_by: str | None
    signed_by: str | None
    signed: datetime | None

    @classmethod
    def of(cls, report: Report) -> ReportPublic:
        return cls.model_validate(report, from_attributes=True)


class ReportEdit(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)


@router.post("/studies/{study_uid}/reports", response_model=ReportPublic, status_code=status.HTTP_201_CREATED)
def draft_report(
    study_uid: str, request: Request, actor: Annotated[Actor, Depends(require("reports:write"))]
) -> ReportPublic:
    """A new draft by the model (it names the model and says it is a draft)."""
    return ReportPublic.of(request.app.state.reports.draft(study_uid, actor))


@router.get("/studies/{study_uid}/reports", response_model=list[ReportPublic])
def study_reports(
    study_uid: str, request: Request, actor: Annotated[Actor, Depends(require("studies:read"))]
) -> list[ReportPublic]:
    return [ReportPublic.of(report) for report in request.app.state.reports.for_study(study_uid, actor)]


@router.get("/reports/export", response_class=Response, responses={200: {"content": {"application/x-ndjson": {}}}})
def export_reports(request: Request, actor: Annotated[Actor, Depends(require("reports:export"))]) -> Response:
    """Signed reports as training conversations (JSON lines, the training format; image paths are files on
    this server, for ``omniclinic train`` run here)."""
    body = request.app.state.reports.export_conversations(actor)
    return Response(
        body,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="signed-reports.jsonl"'},
    )


@router.get("/reports/{report_id}", response_model=ReportPublic)
def get_report(
    report_id: str, request: Request, actor: Annotated[Actor, Depends(require("studies:read"))]
) -> ReportPublic:
    return ReportPublic.of(request.app.state.reports.get(report_id, actor))


@router.put("/reports/{report_id}", response_model=ReportPublic)
def edit_report(
    report_id: str, edit: ReportEdit, request: Request, actor: Annotated[Actor, Depends(require("reports:write"))]
) -> ReportPublic:
    return ReportPublic.of(request.app.state.reports.edit(report_id, edit.text, actor))


@router.post("/reports/{report_id}/sign", response_model=ReportPublic)
def sign_report(
    report_id: str, request: Request, actor: Annotated[Actor, Depends(require("reports:sign"))]
) -> ReportPublic:
    """Sign the report as it stands; a signed report is final (409 on any later change)."""
    return ReportPublic.of(request.app.state.reports.sign(report_id, actor))
