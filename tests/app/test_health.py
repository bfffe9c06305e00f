from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app


def test_health_reports_database_and_version(isolated_settings: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings))) as client:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["version"]


def test_root_says_plainly_what_is_not_there_yet(isolated_settings: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings))) as client:
        body = client.get("/").json()
    assert body["available"] == ["GET /health"]
    assert "not built yet" in body["not_yet_available"]
    assert "not a medical device" in body["medical_device"]


def test_health_is_503_when_database_unreachable(isolated_settings: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=isolated_settings, database_url=f"sqlite:///{tmp_path}/missing/dir/x.db")
    with TestClient(create_app(settings)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert str(tmp_path) not in response.text  # no paths or credentials leak through the health check


def test_startup_creates_secret_key(isolated_settings: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings))):
        pass
    assert (isolated_settings / "secret_key").is_file()
