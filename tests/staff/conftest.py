"""Fixtures for the staff inbox: the real app on the demo clinic, and signed-in clients."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.staff.auth import session_id_for
from bot.staff.models import StaffSession, StaffUser
from bot.staff.passwords import hash_password
from bot.web.staff_deps import COOKIE_NAME
from tests.channels.conftest import AppHarness, make_app  # noqa: F401  (fixtures shared with channel tests)

DEMO_STAFF_EMAIL = "sam@riverside.example"  # role staff
DEMO_CLINICIAN_EMAIL = "priya@riverside.example"  # role clinician
# What sign_in gives a demo account first: a server with SMS or Telegram on refuses the published demo password.
TEST_PASSWORD = "staff-test-password"  # noqa: S105
_TEST_HASH = hash_password(TEST_PASSWORD)  # hashed once for the run


def give_test_password(email: str) -> None:
    """Give a demo account TEST_PASSWORD (as `clinicbot staff password` would, without the argon2 cost each time)."""
    with session_scope() as session:
        session.execute(update(StaffUser).where(StaffUser.email == email).values(password_hash=_TEST_HASH))


def sign_in(client: TestClient, email: str = DEMO_ADMIN_EMAIL, password: str | None = None) -> str:
    """Sign the client in and return the session's CSRF token; without `password`, with TEST_PASSWORD."""
    if password is None:
        give_test_password(email)
        password = TEST_PASSWORD
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
