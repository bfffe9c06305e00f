"""Audit logs on SQLite (a file per test) and on a real PostgreSQL server (a schema per test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, text

from audit import create_audit_engine, upgrade_database

POSTGRES_URL = os.environ.get("OMNICLINIC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
WORKER = Path(__file__).with_name("append_worker.py")


def postgres_reachable() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception:
        return False
    return True


class LogTarget:
    """Where a test's audit log lives, in a form a subprocess can reopen."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url, self.schema = url, schema

    def engine(self) -> Engine:
        options = {"connect_args": {"options": f"-csearch_path={self.schema}"}} if self.schema else {}
        return create_audit_engine(self.url, **options)

    def worker_args(self) -> list[str]:
        return ["--url", self.url] + (["--schema", self.schema] if self.schema else [])


@pytest.fixture
def sqlite_target(tmp_path: Path) -> LogTarget:
    return LogTarget(f"sqlite:///{tmp_path / 'audit.db'}")


@pytest.fixture
def postgres_target(require_service: Callable[[bool, str], None]) -> Iterator[LogTarget]:
    require_service(
        postgres_reachable(), "PostgreSQL is not reachable at 127.0.0.1:5432 (OMNICLINIC_TEST_POSTGRES_URL)"
    )
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield LogTarget(POSTGRES_URL, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def target(request: pytest.FixtureRequest) -> LogTarget:
    return request.getfixturevalue(f"{request.param}_target")


@pytest.fixture
def engine(target: LogTarget) -> Iterator[Engine]:
    engine = target.engine()
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(sqlite_target: LogTarget) -> Iterator[Engine]:
    engine = sqlite_target.engine()
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
