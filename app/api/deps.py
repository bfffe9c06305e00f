"""Shared request dependencies: settings, services, the logged-in user, and permission checks.

Deny by default: every patient-data route depends on ``require("PERMISSION")``; a missing, expired
or forged token is 401, a role without the permission is 403, decided on the server from the table
in ``core.security``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import Engine

from app.core.config import Settings
from app.core.security import TokenError, allowed, decode_token
from app.services.auditing import Actor

SESSION_COOKIE = "omniclinic_session"
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def actor_from_token(
    request: Request, token: str | None, state: object | None = None, *, cookie: bool = False
) -> Actor:
    """The user a bearer token (or the UI's session cookie) names, still active. ``state``: the main
    app's state, for requests that reach a mounted sub-app (the UI).

    Raises:
        HTTPException: 401 with the reason (missing, expired, forged, user no longer active).
    """
    from app.services.users import active_user

    if not token and cookie:
        token = request.cookies.get(SESSION_COOKIE)
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not logged in", headers=unauthorized)
    state = state or request.app.state
    settings: Settings = state.settings  # type: ignore[attr-defined]
    try:
        claims = decode_token(token, settings.resolve_secret_key().get_secret_value())
    except TokenError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers=unauthorized) from None
    user = active_user(state.engine, str(claims["sub"]), float(claims["iat"]))  # type: ignore[arg-type,attr-defined]
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "the login is no longer valid", headers=unauthorized)
    return Actor(user.username, user.role, client_address(request), getattr(request.state, "request_id", ""))


def current_actor(request: Request, token: Annotated[str | None, Depends(oauth2_scheme)]) -> Actor:
    """The API's user: a bearer token; the UI's session cookie for reads only (GET), so that no page on
    another site can make a logged-in browser change anything (CSRF)."""
    return actor_from_token(request, token, cookie=request.method in ("GET", "HEAD"))


def require(permission: str) -> Callable[..., Actor]:
    """A dependency that yields the acting user when their role has ``permission``, else 403."""

    def dependency(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
        if not allowed(actor.role, permission):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"the {actor.role} role may not do this")
        return actor

    dependency.permission = permission  # type: ignore[attr-defined]  # the route-policy test reads it
    return dependency
