"""What an attacker tried: a stream left unread, oversized bodies before login, a forged cross-site
POST riding the UI cookie, an auditor reaching Gradio's file routes, long study lists in the audit."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from app.services.asking import in_background
from tests.app.conftest import PASSWORD, audit_events, login, upload


def test_an_unread_stream_does_not_hold_the_model(client: TestClient) -> None:
    """The reader takes one event and walks away; the answer is still finished, stored and the slot freed."""
    headers = login(client, "clinician")
    uid = upload(client, headers)
    from app.services.auditing import Actor

    events = in_background(client.app.state.asking.events(uid, Actor("clinician", "clinician"), text="x?"))
    next(events)  # and the reader keeps the stream open without reading on (as a stalled socket does)
    gate = client.app.state.assistant.gate
    for _ in range(200):
        if gate._admitted == 0:
            break
        time.sleep(0.05)
    assert gate._admitted == 0 and gate._slot.acquire(timeout=1)
    gate._slot.release()
    stored = [e for e in audit_events(client) if e["type_code"] == "110103" and e["action"] == "E"]
    assert stored and stored[-1]["details"]["output_sha256"]


def test_in_background_hands_errors_to_the_reader() -> None:
    def failing():  # type: ignore[no-untyped-def]
        yield 1
        raise KeyError("boom")

    reader = in_background(failing())
    assert next(reader) == 1
    try:
        next(reader)
    except KeyError:
        pass
    else:
        raise AssertionError("the error was lost")
    assert threading.active_count() < 50


def test_bodies_over_the_route_limit_are_413_before_any_login(client: TestClient) -> None:
    big = b"x" * (2 * 1024 * 1024)
    assert (
        client.post(
            "/api/v1/auth/token", content=big, headers={"content-type": "application/x-www-form-urlencoded"}
        ).status_code
        == 413
    )
    assert client.put("/api/v1/reports/x", content=big, headers={"content-type": "application/json"}).status_code == 413
    assert client.get("/health").status_code == 200


def test_the_ui_cookie_reads_but_never_writes_through_the_api(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(ui=True)
    client.post("/login", data={"username": "clinician", "password": PASSWORD})
    assert client.get("/api/v1/studies").status_code == 200  # a read with the cookie
    forged = client.post("/api/v1/studies", files=[("files", ("a.dcm", b"x"))])  # a cross-site form would do this
    assert forged.status_code == 401


def test_gradio_upload_and_file_routes_need_a_study_reader(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(ui=True)
    assert client.post("/ui/gradio_api/upload", files=[("files", ("a.dcm", b"x"))]).status_code == 401
    client.post("/login", data={"username": "auditor", "password": PASSWORD})
    assert client.post("/ui/gradio_api/upload", files=[("files", ("a.dcm", b"x"))]).status_code == 401
    assert client.get("/ui/gradio_api/file=/etc/hostname").status_code == 401


def test_every_listed_study_is_named_in_the_audit(client: TestClient) -> None:
    from app.services import auditing

    headers = login(client, "clinician")
    original = auditing.AUDIT_CHUNK
    auditing.AUDIT_CHUNK = 1
    try:
        first, second = upload(client, headers), None
        import io

        import pydicom
        from pydicom.uid import generate_uid

        from tests.app.conftest import ct_file

        other = pydicom.dcmread(io.BytesIO(ct_file()))
        other.StudyInstanceUID, other.SeriesInstanceUID, other.SOPInstanceUID = (generate_uid() for _ in range(3))
        buffer = io.BytesIO()
        other.save_as(buffer, enforce_file_format=True)
        second = upload(client, headers, buffer.getvalue())
        assert len(client.get("/api/v1/studies", headers=headers).json()) == 2
    finally:
        auditing.AUDIT_CHUNK = original
    queries = [e for e in audit_events(client) if e["type_code"] == "110112"]
    named = {entity["id"] for event in queries[-2:] for entity in event["entities"]}
    assert named == {first, second}
