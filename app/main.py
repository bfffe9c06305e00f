"""The FastAPI application: ``create_app(settings)`` builds it, ``lifespan`` owns its resources."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.routes import health, root
from app.core.config import Settings, get_settings
from app.core.db import make_engine
from app.core.privacy import protect_patient_data_in_logs
from audit import create_checkpoint, load_or_create_signing_key, unit_of_work, upgrade_database

logger = logging.getLogger("omniclinic")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings default to the environment's; tests pass their own."""
    settings = settings or get_settings()
    protect_patient_data_in_logs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.prepare_data_dir()
        settings.resolve_secret_key()  # fail at start, not at the first login, if the key is unusable
        app.state.settings = settings
        app.state.engine = make_engine(settings.database_url.get_secret_value())
        upgrade_database(app.state.engine)
        signing_key = load_or_create_signing_key(settings.audit_key_path)
        logger.info("omniclinic %s: %s", __version__, root.NOT_YET_AVAILABLE)
        try:
            yield
        finally:
            with unit_of_work(app.state.engine) as session:  # sign the tree head this run leaves behind
                create_checkpoint(session=session, signing_key=signing_key)
            app.state.engine.dispose()

    app = FastAPI(title="omniclinic", version=__version__, lifespan=lifespan)
    app.include_router(root.router)
    app.include_router(health.router)
    return app
