"""The UI's login page: ``GET /login`` shows a form, ``POST /login`` sets the session cookie (the same JWT
the API issues, HttpOnly, SameSite=Strict), ``POST /logout`` clears it. No outside resources."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from app.api.deps import SESSION_COOKIE
from app.api.routes.auth import login

router = APIRouter(include_in_schema=False)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>omniclinic: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; display: flex; justify-content: center; }}
main {{ background: white; margin-top: 10vh; padding: 2em 2.5em; border-radius: 8px; width: 22em;
       box-shadow: 0 1px 4px rgba(0,0,0,.15); }}
label {{ display: block; margin-top: 1em; }} input {{ width: 100%; padding: .5em; box-sizing: border-box; }}
button {{ margin-top: 1.5em; padding: .6em 1.2em; }} .error {{ color: #b00020; }}
.note {{ color: #555; font-size: .85em; margin-top: 1.5em; }}
</style></head>
<body><main>
<h1>omniclinic</h1>
<p class="error" role="alert">{message}</p>
<form method="post" action="/login">
<label for="username">User name</label><input id="username" name="username" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="login">Log in</button>
</form>
<p class="note">Every access to patient data is recorded. omniclinic is not a medical device: its answers
and drafts are for a qualified clinician to check.</p>
</main></body></html>"""


def page(message: str = "", status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        PAGE.format(message=html.escape(message)), status_code=status, headers={"Cache-Control": "no-store"}
    )


@router.get("/login")
def login_page() -> HTMLResponse:
    return page()


@router.post("/login", response_model=None)
def login_form(
    request: Request,
    username: Annotated[str, Form(max_length=128)],
    password: Annotated[str, Form(max_length=1024)],
) -> HTMLResponse | RedirectResponse:
    try:
        token, _ = login(request, username, password)
    except HTTPException as exc:
        return page(str(exc.detail), exc.status_code)
    settings = request.app.state.settings
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.token_minutes * 60,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        path="/",
    )
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
