"""Staff sign-in: argon2id, server-side sessions, idle timeout, throttling, CSRF and sign-out."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select

from bot.db import session_scope, utcnow
from bot.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from bot.staff import auth
from bot.staff.models import AuditEvent, LoginAttempt, StaffSession, StaffUser
from bot.web.staff_deps import COOKIE_NAME
from tests.staff.conftest import DEMO_STAFF_EMAIL, TEST_PASSWORD, csrf_for, give_test_password, sign_in


def _audit(action: str) -> list[tuple[str | None, str]]:
    with session_scope() as session:
        rows = session.execute(
            select(AuditEvent.actor_id, AuditEvent.outcome).where(AuditEvent.action == action).order_by(AuditEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def _admin_id() -> int:
    with session_scope() as session:
        return session.scalars(select(StaffUser.id).where(StaffUser.email == DEMO_ADMIN_EMAIL)).one()


def test_passwords_are_stored_as_argon2id(demo_db: str) -> None:
    with session_scope() as session:
        hashes = session.scalars(select(StaffUser.password_hash)).all()
    assert len(hashes) == 3
    assert all(h.startswith("$argon2id$") for h in hashes)


def test_sign_in_sets_a_new_httponly_lax_session_cookie(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    first = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD},
                        follow_redirects=False)  # fmt: skip
    cookie = first.headers["set-cookie"]
    assert (first.status_code, first.headers["location"]) == (303, "/staff")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie and "Path=/staff" in cookie
    token_one = client.cookies.get(COOKIE_NAME)
    second = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL.upper(), "password": DEMO_ADMIN_PASSWORD},
                         follow_redirects=False)  # fmt: skip
    assert second.status_code == 303
    token_two = client.cookies.get(COOKIE_NAME)
    assert token_one != token_two
    with session_scope() as session:
        stored = set(session.scalars(select(StaffSession.id)).all())
    # Only hashes are stored, never the cookie's token.
    assert stored == {auth.session_id_for(token_one), auth.session_id_for(token_two)}
    assert _audit("staff.login") == [(str(_admin_id()), "ok"), (str(_admin_id()), "ok")]


@pytest.mark.parametrize("url", ["https://clinic.example", "HTTPS://Clinic.example"])
def test_cookie_is_secure_behind_an_https_public_url(make_app, url: str) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_PUBLIC_URL=url).client
    give_test_password(DEMO_ADMIN_EMAIL)
    response = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": TEST_PASSWORD},
                           follow_redirects=False)  # fmt: skip
    assert "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({"Referer": "https://evil.example/form.html"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://testserver"}, 303),  # this site, as the browser reached it
        ({"Origin": "https://clinic.example"}, 303),  # this site, by its public URL
        ({}, 303),  # no browser names no origin: nothing to hold against it
    ],
)
def test_a_sign_in_form_sent_from_another_site_is_refused(make_app, headers: dict[str, str], status: int) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_PUBLIC_URL="https://clinic.example").client
    give_test_password(DEMO_ADMIN_EMAIL)
    response = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": TEST_PASSWORD},
                           headers=headers, follow_redirects=False)  # fmt: skip
    assert response.status_code == status
    assert (COOKIE_NAME in response.headers.get("set-cookie", "")) is (status == 303)
    if status == 403:
        assert "sent from another website" in response.text
        assert _audit("staff.login") == []


def test_signing_in_again_ends_the_session_the_browser_had(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client, email=DEMO_STAFF_EMAIL)
    first = client.cookies.get(COOKIE_NAME)
    sign_in(client)
    assert client.cookies.get(COOKIE_NAME) != first
    with session_scope() as session:
        row = session.get(StaffSession, auth.session_id_for(first))
        assert row is not None and row.end_reason == "replaced"
    client.cookies.set(COOKIE_NAME, first, path="/staff")
    assert client.get("/staff/queue").status_code == 401


def test_wrong_password_and_unknown_email_get_the_same_answer(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    wrong = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": "nope-nope-nope"})
    unknown = client.post("/staff/login", data={"email": "who@riverside.example", "password": "nope-nope-nope"})
    assert (wrong.status_code, unknown.status_code) == (401, 401)
    assert "don&#39;t match an active account" in wrong.text and "don&#39;t match an active account" in unknown.text
    assert client.cookies.get(COOKIE_NAME) is None
    assert _audit("staff.login") == [(str(_admin_id()), "invalid"), (None, "invalid")]


def test_the_unknown_email_hash_is_made_when_the_app_starts_not_at_the_first_sign_in(make_app) -> None:  # type: ignore[no-untyped-def]
    auth._dummy_hash.cache_clear()
    make_app()
    assert auth._dummy_hash.cache_info().currsize == 1
    assert auth.verify_password(auth._dummy_hash(), "not-a-real-password")


def test_an_account_is_throttled_after_repeated_failures(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_STAFF_LOGIN_FAILURES_PER_ACCOUNT="3").client
    codes = [client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": f"wrong-{i}"}).status_code
             for i in range(3)]  # fmt: skip
    # Even the right password is refused while throttled.
    right = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD})
    other = client.post("/staff/login", data={"email": DEMO_STAFF_EMAIL, "password": DEMO_ADMIN_PASSWORD},
                        follow_redirects=False)  # fmt: skip
    assert codes == [401, 401, 401]
    assert right.status_code == 429 and "Too many failed sign-ins" in right.text
    assert other.status_code == 303  # other accounts are unaffected
    with time_machine.travel(utcnow() + timedelta(minutes=16), tick=False):
        later = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD},
                            follow_redirects=False)  # fmt: skip
    assert later.status_code == 303
    assert _audit("staff.login")[3] == (str(_admin_id()), "throttled")


def test_a_client_address_is_throttled_across_accounts(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_STAFF_LOGIN_FAILURES_PER_IP="4").client
    for i in range(4):
        client.post("/staff/login", data={"email": f"guess{i}@riverside.example", "password": "x" * 12})
    response = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD})
    assert response.status_code == 429
    with session_scope() as session:
        attempts = session.scalars(select(LoginAttempt.succeeded)).all()
    assert attempts == [False] * 5


def test_pages_need_a_session(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    page = client.get("/staff", headers={"accept": "text/html"}, follow_redirects=False)
    api = client.post("/staff/logout")
    assert (page.status_code, page.headers["location"]) == (303, "/staff/login?next=%2Fstaff")
    assert api.status_code == 401


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    data = {"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD}
    inside = client.post("/staff/login", data={**data, "next": "/staff/reports"}, follow_redirects=False)
    outside = client.post("/staff/login", data={**data, "next": "//evil.example/staff"}, follow_redirects=False)
    elsewhere = client.post("/staff/login", data={**data, "next": "https://evil.example"}, follow_redirects=False)
    assert [r.headers["location"] for r in (inside, outside, elsewhere)] == ["/staff/reports", "/staff", "/staff"]


def test_a_state_change_without_the_csrf_token_is_refused(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    missing = client.post("/staff/logout", follow_redirects=False)
    # One character changed (a fixed "x" in front was the token itself whenever it began with x).
    wrong_token = ("y" if csrf[0] == "x" else "x") + csrf[1:]
    wrong = client.post("/staff/logout", data={"csrf_token": wrong_token}, follow_redirects=False)
    assert (missing.status_code, wrong.status_code) == (403, 403)
    assert "security token" in missing.json()["detail"]
    assert csrf_for(client) == csrf  # still signed in: nothing changed
    header = client.post("/staff/logout", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert (header.status_code, header.headers["location"]) == (303, "/staff/login")


def test_sign_out_ends_the_session(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    token = client.cookies.get(COOKIE_NAME)
    client.post("/staff/logout", data={"csrf_token": csrf}, follow_redirects=False)
    client.cookies.set(COOKIE_NAME, token, path="/staff")  # a stolen copy of the cookie is useless now
    assert client.post("/staff/logout", data={"csrf_token": csrf}).status_code == 401
    with session_scope() as session:
        row = session.get(StaffSession, auth.session_id_for(token))
        assert row is not None and row.end_reason == "logout"
    assert _audit("staff.logout") == [(str(_admin_id()), "ok")]


def test_an_idle_session_expires(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_STAFF_IDLE_MINUTES="15").client
    csrf = sign_in(client)
    token = client.cookies.get(COOKIE_NAME)
    with session_scope() as session:
        assert auth.authenticate(session=session, token=token) is not None
    with time_machine.travel(utcnow() + timedelta(minutes=16), tick=False):
        response = client.post("/staff/logout", data={"csrf_token": csrf})
    assert response.status_code == 401
    with session_scope() as session:
        row = session.get(StaffSession, auth.session_id_for(token))
        assert row is not None and row.end_reason == "idle"


@pytest.mark.parametrize("live", [True, False])
def test_the_inboxs_own_refreshes_do_not_keep_an_unattended_session_alive(make_app, live: bool) -> None:  # type: ignore[no-untyped-def]
    # An open inbox refreshes its queue on every change event, and at least once a minute: those
    # fetches (marked by inbox.js) must not count as the person being there. A click still does.
    client = make_app(CLINICBOT_STAFF_IDLE_MINUTES="15").client
    sign_in(client)
    headers = {"X-Live-Refresh": "1"} if live else {}
    start = utcnow()
    statuses = []
    for minutes in (5, 10, 14, 19, 24):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            statuses.append(client.get("/staff/queue", headers=headers).status_code)
    assert statuses == ([200, 200, 200, 401, 401] if live else [200] * 5)


def test_activity_keeps_a_session_alive(demo_db: str) -> None:
    with session_scope() as session:
        signed = auth.login(session=session, email=DEMO_ADMIN_EMAIL, password=DEMO_ADMIN_PASSWORD, ip="10.0.0.1")
    start = utcnow()
    for minutes in (10, 20, 30):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False), session_scope() as session:
            assert auth.authenticate(session=session, token=signed.token) is not None
    with time_machine.travel(start + timedelta(minutes=46), tick=False), session_scope() as session:
        assert auth.authenticate(session=session, token=signed.token) is None


def test_disabling_an_account_ends_its_sessions_at_once(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client, email=DEMO_STAFF_EMAIL)
    with session_scope() as session:
        auth.disable_staff(session=session, email=DEMO_STAFF_EMAIL)
    assert client.post("/staff/logout", data={"csrf_token": csrf}).status_code == 401
    again = client.post("/staff/login", data={"email": DEMO_STAFF_EMAIL, "password": DEMO_ADMIN_PASSWORD})
    assert again.status_code == 401


def test_add_staff_refuses_duplicates_and_short_passwords(demo_db: str) -> None:
    with session_scope() as session:
        for email, password, message in (
            (DEMO_ADMIN_EMAIL, "long-enough-password", "already exists"),
            ("new@riverside.example", "short", "at least 12 characters"),
            ("not-an-email", "long-enough-password", "is not an email address"),
        ):
            try:
                auth.add_staff(session=session, email=email, name="New", role=auth.Role.STAFF, password=password)
            except auth.StaffError as error:
                assert message in str(error)
            else:
                raise AssertionError(f"{email} accepted")
