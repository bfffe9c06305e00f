"""The database engine the app shares with ``audit`` (SQLite in the data folder by default)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event, text


def make_engine(database_url: str) -> Engine:
    """Create the engine; SQLite gets WAL journaling and a busy timeout so several workers can share it."""
    is_sqlite = database_url.startswith("sqlite")
    engine = create_engine(
        database_url,
        pool_pre_ping=not is_sqlite,
        connect_args={"timeout": 30} if is_sqlite else {},
    )
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def database_ok(engine: Engine) -> tuple[bool, str]:
    """Run ``SELECT 1``; return (ok, a short reason without credentials)."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not reachable" to a health check
        return False, type(exc).__name__
    return True, "ok"
