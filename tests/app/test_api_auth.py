"""Logins, tokens and the role policy, as an attacker would probe them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from app.core.security import PERMISSIONS
from tests.app.conftest import PASSWORD, ROLES, audit_events, login, upload


def test_login_returns_a_bearer_token_and_me_names_the_user(client: TestClient) -> None:
    response = client.post("/api/v1/auth/token", data={"username": "clinician", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["access_token"]
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json() == {"username": "clinician", "role": "clinician"}


def test_failed_logins_are_audited_and_then_throttled(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(login_attempts=3)
    for _ in range(3):
        assert client.post("/api/v1/auth/token", data={"username": "clinician", "password": "wrong"}).status_code == 401
    blocked = client.post("/api/v1/auth/token", data={"username": "clinician", "password": PASSWORD})
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    failures = [e for e in audit_events(client) if e["type_code"] == "110114" and e["outcome"] == 4]
    assert len(failures) == 3 and all(e["agent_user"] == "clinician" for e in failures)


def test_unknown_user_and_wrong_password_get_the_same_answer(client: TestClient) -> None:
    unknown = client.post("/api/v1/auth/token", data={"username": "nobody", "password": PASSWORD})
    wrong = client.post("/api/v1/auth/token", data={"username": "clinician", "password": "nope"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()


def _token(client: TestClient, **claims: object) -> dict[str, str]:
    secret = client.app.state.settings.resolve_secret_key().get_secret_value()
    now = datetime.now(UTC)
    payload = {
        "sub": "clinician",
        "role": "clinician",
        "aud": "omniclinic",
        "iat": now.timestamp(),  # as the app issues them: to the microsecond
        "exp": now + timedelta(minutes=5),
    } | claims
    key = claims.pop("_key", secret) if "_key" in claims else secret
    payload.pop("_key", None)
    return {"Authorization": f"Bearer {jwt.encode(payload, key, algorithm='HS256')}"}


def test_expired_forged_and_missing_tokens_are_401(client: TestClient) -> None:
    expired = _token(client, exp=datetime.now(UTC) - timedelta(seconds=5))
    forged = _token(client, _key="x" * 40)
    no_alg = {"Authorization": "Bearer " + jwt.encode({"sub": "admin", "aud": "omniclinic"}, None, algorithm="none")}
    for headers in (expired, forged, no_alg, {}, {"Authorization": "Bearer garbage"}):
        response = client.get("/api/v1/studies", headers=headers)
        assert response.status_code == 401, headers
    assert "expired" in client.get("/api/v1/studies", headers=expired).json()["detail"]


def test_role_claim_in_a_token_is_not_trusted(client: TestClient) -> None:
    """A token that says "admin" for a clinician gets a clinician's rights: the role is read from the database."""
    headers = _token(client, role="admin")
    assert client.get("/api/v1/audit/events", headers=headers).status_code == 403


def test_a_new_password_or_a_disabled_account_ends_existing_logins(client: TestClient) -> None:
    from app.services.auditing import Actor
    from app.services.users import disable_user, set_password

    headers = login(client, "researcher")
    assert client.get("/api/v1/studies", headers=headers).status_code == 200
    set_password(client.app.state.engine, "researcher", "another long passphrase", Actor("admin", "cli"))
    assert client.get("/api/v1/studies", headers=headers).status_code == 401
    headers = login(client, "clinician")
    disable_user(client.app.state.engine, "clinician", Actor("admin", "cli"))
    assert client.get("/api/v1/studies", headers=headers).status_code == 401
    assert client.post("/api/v1/auth/token", data={"username": "clinician", "password": PASSWORD}).status_code == 401


def _api_routes(routes: list[object]) -> list[APIRoute]:
    """Every APIRoute, through FastAPI's included-router wrappers."""
    found: list[APIRoute] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found += _api_routes(inner.routes) if inner is not None else [route] if isinstance(route, APIRoute) else []
    return found


def _protected_routes(client: TestClient) -> list[tuple[str, str, str]]:
    routes = []
    for route in _api_routes(client.app.routes):
        if not isinstance(route, APIRoute) or not route.path.startswith("/api/v1"):
            continue
        permissions = [getattr(d.call, "permission", None) for d in route.dependant.dependencies]
        permissions += [
            getattr(sub.call, "permission", None) for d in route.dependant.dependencies for sub in d.dependencies
        ]
        found = [p for p in permissions if p]
        if route.path in ("/api/v1/auth/token", "/api/v1/auth/me"):
            continue
        assert found, f"{route.path} has no permission check (deny by default)"
        for method in route.methods:
            routes.append((method, route.path, found[0]))
    return routes


def test_every_patient_data_route_checks_a_permission_for_every_role(client: TestClient) -> None:
    study = upload(client, login(client, "clinician"))
    routes = _protected_routes(client)
    assert len(routes) >= 14
    tokens = {role: login(client, role) for role in ROLES}
    for method, path, permission in routes:
        url = path.replace("{study_uid}", study).replace("{report_id}", "none").replace("{turn_id}", "none")
        assert client.request(method, url).status_code == 401, (method, path)
        for role in ROLES:
            status = client.request(method, url, headers=tokens[role]).status_code
            if permission in PERMISSIONS[role]:
                assert status not in (401, 403), (method, path, role, status)
            else:
                assert status == 403, (method, path, role, status)


@pytest.mark.parametrize("header", ["Origin"])
def test_cors_is_closed_by_default(client: TestClient, header: str) -> None:
    response = client.options(
        "/api/v1/studies", headers={header: "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in response.headers
