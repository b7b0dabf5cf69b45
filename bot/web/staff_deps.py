"""Staff pages' guards: the session cookie, CSRF tokens and roles, denying by default.

Every staff route is declared on `staff_router()`, whose router-level dependency authenticates the
request and checks the CSRF token on anything that changes state. Roles are checked per route with
`require_role(...)`; a route that needs none still requires a signed-in staff member.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from bot.config import get_settings
from bot.db import session_scope
from bot.staff import auth
from bot.staff.auth import Principal
from bot.staff.models import Role
from bot.web.paths import TEMPLATES_DIR, asset_version

COOKIE_NAME = "clinicbot_staff"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.globals["asset_version"] = asset_version


class LoginRequired(Exception):
    """The request has no valid staff session."""


def client_ip(request: Request) -> str:
    """Return the client's address as the server saw it (a proxy's own address behind one)."""
    return request.client.host if request.client else "unknown"


def set_session_cookie(response: Response, token: str) -> None:
    """Set the session cookie: HttpOnly, SameSite=Lax, Secure when the public URL is https."""
    secure = get_settings().public_url_is_https
    response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="lax", secure=secure, path="/staff")


def clear_session_cookie(response: Response) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE_NAME, path="/staff")


# Sent by the inbox's script on the refreshes a change event triggers (bot/web/static/staff/inbox.js).
LIVE_REFRESH_HEADER = "x-live-refresh"


def is_live_refresh(request: Request) -> bool:
    """Return whether the inbox's script fetched this on its own, for a change event (not a person's click)."""
    return request.headers.get(LIVE_REFRESH_HEADER) == "1"


def _is_stream(request: Request) -> bool:
    # Live updates keep a page current without the person doing anything: they must not keep the session
    # alive. That is the event stream, and the fragments it makes the page fetch (the queue, a transcript).
    return request.url.path.endswith("/events") or is_live_refresh(request)


def current_staff(request: Request) -> Principal:
    """Return the signed-in staff member, or refuse the request."""
    cached = getattr(request.state, "staff", None)
    if cached is not None:
        return cached
    token = request.cookies.get(COOKIE_NAME, "")
    with session_scope() as session:
        principal = auth.authenticate(session=session, token=token, touch=not _is_stream(request))
    if principal is None:
        raise LoginRequired()
    request.state.staff = principal
    return principal


async def csrf_protect(request: Request, staff: Annotated[Principal, Depends(current_staff)]) -> Principal:
    """Refuse a state-changing request whose CSRF token does not match the session's."""
    if request.method in SAFE_METHODS:
        return staff
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD, "")
        sent = value if isinstance(value, str) else ""
    if not sent or not hmac.compare_digest(sent.encode(), staff.csrf_token.encode()):
        raise HTTPException(
            status_code=403,
            detail="The form's security token is missing or out of date. Reload the page and try again.",
        )
    return staff


def require_role(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """Return a dependency that admits only these roles."""

    async def dependency(staff: Annotated[Principal, Depends(csrf_protect)]) -> Principal:
        if staff.role not in roles:
            raise HTTPException(status_code=403, detail="Your role does not allow this.")
        return staff

    return dependency


def staff_router() -> APIRouter:
    """Return a router under /staff whose every route requires a session (and CSRF on changes)."""
    return APIRouter(prefix="/staff", dependencies=[Depends(csrf_protect)])


Staff = Annotated[Principal, Depends(csrf_protect)]
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]


def _wants_html(request: Request) -> bool:
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def install_handlers(app: FastAPI) -> None:
    """Answer a missing session with the sign-in page (browsers) or 401, and staff 403s with a page."""

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_html(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/staff/login?next={quote(target, safe='')}", status_code=303)
        response: Response = JSONResponse({"detail": "Sign in first."}, status_code=401)
        clear_session_cookie(response)
        return response

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/staff") and "text/html" in request.headers.get("accept", ""):
            return templates.TemplateResponse(
                request, "staff/error.html", {"status": exc.status_code, "detail": exc.detail, "staff": None},
                status_code=exc.status_code, headers=exc.headers,
            )  # fmt: skip
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def page(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    """Render a staff page with the signed-in staff member and their CSRF token available."""
    staff = getattr(request.state, "staff", None)
    return templates.TemplateResponse(
        request, name, {"staff": staff, "csrf_token": staff.csrf_token if staff else "", **context},
        status_code=status_code,
    )  # fmt: skip
