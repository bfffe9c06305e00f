"""The UI's login, cookie, headers and Gradio's file route, probed as an attacker would."""

from __future__ import annotations

from tests.app.conftest import PASSWORD


def test_ui_sends_strangers_to_login_and_sets_a_safe_cookie(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(ui=True)
    page = {"accept": "text/html"}
    assert client.get("/ui/", headers=page, follow_redirects=False).headers["location"] == "/login"
    assert client.get("/ui/config").status_code == 401
    wrong = client.post("/login", data={"username": "clinician", "password": "nope"})
    assert wrong.status_code == 401 and "wrong user name or password" in wrong.text
    response = client.post("/login", data={"username": "clinician", "password": PASSWORD}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/ui/", headers=page).status_code == 200
    assert client.get("/ui/config").status_code == 200


def test_gradio_file_route_serves_nothing_outside_its_cache(make_client, isolated_settings) -> None:  # type: ignore[no-untyped-def]
    client = make_client(ui=True)
    client.post("/login", data={"username": "clinician", "password": PASSWORD})
    secret = isolated_settings / "secret_key"
    for probe in [
        "/ui/gradio_api/file=/etc/passwd",
        "/ui/gradio_api/file=../../../../../../etc/passwd",
        "/ui/gradio_api/file=..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/ui/gradio_api/file={secret}",
        f"/ui/gradio_api/file={isolated_settings}/omniclinic.db",
        "/ui/file=/etc/passwd",
    ]:
        response = client.get(probe)
        assert response.status_code in (403, 404), probe
        assert "root:" not in response.text and secret.read_text().strip() not in response.text


def test_security_headers_on_every_answer(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(ui=True)
    for path in ("/login", "/health", "/api/v1/studies"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
