"""Alembic environment for the app's tables; run through ``app.core.db.open_database``."""

from alembic import context

from app.models import AppBase

VERSION_TABLE = "app_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=AppBase.metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
