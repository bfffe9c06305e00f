"""A running app (tiny random model, its own data folder) with one user per role."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings

PASSWORD = "a long enough passphrase"
ROLES = ("clinician", "researcher", "auditor", "admin")


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"model_preset": "tiny", "max_new_tokens": 12, "tts_engine": "auto"} | overrides
    return Settings(data_dir=data_dir, **values)


@pytest.fixture
def make_client(isolated_settings: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)``: a started app with users ``clinician``, ``researcher``, ``auditor``, ``admin``."""
    from app.core.db import open_database
    from app.main import create_app
    from app.services.auditing import Actor
    from app.services.users import add_user

    clients: list[TestClient] = []

    def make(ui: bool = False, **overrides: object) -> TestClient:
        settings = make_settings(isolated_settings, **overrides)
        engine = open_database(settings)
        for role in ROLES:
            with contextlib.suppress(ValueError):  # made by an earlier client of this test
                add_user(engine, role, role, PASSWORD, Actor("test", "cli"))
        engine.dispose()
        client = TestClient(create_app(settings, ui=ui))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def login(client: TestClient, role: str) -> dict[str, str]:
    response = client.post("/api/v1/auth/token", data={"username": role, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def ct_file() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def upload(client: TestClient, headers: dict[str, str], data: bytes | None = None) -> str:
    response = client.post("/api/v1/studies", files=[("files", ("scan.dcm", data or ct_file()))], headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["studies"][0]["study_uid"]


def audit_events(client: TestClient) -> list[dict[str, object]]:
    response = client.get("/api/v1/audit/events?limit=1000", headers=login(client, "auditor"))
    assert response.status_code == 200
    return response.json()


def write_study(
    folder: Path, *, slices: int = 3, accession: str = "ACC0001", name: str = "Doe^Jane", date: str = "20240105"
) -> tuple[str, list[Path]]:
    """A synthetic CT study of ``slices`` slices written into ``folder``: (its Study Instance UID, its files)."""
    from tests.medical_data.conftest import patient_series

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, dataset in enumerate(patient_series(name, "SYN-7731", accession, slices)):
        dataset.StudyDate = date
        dataset.BodyPartExamined = "CHEST"
        dataset.StudyDescription = "CT chest"
        path = folder / f"{index:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(dataset.StudyInstanceUID), paths
