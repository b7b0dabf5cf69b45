"""Staff passwords: each person changes their own, admins set another's, the CLI sets one, and the published
demo password never signs in on a server patients reach."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from bot.staff.models import AuditEvent, LoginAttempt, StaffSession, StaffUser
from bot.staff.passwords import verify_password
from tests.staff.conftest import DEMO_STAFF_EMAIL, TEST_PASSWORD, sign_in
from tests.test_cli import assert_one_line_error, clinicbot

NEW_PASSWORD = "a new and longer secret"  # noqa: S105


def _user(email: str) -> StaffUser:
    with session_scope() as session:
        return session.scalars(select(StaffUser).where(StaffUser.email == email)).one()


def _audit(action: str) -> list[tuple]:  # type: ignore[type-arg]
    with session_scope() as session:
        rows = session.execute(
            select(AuditEvent.actor_kind, AuditEvent.actor_id, AuditEvent.subject_id, AuditEvent.outcome,
                   AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.id)  # fmt: skip
        ).all()
    return [tuple(row) for row in rows]


def _open_sessions(staff_id: int) -> int:
    with session_scope() as session:
        return len(session.scalars(select(StaffSession.id).where(StaffSession.staff_id == staff_id,
                                                                 StaffSession.ended_at.is_(None))).all())  # fmt: skip


def _field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<span class="error" id="e-(\w+)">([^<]+)</span>', html))


def _change(client: TestClient, csrf: str, **fields: str):  # type: ignore[no-untyped-def]
    data = {"current": TEST_PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": csrf, **fields}
    return client.post("/staff/account/password", data=data, follow_redirects=False)


def test_a_person_changes_their_own_password_and_their_other_sessions_end(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    laptop = TestClient(client.app, base_url="http://testserver")
    sign_in(laptop, email=DEMO_STAFF_EMAIL)
    csrf = sign_in(client, email=DEMO_STAFF_EMAIL)
    sam = _user(DEMO_STAFF_EMAIL)
    page = client.get("/staff/account")
    assert page.status_code == 200
    assert 'href="/staff/account" aria-current="page"' in page.text and DEMO_STAFF_EMAIL in page.text
    assert 'autocomplete="current-password"' in page.text and 'for="pw-current"' in page.text
    response = _change(client, csrf)
    assert (response.status_code, response.headers["location"]) == (303, "/staff/account?done=password")
    assert "Your password was changed." in client.get("/staff/account?done=password").text
    user = _user(DEMO_STAFF_EMAIL)
    assert user.password_hash.startswith("$argon2id$") and verify_password(user.password_hash, NEW_PASSWORD)
    # Signed in here still; the laptop's session ended.
    assert client.get("/staff/reports", headers={"accept": "text/html"}).status_code == 200
    assert laptop.get("/staff/queue").status_code == 401
    assert _open_sessions(sam.id) == 1
    assert _audit("staff.password_changed") == [("staff", str(sam.id), str(sam.id), "ok", {"sessions_ended": 1})]
    # The old password no longer signs in; the new one does.
    other = TestClient(client.app, base_url="http://testserver")
    refused = other.post("/staff/login", data={"email": DEMO_STAFF_EMAIL, "password": TEST_PASSWORD})
    assert refused.status_code == 401
    sign_in(other, email=DEMO_STAFF_EMAIL, password=NEW_PASSWORD)


def test_a_wrong_current_password_is_refused_counted_and_throttled(make_app, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CLINICBOT_STAFF_LOGIN_FAILURES_PER_ACCOUNT", "3")
    client = make_app().client
    csrf = sign_in(client, email=DEMO_STAFF_EMAIL)
    sam = _user(DEMO_STAFF_EMAIL)
    for _ in range(3):
        response = _change(client, csrf, current="not my password at all")
        assert response.status_code == 400
        assert _field_errors(response.text) == {"current": "That is not your current password."}
        assert NEW_PASSWORD not in response.text and "not my password" not in response.text
    # A stolen session cannot guess on: the account's sign-in throttle covers it (and sign-ins too).
    throttled = _change(client, csrf)
    assert throttled.status_code == 429
    assert "Too many wrong passwords" in _field_errors(throttled.text)["current"]
    assert verify_password(_user(DEMO_STAFF_EMAIL).password_hash, TEST_PASSWORD)
    with session_scope() as session:
        failures = session.scalars(select(LoginAttempt.succeeded).where(LoginAttempt.email == DEMO_STAFF_EMAIL,
                                                                        LoginAttempt.succeeded.is_(False))).all()  # fmt: skip
    assert len(failures) == 3
    outcomes = [row[3] for row in _audit("staff.password_changed")]
    assert outcomes == ["wrong_password"] * 3 + ["throttled"]
    assert all(row[1] == str(sam.id) for row in _audit("staff.password_changed"))


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"password": "short", "confirm": "short"}, {"password": "The password must be at least 12 characters."}),
        ({"confirm": "something else entirely"}, {"confirm": "The two passwords do not match."}),
        ({"password": DEMO_ADMIN_PASSWORD, "confirm": DEMO_ADMIN_PASSWORD},
         {"password": "That is the demo password, which the README publishes: choose another."}),
        ({"password": TEST_PASSWORD, "confirm": TEST_PASSWORD},
         {"password": "The new password is the same as the current one."}),
    ],
)  # fmt: skip
def test_a_new_password_that_will_not_do_is_named(make_app, fields: dict[str, str], errors: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client, email=DEMO_STAFF_EMAIL)
    response = _change(client, csrf, **fields)
    assert response.status_code == 400
    assert {key: value.replace("&#39;", "'") for key, value in _field_errors(response.text).items()} == errors
    assert verify_password(_user(DEMO_STAFF_EMAIL).password_hash, TEST_PASSWORD)
    assert [row[3] for row in _audit("staff.password_changed")] == ["refused"]


def test_changing_a_password_needs_the_csrf_token_and_a_session(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    data = {"current": TEST_PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    assert client.post("/staff/account/password", data=data).status_code == 401
    assert client.get("/staff/account", follow_redirects=False).status_code in {303, 401}
    sign_in(client, email=DEMO_STAFF_EMAIL)
    assert client.post("/staff/account/password", data=data).status_code == 403
    assert client.post("/staff/account/password", data={**data, "csrf_token": "forged"}).status_code == 403
    assert verify_password(_user(DEMO_STAFF_EMAIL).password_hash, TEST_PASSWORD)


def test_an_admin_sets_another_accounts_password_and_its_sessions_end(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sam_client = TestClient(client.app, base_url="http://testserver")
    sam_csrf = sign_in(sam_client, email=DEMO_STAFF_EMAIL)
    sam, admin = _user(DEMO_STAFF_EMAIL), _user(DEMO_ADMIN_EMAIL)
    # Not an admin: refused, whoever's account it is.
    denied = sam_client.post(f"/staff/admin/users/{admin.id}/password",
                             data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": sam_csrf})  # fmt: skip
    assert denied.status_code == 403
    csrf = sign_in(client)
    html = client.get("/staff/admin/users").text
    assert f'action="/staff/admin/users/{sam.id}/password"' in html
    assert f'action="/staff/admin/users/{admin.id}/password"' not in html and 'href="/staff/account"' in html
    short = client.post(f"/staff/admin/users/{sam.id}/password",
                        data={"password": "short", "confirm": "short", "csrf_token": csrf})  # fmt: skip
    assert short.status_code == 400 and "at least 12 characters" in short.text
    response = client.post(f"/staff/admin/users/{sam.id}/password",
                           data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": csrf},
                           follow_redirects=False)  # fmt: skip
    assert (response.status_code, response.headers["location"]) == (303, "/staff/admin/users?done=password")
    assert verify_password(_user(DEMO_STAFF_EMAIL).password_hash, NEW_PASSWORD)
    assert sam_client.get("/staff/queue").status_code == 401 and _open_sessions(sam.id) == 0
    assert _audit("staff.password_reset") == [("staff", str(admin.id), str(sam.id), "refused", {}),
                                              ("staff", str(admin.id), str(sam.id), "ok", {"sessions_ended": 1})]
    # Their own goes through the account page, where the current password is asked for.
    own = client.post(f"/staff/admin/users/{admin.id}/password",
                      data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": csrf})  # fmt: skip
    assert own.status_code == 400 and "Change your own password on your account page." in own.text
    assert verify_password(_user(DEMO_ADMIN_EMAIL).password_hash, TEST_PASSWORD)
    missing = client.post("/staff/admin/users/999999/password",
                          data={"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "csrf_token": csrf})  # fmt: skip
    assert missing.status_code == 404


@pytest.mark.parametrize(
    "settings",
    [
        {"CLINICBOT_PUBLIC_URL": "https://clinic.example"},
        {"TWILIO_ACCOUNT_SID": "AC" + "1" * 32, "TWILIO_AUTH_TOKEN": "token", "TWILIO_FROM_NUMBER": "+16175550199"},
        {"TELEGRAM_BOT_TOKEN": "123456:test-token"},
    ],
    ids=["public-url", "sms", "telegram"],
)
def test_the_published_demo_password_never_signs_in_where_patients_reach(make_app, settings: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    client = make_app(**settings).client
    response = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD},
                           follow_redirects=False)  # fmt: skip
    assert response.status_code == 403
    assert "still has the demo password" in response.text and "clinicbot staff password" in response.text
    assert "clinicbot_staff" not in response.headers.get("set-cookie", "")
    admin = _user(DEMO_ADMIN_EMAIL)
    assert _audit("staff.login") == [("staff", str(admin.id), None, "demo_password", {})]
    # A wrong password still gets the plain answer (nothing says which accounts have the demo one).
    wrong = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": "wrong password here"})
    assert wrong.status_code == 401 and "demo password" not in wrong.text
    # With a real password the account signs in.
    sign_in(client)


def test_the_demo_password_signs_in_on_a_demo_on_one_machine(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app(CLINICBOT_PUBLIC_URL="http://127.0.0.1:8000").client
    response = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD},
                           follow_redirects=False)  # fmt: skip
    assert response.status_code == 303


def test_the_cli_sets_a_password_and_ends_the_accounts_sessions(demo_db: str, make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client, email=DEMO_STAFF_EMAIL)
    sam = _user(DEMO_STAFF_EMAIL)
    env: dict[str, str] = {}  # the database the fixtures set in this process's environment
    done = clinicbot("staff", "password", "--email", DEMO_STAFF_EMAIL.upper(), "--password-stdin", env=env,
                     stdin=NEW_PASSWORD.encode() + b"\n")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"staff {sam.id} has a new password; their sessions are ended\n"
    assert verify_password(_user(DEMO_STAFF_EMAIL).password_hash, NEW_PASSWORD)
    assert client.get("/staff/queue").status_code == 401
    assert _audit("staff.password_reset") == [("cli", None, str(sam.id), "ok", {"sessions_ended": 1})]
    for args, stdin, fragment in (
        (("--email", DEMO_STAFF_EMAIL, "--password-stdin"), b"short\n", "at least 12 characters"),
        (("--email", DEMO_STAFF_EMAIL, "--password-stdin"), DEMO_ADMIN_PASSWORD.encode() + b"\n", "demo password"),
        (("--email", "ghost@riverside.example", "--password-stdin"), NEW_PASSWORD.encode() + b"\n", "no staff account"),
        (("--email", DEMO_STAFF_EMAIL), b"", "staff password: --password-stdin is required"),
        (("--email", DEMO_STAFF_EMAIL, "--password-stdin"), b"\n", "staff password: no password on standard input"),
    ):
        assert_one_line_error(clinicbot("staff", "password", *args, env=env, stdin=stdin), fragment)
    assert verify_password(_user(DEMO_STAFF_EMAIL).password_hash, NEW_PASSWORD)
