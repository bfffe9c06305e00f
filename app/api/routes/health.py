"""Liveness and readiness: ``GET /health``."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from pydantic import BaseModel

from app import __version__
from app.api.deps import EngineDep
from app.core.db import database_ok

router = APIRouter(tags=["health"])


class HealthPublic(BaseModel):
    status: str
    version: str
    database: str


@router.get("/health", response_model=HealthPublic)
def health(engine: EngineDep, response: Response) -> HealthPublic:
    """200 when the app can reach its database, 503 otherwise."""
    ok, reason = database_ok(engine)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(status="ok" if ok else "unavailable", version=__version__, database=reason)
