"""The FastAPI application: ``create_app(settings)`` builds it, ``lifespan`` owns its resources.

The API lives under ``/api/v1`` (OpenAPI at ``/docs``), the clinician UI (Gradio) under ``/ui``, its
login page at ``/login``; one login (a JWT, as a bearer token or the UI's HttpOnly cookie) serves both.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.api.routes import ask, audit_log, auth, health, jobs, reports, root, studies
from app.core.config import Settings, get_settings
from app.core.db import open_database
from app.core.middleware import BodyLimit, RequestContext
from app.core.privacy import protect_patient_data_in_logs
from app.core.security import LoginThrottle
from app.services.assistant import AnswerFailed, Assistant, Busy
from app.services.audit_log import checkpoint_if_due, sign_checkpoint
from app.services.jobs import JobService
from audit import load_or_create_signing_key

logger = logging.getLogger("omniclinic")


def create_app(settings: Settings | None = None, *, assistant: Assistant | None = None, ui: bool = True) -> FastAPI:
    """Build the app. Settings default to the environment's; tests pass their own (and may share an
    already loaded ``assistant`` between apps)."""
    from app.services.asking import AskService
    from app.services.reports import ReportService
    from app.services.studies import StudyStore

    settings = settings or get_settings()
    protect_patient_data_in_logs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.prepare_data_dir()
        settings.resolve_secret_key()  # fail at start, not at the first login, if the key is unusable
        app.state.settings = settings
        app.state.engine = open_database(settings)
        load_or_create_signing_key(settings.audit_key_path)  # fail at start if the key is unusable
        shutil.rmtree(settings.data_dir / "uploads", ignore_errors=True)  # a crash's leftovers: raw files
        app.state.assistant = assistant or Assistant(settings)
        app.state.studies = StudyStore(settings, app.state.engine)
        app.state.asking = AskService(settings, app.state.engine, app.state.studies, app.state.assistant)
        app.state.reports = ReportService(app.state.engine, app.state.studies, app.state.assistant)
        app.state.jobs = JobService(settings, app.state.engine, app.state.studies, app.state.assistant)
        app.state.login_throttle = LoginThrottle(settings.login_attempts, settings.login_window_s)
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(app.state.assistant.load)  # the first question does not wait for it
        logger.info("omniclinic %s serving %s", __version__, app.state.assistant.info.name)
        app.state.jobs.start()
        signer = asyncio.create_task(_sign_checkpoints(app))
        try:
            yield
        finally:
            signer.cancel()
            app.state.jobs.stop()
            try:
                sign_checkpoint(app.state.engine, settings)  # the tree head this run leaves behind
            except Exception as exc:  # a refused checkpoint is verify's to report; shutting down goes on
                logger.error("the closing audit checkpoint was not signed (%s)", type(exc).__name__)
            finally:
                app.state.engine.dispose()

    app = FastAPI(title="omniclinic", version=__version__, lifespan=lifespan)
    for router in (
        root.router,
        health.router,
        auth.router,
        studies.router,
        ask.router,
        reports.router,
        jobs.router,
        audit_log.router,
    ):
        app.include_router(router)
    _add_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization"],
        )
    if ui:
        from app.services.assistant import describe_model
        from app.ui import mount_ui

        mount_ui(app, settings, assistant.info if assistant else describe_model(settings))
    app.add_middleware(BodyLimit, limit_for=body_limits(settings))
    app.add_middleware(RequestContext)  # outermost: every answer, a redirect or a 413 too, gets its headers
    return app


CHECKPOINT_POLL_S = 30.0
SMALL_BODY = 1024 * 1024
QUESTION_BODY = 100 * 1024 * 1024  # a spoken question: medical_data.audio's own file limit


def body_limits(settings: Settings):  # type: ignore[no-untyped-def]
    """The largest request body each route takes: uploads the settings' cap, spoken questions the
    audio limit, everything else 1 MiB."""

    def limit_for(method: str, path: str) -> int:
        if method == "POST" and (path == "/api/v1/studies" or path.startswith("/ui/gradio_api/upload")):
            return settings.max_upload_bytes
        if method == "POST" and path.startswith("/api/v1/studies/") and "/ask" in path:
            return min(QUESTION_BODY, settings.max_upload_bytes)
        return SMALL_BODY

    return limit_for


async def _sign_checkpoints(app: FastAPI) -> None:
    """Sign audit checkpoints while serving, as often as the settings ask (events or age), so a crash
    never leaves a long unsigned tail."""
    from starlette.concurrency import run_in_threadpool

    while True:
        await asyncio.sleep(CHECKPOINT_POLL_S)
        try:
            await run_in_threadpool(checkpoint_if_due, app.state.engine, app.state.settings)
        except Exception as exc:  # logged and retried: verify reports a log that will not check out
            logger.error("an audit checkpoint was not signed (%s)", type(exc).__name__)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Typed errors become statuses with a reason; never a traceback, never a value from a file."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.services.asking import AskRejected
    from app.services.jobs import JobConflict, JobRejected
    from app.services.reports import ReportConflict
    from app.services.studies import StudyNotFound, UploadRejected
    from audit import AuditError
    from medical_data.errors import MedicalDataError

    @app.exception_handler(StudyNotFound)
    async def not_found(_: Request, exc: StudyNotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(UploadRejected)
    async def upload_rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        return _error(exc.status, exc.reason)

    @app.exception_handler(AskRejected)
    async def ask_rejected(_: Request, exc: AskRejected) -> JSONResponse:
        return _error(exc.status, exc.reason)

    @app.exception_handler(MedicalDataError)
    async def unreadable(_: Request, exc: MedicalDataError) -> JSONResponse:
        return _error(422, f"the study cannot be read: {exc.reason}")

    @app.exception_handler(ReportConflict)
    @app.exception_handler(JobConflict)
    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(JobRejected)
    async def job_rejected(_: Request, exc: JobRejected) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(Busy)
    async def busy(_: Request, exc: Busy) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(AnswerFailed)
    async def answer_failed(_: Request, exc: AnswerFailed) -> JSONResponse:
        return _error(422, f"the model could not answer: {exc}")

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return _error(422, "a value in the request is not usable")

    @app.exception_handler(AuditError)
    @app.exception_handler(SQLAlchemyError)
    async def not_recorded(_: Request, exc: Exception) -> JSONResponse:
        logger.error("the database refused a write (%s); nothing was returned", type(exc).__name__)
        return _error(503, "the access could not be recorded in the audit trail, so nothing was returned")
