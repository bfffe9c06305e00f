"""``GET /``: what this build serves, said plainly (a browser is sent on to the UI's login page)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app import __version__

router = APIRouter(tags=["meta"])


class AboutPublic(BaseModel):
    name: str
    version: str
    available: list[str]
    model: str
    model_caution: str
    medical_device: str


@router.get("/", response_model=AboutPublic)
def about(request: Request) -> AboutPublic:
    info = request.app.state.assistant.info
    return AboutPublic(
        name="omniclinic",
        version=__version__,
        available=["/ui/ (clinician web app)", "/login", "/api/v1 (REST API)", "/docs (API documentation)", "/health"],
        model=info.name,
        model_caution=info.caution,
        medical_device="omniclinic is not a medical device; its output is a draft for a qualified clinician.",
    )
