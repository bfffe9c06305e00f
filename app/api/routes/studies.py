"""Studies: upload (``POST /api/v1/studies``), list, metadata, a rendered slice, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile, status
from pydantic import BaseModel

from app.api.deps import require
from app.models import Study
from app.services.auditing import Actor

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])


class StudyPublic(BaseModel):
    study_uid: str
    modalities: str
    description: str
    series_count: int
    instance_count: int
    deidentified: bool
    uploaded: datetime

    @classmethod
    def of(cls, study: Study) -> StudyPublic:
        return cls.model_validate(study, from_attributes=True)


class RejectedFile(BaseModel):
    file: str
    code: str
    reason: str


class UploadPublic(BaseModel):
    studies: list[StudyPublic]
    rejected: list[RejectedFile]


class StudyDetail(BaseModel):
    study: StudyPublic
    summary: dict[str, object]


@router.post("", response_model=UploadPublic, status_code=status.HTTP_201_CREATED)
def upload(
    request: Request,
    files: Annotated[list[UploadFile], File(description="DICOM files, or zips of them")],
    actor: Annotated[Actor, Depends(require("studies:upload"))],
) -> UploadPublic:
    """Store DICOM files or zips; de-identified first when the settings say so. Files are named by
    position, never by the name they were sent with."""
    store = request.app.state.studies
    folder = store.stage_upload([upload_file.file for upload_file in files])
    result = store.import_upload(folder, actor)
    return UploadPublic(
        studies=[StudyPublic.of(study) for study in result.studies],
        rejected=[RejectedFile(file=r.display_name, code=r.code, reason=r.reason) for r in result.rejected],
    )


@router.get("", response_model=list[StudyPublic])
def list_studies(request: Request, actor: Annotated[Actor, Depends(require("studies:read"))]) -> list[StudyPublic]:
    return [StudyPublic.of(study) for study in request.app.state.studies.list(actor)]


@router.get("/{study_uid}", response_model=StudyDetail)
def study_detail(
    study_uid: str, request: Request, actor: Annotated[Actor, Depends(require("studies:read"))]
) -> StudyDetail:
    described = request.app.state.studies.describe(study_uid, actor)
    return StudyDetail(study=StudyPublic.of(described["study"]), summary=described["summary"])


@router.get(
    "/{study_uid}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "One slice as PNG"}},
)
def study_image(
    study_uid: str,
    request: Request,
    actor: Annotated[Actor, Depends(require("studies:read"))],
    series: Annotated[str | None, Query(max_length=64)] = None,
    index: Annotated[int | None, Query(ge=0)] = None,
    window: Annotated[str | None, Query(max_length=32, description="lung, mediastinum, bone, brain, abdomen")] = None,
) -> Response:
    """A slice of a series (the main one by default) as PNG; ``X-Slice-Count`` gives the series' depth."""
    png, depth = request.app.state.studies.render_png(study_uid, actor, series_uid=series, index=index, preset=window)
    return Response(png, media_type="image/png", headers={"X-Slice-Count": str(depth), "Cache-Control": "no-store"})


@router.delete("/{study_uid}", status_code=status.HTTP_204_NO_CONTENT)
def delete_study(
    study_uid: str, request: Request, actor: Annotated[Actor, Depends(require("studies:delete"))]
) -> Response:
    request.app.state.studies.delete(study_uid, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
