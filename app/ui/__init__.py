"""The clinician UI: Gradio mounted on the FastAPI app at ``/ui``, behind the app's own login page.

One login for API and UI: the UI's session cookie holds the same JWT the API issues, and Gradio's
``auth_dependency`` accepts a request only when that token names an active user. Gradio serves files
from its own cache only (no ``allowed_paths``), sends no analytics, and never makes a share link.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse

from app.core.config import Settings


def mount_ui(app: FastAPI, settings: Settings, info: Any) -> None:
    import gradio as gr

    from app.api.deps import actor_from_token
    from app.ui.blocks import CSS, build_blocks
    from app.ui.login import router

    app.include_router(router)

    def logged_in_user(request: Request) -> str | None:
        try:
            return actor_from_token(request, None, app.state).username
        except HTTPException:
            return None

    @app.middleware("http")
    async def login_first(request: Request, call_next: Any) -> Any:
        """The UI's page itself sends a browser without a valid login to the login page."""
        if (
            request.method == "GET"
            and request.url.path in ("/", "/ui", "/ui/")
            and "text/html" in request.headers.get("accept", "")
        ):
            from starlette.concurrency import run_in_threadpool

            user = await run_in_threadpool(logged_in_user, request)
            if user is None:
                return RedirectResponse("/login", status_code=303)
            if request.url.path == "/":
                return RedirectResponse("/ui/", status_code=303)
        return await call_next(request)

    gr.mount_gradio_app(
        app,
        build_blocks(app, info),
        path="/ui",
        auth_dependency=logged_in_user,
        allowed_paths=[],
        show_error=False,
        max_file_size=settings.max_upload_bytes,
        footer_links=[],
        ssr_mode=False,
        mcp_server=False,
        css=CSS,
    )
