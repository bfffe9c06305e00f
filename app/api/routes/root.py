"""``GET /``: what this build serves, said plainly."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app import __version__

router = APIRouter(tags=["meta"])

NOT_YET_AVAILABLE = (
    "This build serves the API health check only. The clinician UI (voice in, speech out), login, "
    "study viewer and report drafting are not built yet."
)


class AboutPublic(BaseModel):
    name: str
    version: str
    available: list[str]
    not_yet_available: str
    medical_device: str


@router.get("/", response_model=AboutPublic)
def about() -> AboutPublic:
    return AboutPublic(
        name="omniclinic",
        version=__version__,
        available=["GET /health"],
        not_yet_available=NOT_YET_AVAILABLE,
        medical_device="omniclinic is not a medical device; its output is a draft for a qualified clinician.",
    )
