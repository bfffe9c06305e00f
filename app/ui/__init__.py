"""The clinician UI: Gradio mounted on the FastAPI app at ``/ui``, behind the app's own login page.

One login for API and UI: the UI's session cookie holds the same JWT the API issues, and Gradio's
``auth_dependency`` accepts a request only when that token names an active user. Gradio serves files
from its own cache only (no ``allowed_paths``), sends no analytics, and never makes a share link.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse

from app.core.config import Settings

UI_CACHE = "ui-cache"
PATIENT_DATA_PREFIXES = (
    "/ui/gradio_api/file=",
    "/ui/gradio_api/stream/",
    "/ui/gradio_api/process_recording",
    "/ui/gradio_api/upload",
)


def mount_ui(app: FastAPI, settings: Settings, info: Any) -> None:
    """Mount the UI. Gradio's file cache (uploads, recordings, rendered slices, spoken answers: patient
    data) lives in the data folder (0700), is emptied of files older than ten minutes, and is served
    only to a logged-in user whose role reads studies."""
    cache = settings.data_dir / UI_CACHE
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # read when the Blocks are built, below

    import gradio as gr

    from app.api.deps import actor_from_token
    from app.core.security import allowed
    from app.ui.blocks import CSS, build_blocks
    from app.ui.login import router

    app.include_router(router)

    def logged_in_user(request: Request) -> str | None:
        try:
            return actor_from_token(request, None, app.state, cookie=True).username
        except HTTPException:
            return None

    def reader(request: Request) -> bool:
        try:
            return allowed(actor_from_token(request, None, app.state, cookie=True).role, "studies:read")
        except HTTPException:
            return False

    @app.middleware("http")
    async def login_first(request: Request, call_next: Any) -> Any:
        """The UI's page sends a browser without a valid login to the login page; Gradio's routes that
        carry patient data (uploads, files, streamed audio, recordings) answer only a logged-in user
        whose role reads studies."""
        from starlette.concurrency import run_in_threadpool

        path = request.url.path
        if path.startswith(PATIENT_DATA_PREFIXES) and not await run_in_threadpool(reader, request):
            return JSONResponse({"detail": "not logged in, or the role may not read studies"}, status_code=401)
        if (
            request.method == "GET"
            and path in ("/", "/ui", "/ui/")
            and "text/html" in request.headers.get("accept", "")
        ):
            user = await run_in_threadpool(logged_in_user, request)
            if user is None:
                return RedirectResponse("/login", status_code=303)
            if path == "/":
                return RedirectResponse("/ui/", status_code=303)
        return await call_next(request)

    blocks = build_blocks(app, info)
    blocks.queue(max_size=4 * (settings.queue_depth + 1))  # beyond it the UI says busy, as the API's 503
    gr.mount_gradio_app(
        app,
        blocks,
        path="/ui",
        auth_dependency=logged_in_user,
        allowed_paths=[],
        show_error=False,
        max_file_size=settings.max_upload_bytes,
        footer_links=[],
        ssr_mode=False,
        mcp_server=False,
        run_history=False,  # no questions, answers or images kept in the browser of a shared workstation
        enable_monitoring=False,
        css=CSS,
    )
