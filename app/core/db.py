"""The one database bootstrap: the engine the app shares with ``audit`` (SQLite in the data folder by
default, PostgreSQL for deployments), with the audit tables and the app's tables migrated.

``open_database`` is what the web app's lifespan, ``serve`` and every command that records use.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from sqlalchemy import Engine, text

from app.core.config import Settings
from audit.store import create_audit_engine, run_migrations, upgrade_database


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or migrated; the message names the kind of failure, never the URL."""


def make_engine(database_url: str) -> Engine:
    """The app's engine: configured by ``audit`` so that audit appends serialize correctly."""
    return create_audit_engine(database_url)


def upgrade_app_tables(engine: Engine) -> None:
    """Create or migrate the app's tables to the latest revision (Alembic, own version table)."""
    run_migrations(engine, str(files("app").joinpath("migrations")))


def open_database(settings: Settings) -> Engine:
    """The data folder made, the engine made and reachable, the audit and app tables migrated.

    Raises:
        SettingsError: the data folder is unusable.
        DatabaseUnavailable: the server cannot be reached, or a migration cannot run.
    """
    settings.prepare_data_dir()
    engine = make_engine(settings.database_url.get_secret_value())
    ok, reason = database_ok(engine)
    if not ok:
        engine.dispose()
        raise DatabaseUnavailable(f"cannot reach the database ({reason}); check OMNICLINIC_DATABASE_URL")
    try:
        with migration_lock(engine, settings.data_dir):
            upgrade_database(engine)
            upgrade_app_tables(engine)
    except Exception as exc:  # a migration that cannot run: say which kind of failure, no traceback
        engine.dispose()
        raise DatabaseUnavailable(f"cannot prepare the database tables ({type(exc).__name__})") from None
    return engine


MIGRATION_LOCK_KEY = 0x6F6D6E69  # "omni": PostgreSQL advisory lock held while migrating


@contextmanager
def migration_lock(engine: Engine, data_dir: Path) -> Iterator[None]:
    """One migrating process at a time: processes started together (``draft-reports --workers``, the
    ranks of a ``torchrun`` launch) would otherwise race to create the same tables. A lock file in the
    data folder serializes one machine; on PostgreSQL an advisory lock serializes every machine."""
    with open(data_dir / ".migrate.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if engine.dialect.name == "postgresql":
                with engine.connect() as connection:
                    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    try:
                        yield
                    finally:
                        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                        connection.commit()
            else:
                yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def database_ok(engine: Engine) -> tuple[bool, str]:
    """Run ``SELECT 1``; return (ok, a short reason without credentials)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not reachable" to a health check
        return False, type(exc).__name__
    return True, "ok"
