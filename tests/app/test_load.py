"""Under load on loopback: 30 clients asking text questions at once get answers or the documented 503,
never another 5xx, and the audit trail holds exactly one model-call event per answered question."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import PASSWORD, ct_file, make_settings

CLIENTS, SECONDS = 30, 15


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration
def test_thirty_clients_get_answers_or_503_and_one_audit_event_each(isolated_settings: Path) -> None:
    import uvicorn

    from app.core.db import open_database
    from app.main import create_app
    from app.services.auditing import Actor
    from app.services.users import add_user

    settings = make_settings(isolated_settings, queue_depth=4, max_new_tokens=8, tts_engine="espeak")
    engine = open_database(settings)
    add_user(engine, "clinician", "clinician", PASSWORD, Actor("test", "cli"))
    add_user(engine, "auditor", "auditor", PASSWORD, Actor("test", "cli"))
    engine.dispose()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, ui=False), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "clinician", "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        study = httpx.post(
            f"{base}/api/v1/studies", files=[("files", ("a.dcm", ct_file()))], headers=headers, timeout=60
        ).json()["studies"][0]["study_uid"]
        statuses: Counter[int] = Counter()
        retry_after: list[str] = []
        lock = threading.Lock()
        stop = time.monotonic() + SECONDS

        def client() -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=120) as session:
                while time.monotonic() < stop:
                    response = session.post(
                        f"/api/v1/studies/{study}/ask", data={"text": "Any effusion?", "speak": "false"}
                    )
                    with lock:
                        statuses[response.status_code] += 1
                        if response.status_code == 503:
                            retry_after.append(response.headers.get("Retry-After", ""))
                    if response.status_code == 503:
                        time.sleep(0.2)

        workers = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        auditor = httpx.post(f"{base}/api/v1/auth/token", data={"username": "auditor", "password": PASSWORD}).json()
        events = httpx.get(
            f"{base}/api/v1/audit/events?limit=1000", headers={"Authorization": f"Bearer {auditor['access_token']}"}
        ).json()
    finally:
        server.should_exit = True
        thread.join(30)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0 and statuses[503] > 0, statuses  # the queue did fill, and answers still came
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after)
    calls = [e for e in events if e["type_code"] == "110103" and e["action"] == "E"]
    assert len(calls) == statuses[200]
