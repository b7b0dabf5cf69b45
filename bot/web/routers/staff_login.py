"""Staff sign-in and sign-out, and each person's own account page (their password)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from bot.config import get_settings
from bot.db import session_scope
from bot.staff import auth, users
from bot.web.origin import origin_matches
from bot.web.staff_deps import (
    COOKIE_NAME,
    Staff,
    clear_session_cookie,
    client_ip,
    page,
    set_session_cookie,
    staff_router,
)

log = logging.getLogger(__name__)

public = APIRouter(prefix="/staff")
router = staff_router()

MESSAGES = {
    "invalid": "That email and password don't match an active account.",
    "throttled": "Too many failed sign-ins. Wait 15 minutes, or ask an admin to help.",
    "cross_site": "This sign-in form was sent from another website. Open the staff pages directly and sign in there.",
    "demo_password": (
        "This account still has the demo password, which the README publishes, and this server is reachable by "
        "patients: it cannot sign in with it. An admin sets a real one on the Users page, or on the server with "
        "`clinicbot staff password --email EMAIL --password-stdin`."
    ),
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


def _login(email: str, password: str, ip: str, replaced: str) -> auth.SignedIn | str:
    with session_scope() as session:
        try:
            signed_in = auth.login(session=session, email=email, password=password, ip=ip)
        except auth.LoginRefused as refused:
            # The failed attempt and its audit row are kept: the scope commits on return.
            return refused.reason
        # The session this browser had (another account's, or an older one) ends: one browser, one session.
        auth.end_session(session=session, token=replaced, reason="replaced")
        return signed_in


@public.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/staff",
) -> Response:
    """Check the credentials and start a new session (a new id every time)."""
    if origin_matches(request, get_settings()) is False:
        # Login CSRF: another site's form would sign this browser into an account of its choosing, and
        # what the person then did would be recorded as that account's. Browsers name the form's origin.
        log.info("staff sign-in refused: the form came from another site")
        context = {"next": _safe_next(next), "email": "", "error": MESSAGES["cross_site"]}
        return page(request, "staff/login.html", context, status_code=403)
    replaced = request.cookies.get(COOKIE_NAME, "")
    outcome = await run_in_threadpool(_login, email, password, client_ip(request), replaced)
    if isinstance(outcome, str):
        status = {"throttled": 429, "demo_password": 403}.get(outcome, 401)
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


# -- one's own account ------------------------------------------------------------------------------


def _account_page(request: Request, *, errors: dict[str, str] | None = None, done: bool = False,
                  status_code: int = 200) -> Response:  # fmt: skip
    context = {"nav": "account", "errors": errors or {}, "done": done}
    return page(request, "staff/account.html", context, status_code=status_code)


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, staff: Staff, done: str = "") -> Response:
    """Show the signed-in person's account, with the form to change their password."""
    return _account_page(request, done=done == "password")


@router.post("/account/password", response_class=HTMLResponse)
def change_password(
    request: Request,
    staff: Staff,
    current: Annotated[str, Form(max_length=1024)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    confirm: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Change one's own password: the current one is asked for; every other session of the account ends."""
    with session_scope() as session:
        try:
            users.do_change_own_password(session=session, staff_id=staff.staff_id, session_id=staff.session_id,
                                         current=current, password=password, confirm=confirm,
                                         ip=client_ip(request))  # fmt: skip
        except users.UserError as error:
            # The refusal's audit row (and a wrong password's failed attempt) are kept: the scope commits.
            errors, status = error.problems, 429 if isinstance(error, users.Throttled) else 400
        else:
            errors, status = {}, 200
    if errors:
        return _account_page(request, errors=errors, status_code=status)
    return RedirectResponse("/staff/account?done=password", status_code=303)
