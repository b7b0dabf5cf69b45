"""Fixtures for the staff inbox: the real app on the demo clinic, and signed-in clients."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from bot.staff.auth import session_id_for
from bot.staff.models import StaffSession
from bot.web.staff_deps import COOKIE_NAME
from tests.channels.conftest import AppHarness, make_app  # noqa: F401  (fixtures shared with channel tests)

DEMO_STAFF_EMAIL = "sam@riverside.example"  # role staff
DEMO_CLINICIAN_EMAIL = "priya@riverside.example"  # role clinician


def sign_in(client: TestClient, email: str = DEMO_ADMIN_EMAIL, password: str = DEMO_ADMIN_PASSWORD) -> str:
    """Sign the client in and return the session's CSRF token."""
    response = client.post("/staff/login", data={"email": email, "password": password}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return csrf_for(client)


def csrf_for(client: TestClient) -> str:
    """Return the CSRF token of the client's current session."""
    token = client.cookies.get(COOKIE_NAME)
    assert token, "not signed in"
    with session_scope() as session:
        csrf = session.scalars(select(StaffSession.csrf_token).where(StaffSession.id == session_id_for(token))).one()
    return csrf
