"""Alembic environment for the audit tables; run through ``audit.store.upgrade_database``."""

from alembic import context

from audit.models import AuditBase

VERSION_TABLE = "audit_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=AuditBase.metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
