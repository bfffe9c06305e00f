"""``POST /api/v1/auth/token``: the OAuth2 password flow; a JWT for the API and the UI."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from app.api.deps import SettingsDep, client_address, current_actor
from app.core.security import create_token
from app.services.auditing import Actor

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class Me(BaseModel):
    username: str
    role: str


def login(request: Request, username: str, password: str) -> tuple[str, Actor]:
    """A token for valid credentials; 429 after too many failures, 401 otherwise (both audited)."""
    from app.services.users import authenticate

    settings = request.app.state.settings
    throttle = request.app.state.login_throttle
    address = client_address(request)
    wait = throttle.retry_after(username, address)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            "too many failed logins; wait before trying again",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    actor = Actor(username, "", address, getattr(request.state, "request_id", ""))
    user = authenticate(request.app.state.engine, username, password, actor)
    if user is None:
        throttle.failed(username, address)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "wrong user name or password", headers={"WWW-Authenticate": "Bearer"}
        )
    throttle.succeeded(username, address)
    token = create_token(
        user.username, user.role, settings.resolve_secret_key().get_secret_value(), settings.token_minutes
    )
    return token, Actor(user.username, user.role, address, getattr(request.state, "request_id", ""))


@router.post("/token", response_model=Token)
def token(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()], settings: SettingsDep) -> Token:
    access_token, _ = login(request, form.username, form.password)
    return Token(access_token=access_token, expires_in=settings.token_minutes * 60)


@router.get("/me", response_model=Me)
def me(actor: Annotated[Actor, Depends(current_actor)]) -> Me:
    return Me(username=actor.username, role=actor.role)
