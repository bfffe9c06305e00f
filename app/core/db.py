"""The database engine the app shares with ``audit`` (SQLite in the data folder by default)."""

from __future__ import annotations

from sqlalchemy import Engine, text

from app.core.config import Settings
from audit.store import create_audit_engine, upgrade_database


def make_engine(database_url: str) -> Engine:
    """The app's engine: configured by ``audit`` so that audit appends serialize correctly."""
    return create_audit_engine(database_url)


def open_database(settings: Settings) -> Engine:
    """The data folder made, the engine made, the audit tables migrated: ready to record events."""
    settings.prepare_data_dir()
    engine = make_engine(settings.database_url.get_secret_value())
    upgrade_database(engine)
    return engine


def database_ok(engine: Engine) -> tuple[bool, str]:
    """Run ``SELECT 1``; return (ok, a short reason without credentials)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not reachable" to a health check
        return False, type(exc).__name__
    return True, "ok"
