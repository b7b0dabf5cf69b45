"""Admins manage staff accounts: add (argon2id), refuse duplicates, disable (sessions end), change roles."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from bot.staff.models import AuditEvent, StaffSession, StaffUser
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in

NEW = {"email": "Lee.Nurse@Riverside.example", "name": "Lee Nurse", "role": "clinician",
       "password": "correct horse battery", "confirm": "correct horse battery"}  # fmt: skip


def _user(email: str) -> StaffUser | None:
    with session_scope() as session:
        return session.scalars(select(StaffUser).where(StaffUser.email == email)).first()


def _audit(action: str) -> list[tuple]:  # type: ignore[type-arg]
    with session_scope() as session:
        rows = session.execute(
            select(AuditEvent.actor_id, AuditEvent.subject_id, AuditEvent.outcome, AuditEvent.details)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def _count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(StaffUser)) or 0


def _field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'<span class="error" id="e-(\w+)">([^<]+)</span>', html))


def test_staff_and_clinicians_cannot_manage_users(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    for email in (DEMO_STAFF_EMAIL, DEMO_CLINICIAN_EMAIL):
        csrf = sign_in(client, email=email)
        assert client.get("/staff/admin/users").status_code == 403
        assert client.post("/staff/admin/users", data={**NEW, "csrf_token": csrf}).status_code == 403
    assert _user("lee.nurse@riverside.example") is None


def test_list_shows_every_account(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client)
    html = client.get("/staff/admin/users").text
    rows = re.findall(
        r'<td data-label="Name">([^<]+)(?:<small[^>]*>\(you\)</small>)?</td>\s*<td data-label="Email">([^<]+)</td>',
        html,
    )
    assert [(name.strip(), email) for name, email in rows] == [
        ("Dana Reyes", DEMO_ADMIN_EMAIL),
        ("Priya Patel", DEMO_CLINICIAN_EMAIL),
        ("Sam Lee", DEMO_STAFF_EMAIL),
    ]
    # No disable button and no role form for the admin's own row.
    admin = _user(DEMO_ADMIN_EMAIL)
    assert (
        f"/staff/admin/users/{admin.id}/disable" not in html
        and f"/staff/admin/users/{admin.id}/role" not in html
    )


def test_an_admin_adds_a_user_with_an_argon2id_hash(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    response = client.post("/staff/admin/users", data={**NEW, "csrf_token": csrf}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/staff/admin/users?done=added")
    user = _user("lee.nurse@riverside.example")
    assert user is not None
    assert (user.name, user.role, user.disabled_at) == ("Lee Nurse", "clinician", None)
    assert user.password_hash.startswith("$argon2id$") and "correct horse" not in user.password_hash
    admin = _user(DEMO_ADMIN_EMAIL)
    assert _audit("staff.added") == [(str(admin.id), str(user.id), "ok", {"role": "clinician"})]
    assert "The account was added." in client.get("/staff/admin/users?done=added").text
    # The new clinician can sign in with the password the admin set.
    other = TestClient(client.app, base_url="http://testserver")
    sign_in(other, email="lee.nurse@riverside.example", password=NEW["password"])


def test_a_duplicate_email_is_refused_beside_the_email_field(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    before = _count()
    response = client.post(
        "/staff/admin/users", data={**NEW, "email": DEMO_STAFF_EMAIL.upper(), "csrf_token": csrf}
    )
    assert response.status_code == 400
    assert _field_errors(response.text) == {"email": "A staff account with this email already exists."}
    assert (
        'id="new-email" name="email" type="email"' in response.text and 'aria-invalid="true"' in response.text
    )
    # What was typed is kept, except the passwords.
    assert f'value="{DEMO_STAFF_EMAIL.upper()}"' in response.text and NEW["password"] not in response.text
    assert _count() == before


def test_each_bad_field_is_named(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    response = client.post(
        "/staff/admin/users",
        data={"email": "not-an-email", "name": " ", "role": "owner", "password": "short", "confirm": "short",
              "csrf_token": csrf},
    )  # fmt: skip
    assert response.status_code == 400
    assert _field_errors(response.text) == {
        "email": "That is not an email address.",
        "name": "Enter the person&#39;s name.",
        "role": "Pick a role.",
        "password": "The password must be at least 12 characters.",
    }
    mismatch = client.post(
        "/staff/admin/users", data={**NEW, "confirm": "another long password", "csrf_token": csrf}
    )
    assert _field_errors(mismatch.text) == {"confirm": "The two passwords do not match."}
    assert _user("lee.nurse@riverside.example") is None


def test_disabling_ends_the_users_sessions_at_once(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sam_client = TestClient(client.app, base_url="http://testserver")
    sign_in(sam_client, email=DEMO_STAFF_EMAIL)
    assert sam_client.get("/staff/reports", headers={"accept": "text/html"}).status_code == 200
    csrf = sign_in(client)
    sam = _user(DEMO_STAFF_EMAIL)
    response = client.post(
        f"/staff/admin/users/{sam.id}/disable", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert (response.status_code, response.headers["location"]) == (303, "/staff/admin/users?done=disabled")
    assert _user(DEMO_STAFF_EMAIL).disabled_at is not None
    with session_scope() as session:
        ended = (
            session.execute(select(StaffSession.end_reason).where(StaffSession.staff_id == sam.id))
            .scalars()
            .all()
        )
    assert ended == ["disabled"]
    page = sam_client.get("/staff/reports", headers={"accept": "text/html"}, follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/staff/login?next=%2Fstaff%2Freports")
    assert sam_client.get("/staff/reports.csv").status_code == 401
    # And they cannot sign in again.
    again = sam_client.post("/staff/login", data={"email": DEMO_STAFF_EMAIL, "password": DEMO_ADMIN_PASSWORD})
    assert again.status_code == 401
    admin = _user(DEMO_ADMIN_EMAIL)
    assert _audit("staff.disabled") == [(str(admin.id), str(sam.id), "ok", {"sessions_ended": 1})]
    html = client.get("/staff/admin/users").text
    assert (
        f"/staff/admin/users/{sam.id}/disable" not in html
        and '<span class="pill overdue">disabled</span>' in html
    )


def test_an_admin_cannot_disable_themselves(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    admin = _user(DEMO_ADMIN_EMAIL)
    response = client.post(f"/staff/admin/users/{admin.id}/disable", data={"csrf_token": csrf})
    assert response.status_code == 400
    assert "You cannot disable your own account; ask another admin." in response.text
    assert _user(DEMO_ADMIN_EMAIL).disabled_at is None
    assert client.get("/staff/admin/users").status_code == 200
    assert _audit("staff.disabled") == [(str(admin.id), str(admin.id), "self", {})]


def test_an_unknown_account_is_not_found(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    assert client.post("/staff/admin/users/999999/disable", data={"csrf_token": csrf}).status_code == 404
    assert (
        client.post("/staff/admin/users/999999/role", data={"role": "staff", "csrf_token": csrf}).status_code
        == 404
    )


def test_a_role_change_applies_to_the_next_request(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sam_client = TestClient(client.app, base_url="http://testserver")
    sign_in(sam_client, email=DEMO_STAFF_EMAIL)
    assert sam_client.get("/staff/admin/users").status_code == 403
    csrf = sign_in(client)
    sam, admin = _user(DEMO_STAFF_EMAIL), _user(DEMO_ADMIN_EMAIL)
    response = client.post(f"/staff/admin/users/{sam.id}/role", data={"role": "admin", "csrf_token": csrf},
                           follow_redirects=False)  # fmt: skip
    assert (response.status_code, response.headers["location"]) == (303, "/staff/admin/users?done=role")
    assert _user(DEMO_STAFF_EMAIL).role == "admin"
    assert sam_client.get("/staff/admin/users").status_code == 200
    assert _audit("staff.role_changed") == [
        (str(admin.id), str(sam.id), "ok", {"from": "staff", "to": "admin"})
    ]
    bad = client.post(f"/staff/admin/users/{sam.id}/role", data={"role": "owner", "csrf_token": csrf})
    assert (bad.status_code, _user(DEMO_STAFF_EMAIL).role) == (400, "admin")


def test_an_admin_cannot_change_their_own_role(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    admin = _user(DEMO_ADMIN_EMAIL)
    response = client.post(f"/staff/admin/users/{admin.id}/role", data={"role": "staff", "csrf_token": csrf})
    assert response.status_code == 400
    assert "You cannot change your own role" in response.text
    assert _user(DEMO_ADMIN_EMAIL).role == "admin"


def test_changes_without_the_csrf_token_are_refused(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client)
    sam = _user(DEMO_STAFF_EMAIL)
    before = _count()
    assert client.post("/staff/admin/users", data=NEW).status_code == 403
    assert client.post("/staff/admin/users", data={**NEW, "csrf_token": "forged"}).status_code == 403
    assert client.post(f"/staff/admin/users/{sam.id}/disable").status_code == 403
    assert client.post(f"/staff/admin/users/{sam.id}/role", data={"role": "admin"}).status_code == 403
    after = _user(DEMO_STAFF_EMAIL)
    assert (_count(), after.disabled_at, after.role) == (before, None, "staff")
    assert (
        _audit("staff.added") == [] and _audit("staff.disabled") == [] and _audit("staff.role_changed") == []
    )
