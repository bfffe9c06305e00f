from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.db import make_engine
from app.main import create_app


def test_health_reports_database_and_version(isolated_settings: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings, model_preset="tiny"))) as client:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["version"]


def test_root_names_the_app_and_its_untrained_model_plainly(isolated_settings: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings, model_preset="tiny"))) as client:
        body = client.get("/").json()
    assert "/ui/ (clinician web app)" in body["available"]
    assert body["model"] == "tiny (random weights)"
    assert "not based on the image" in body["model_caution"]
    assert "not a medical device" in body["medical_device"]


def test_health_is_503_when_database_is_lost(isolated_settings: Path, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings, model_preset="tiny"))) as client:
        healthy_engine = client.app.state.engine
        client.app.state.engine = make_engine(f"sqlite:///{tmp_path}/missing/dir/x.db")
        response = client.get("/health")
        client.app.state.engine = healthy_engine
    assert response.json()["status"] == "unavailable"
    assert str(tmp_path) not in response.text  # no paths or credentials leak through the health check


def test_startup_creates_secret_key(isolated_settings: Path) -> None:
    with TestClient(create_app(Settings(data_dir=isolated_settings, model_preset="tiny"))):
        pass
    assert (isolated_settings / "secret_key").is_file()


def test_startup_creates_the_audit_tables_and_signing_key(isolated_settings: Path) -> None:
    from sqlalchemy import inspect

    with TestClient(create_app(Settings(data_dir=isolated_settings, model_preset="tiny"))) as client:
        tables = set(inspect(client.app.state.engine).get_table_names())
    assert {"audit_events", "audit_checkpoints", "audit_alembic_version"} <= tables
    assert (isolated_settings / "audit_signing_key.pem").stat().st_mode & 0o077 == 0
    assert (isolated_settings / "audit_signing_key.pub.pem").is_file()
