"""Staff sign-in and sign-out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from bot.db import session_scope
from bot.staff import auth
from bot.web.staff_deps import (
    Staff,
    clear_session_cookie,
    client_ip,
    page,
    set_session_cookie,
    staff_router,
)

public = APIRouter(prefix="/staff")
router = staff_router()

MESSAGES = {
    "invalid": "That email and password don't match an active account.",
    "throttled": "Too many failed sign-ins. Wait 15 minutes, or ask an admin to help.",
}


def _safe_next(target: str) -> str:
    # Only back into the staff pages: never an open redirect to another site.
    if target.startswith("/staff") and not target.startswith("//") and "\\" not in target:
        return target
    return "/staff"


@public.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/staff") -> Response:
    """Show the sign-in form."""
    return page(request, "staff/login.html", {"next": _safe_next(next), "email": "", "error": None})


def _login(email: str, password: str, ip: str) -> auth.SignedIn | str:
    with session_scope() as session:
        try:
            return auth.login(session=session, email=email, password=password, ip=ip)
        except auth.LoginRefused as refused:
            # The failed attempt and its audit row are kept: the scope commits on return.
            return refused.reason


@public.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/staff",
) -> Response:
    """Check the credentials and start a new session (a new id every time)."""
    outcome = await run_in_threadpool(_login, email, password, client_ip(request))
    if isinstance(outcome, str):
        status = 429 if outcome == "throttled" else 401
        context = {"next": _safe_next(next), "email": email, "error": MESSAGES[outcome]}
        return page(request, "staff/login.html", context, status_code=status)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(response, outcome.token)
    return response


@router.post("/logout")
def logout(staff: Staff) -> Response:
    """End the session."""
    with session_scope() as session:
        auth.logout(session=session, principal=staff)
    response = RedirectResponse("/staff/login", status_code=303)
    clear_session_cookie(response)
    return response
