"""Engines and units of work for the audit log, and its schema migrations.

Appends are serialized in the database, so several app workers never fork the chain:
- PostgreSQL: a transaction-scoped advisory lock (``pg_advisory_xact_lock``) around each append;
- SQLite: a unit of work begins with ``BEGIN IMMEDIATE`` (the single write lock), WAL journaling,
  ``synchronous=FULL`` so that an acknowledged event survives a crash or power cut.
The primary key on ``seq`` and the unique ``prev_hash`` refuse a fork even if a caller skips both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

IMMEDIATE = "omniclinic_immediate"
ADVISORY_LOCK_KEY = 0x0A0D17  # any constant; shared by every process appending to this database
BUSY_TIMEOUT_S = 30


def create_audit_engine(url: str, **kwargs: object) -> Engine:
    """An engine configured for the audit log (and usable by the rest of the app)."""
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        kwargs.setdefault("connect_args", {"timeout": BUSY_TIMEOUT_S})
    else:
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)  # type: ignore[arg-type]
    if is_sqlite:
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own is deferred)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        immediate = connection.get_execution_options().get(IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """A session in one transaction that may append to the log: commits on success, rolls back on error.

    Read patient data and record its audit event inside the same unit of work: if the event cannot
    be written, nothing commits and the caller's access fails (fail closed).
    """
    with Session(engine.execution_options(**{IMMEDIATE: True})) as session, session.begin():
        yield session


def lock_log(session: Session) -> None:
    """Serialize appenders for the rest of this transaction (PostgreSQL; SQLite holds its write lock)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})


def schema_is_current(engine: Engine) -> bool:
    """Whether the audit tables exist at the latest revision; reads only (nothing is created or migrated)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    config = Config()
    config.set_main_option("script_location", str(files("audit").joinpath("migrations")))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        if not inspect(connection).has_table("audit_alembic_version"):
            return False
        current = connection.execute(text("SELECT version_num FROM audit_alembic_version")).scalars().all()
    return current == [head]


def upgrade_database(engine: Engine) -> None:
    """Create or migrate the audit tables to the latest revision (Alembic, own version table)."""
    run_migrations(engine, str(files("audit").joinpath("migrations")))


def run_migrations(engine: Engine, script_location: str) -> None:
    """Upgrade to head the Alembic history at ``script_location`` (its env names its version table)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
