"""The admin's audit-trail search: admin only, filters, newest first, paging, and itself audited."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.staff.models import AuditEvent, StaffUser
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in

DAY = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _ids() -> dict[str, int]:
    with session_scope() as session:
        return dict(session.execute(select(StaffUser.email, StaffUser.id)).all())


def seed_events() -> dict[str, int]:
    """Store a few audit events on known days; return their ids by label."""
    staff = _ids()
    sam, priya = staff[DEMO_STAFF_EMAIL], staff[DEMO_CLINICIAN_EMAIL]
    rows = {
        "sam_claim": AuditEvent(at=DAY, actor_kind="staff", actor_id=str(sam), action="conversation.claimed",
                                subject_type="conversation", subject_id="7", patient_id=11, details={"handoff_id": 3}),
        "sam_view": AuditEvent(at=DAY + timedelta(days=1), actor_kind="staff", actor_id=str(sam),
                               action="patient.viewed", subject_type="patient", subject_id="12", patient_id=12),
        "priya_claim": AuditEvent(at=DAY + timedelta(days=2), actor_kind="staff", actor_id=str(priya),
                                  action="conversation.claimed", subject_type="conversation", subject_id="8",
                                  patient_id=12),
        "cli": AuditEvent(at=DAY + timedelta(days=3), actor_kind="cli", action="staff.added", outcome="ok",
                          subject_type="staff_user", subject_id="9"),
        "refused": AuditEvent(at=DAY + timedelta(days=3, hours=1), actor_kind="staff", actor_id=str(sam),
                              action="staff.login", outcome="throttled"),
    }  # fmt: skip
    with session_scope() as session:
        session.add_all(rows.values())
        session.flush()
        return {label: row.id for label, row in rows.items()}


def shown(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tr data-event="(\d+)">', html)]


def test_only_admins_may_search_the_audit_trail(make_app) -> None:  # type: ignore[no-untyped-def]
    harness = make_app()
    for email in (DEMO_STAFF_EMAIL, DEMO_CLINICIAN_EMAIL):
        sign_in(harness.client, email=email)
        assert harness.client.get("/staff/admin/audit").status_code == 403
    with session_scope() as session:
        searched = session.scalars(select(AuditEvent.id).where(AuditEvent.action == "audit.searched")).all()
    assert searched == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["refused", "cli", "priya_claim", "sam_view", "sam_claim"]),
        ({"actor": DEMO_STAFF_EMAIL.upper()}, ["refused", "sam_view", "sam_claim"]),
        ({"action": "conversation."}, ["priya_claim", "sam_claim"]),
        ({"action": "conversation.claimed", "actor": "sam"}, ["sam_claim"]),
        ({"patient": "12"}, ["priya_claim", "sam_view"]),
        ({"from": "2026-03-03", "to": "2026-03-04"}, ["priya_claim", "sam_view"]),
        ({"from": "2026-03-05"}, ["refused", "cli"]),
        ({"action": "staff.%"}, []),
    ],
)
def test_filters_narrow_the_search_newest_first(make_app, params, expected) -> None:  # type: ignore[no-untyped-def]
    harness = make_app()
    sign_in(harness.client)
    events = seed_events()
    if params.get("actor") == "sam":
        params = {**params, "actor": str(_ids()[DEMO_STAFF_EMAIL])}
    response = harness.client.get("/staff/admin/audit", params=params)
    assert response.status_code == 200
    # Sign-ins by the admin in this test are rows too: only the seeded rows are compared.
    assert [event for event in shown(response.text) if event in events.values()] == [
        events[name] for name in expected
    ]


def test_a_row_shows_time_actor_action_subject_patient_outcome_and_details(make_app) -> None:  # type: ignore[no-untyped-def]
    harness = make_app()
    sign_in(harness.client)
    events = seed_events()
    html = harness.client.get("/staff/admin/audit", params={"patient": "11"}).text
    row = html[html.index(f'<tr data-event="{events["sam_claim"]}">') :]
    row = row[: row.index("</tr>")]
    sam = _ids()[DEMO_STAFF_EMAIL]
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells == [
        "2026-03-02 12:00:00",
        f"staff #{sam} (Sam Lee)",
        "conversation.claimed",
        "conversation 7",
        "11",
        "ok",
        "handoff_id=3",
    ]
    refused = harness.client.get(
        "/staff/admin/audit", params={"action": "staff.login", "actor": str(sam)}
    ).text
    assert '<span class="pill overdue">throttled</span>' in refused


def test_searching_is_itself_audited(make_app) -> None:  # type: ignore[no-untyped-def]
    harness = make_app()
    sign_in(harness.client)
    seed_events()
    sam = _ids()[DEMO_STAFF_EMAIL]
    harness.client.get(
        "/staff/admin/audit", params={"actor": DEMO_STAFF_EMAIL, "patient": "12", "action": "patient."}
    )
    with session_scope() as session:
        rows = session.execute(
            select(AuditEvent.actor_id, AuditEvent.patient_id, AuditEvent.outcome, AuditEvent.details).where(
                AuditEvent.action == "audit.searched"
            )
        ).all()
    admin = _ids()[DEMO_ADMIN_EMAIL]
    assert [tuple(row) for row in rows] == [
        (str(admin), 12, "ok", {"actor_id": str(sam), "action": "patient.", "results": 1})
    ]


def test_pages_of_fifty_with_an_older_link(make_app) -> None:  # type: ignore[no-untyped-def]
    harness = make_app()
    sign_in(harness.client)
    with session_scope() as session:
        bulk = [AuditEvent(at=DAY + timedelta(minutes=n), actor_kind="cli", action="test.bulk", details={"n": n})
                for n in range(120)]  # fmt: skip
        session.add_all(bulk)
        session.flush()
        ids = [row.id for row in bulk]
    newest_first = ids[::-1]
    pages = []
    url = "/staff/admin/audit?action=test.bulk"
    while url:
        html = harness.client.get(url).text
        pages.append(shown(html))
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', html)
        url = older.group(1).replace("&amp;", "&") if older else None
    assert pages == [newest_first[:50], newest_first[50:100], newest_first[100:]]
    last = harness.client.get(f"/staff/admin/audit?action=test.bulk&before={newest_first[99]}").text
    assert '<a href="/staff/admin/audit?action=test.bulk">Newest</a>' in last


def test_bad_filters_are_named(make_app) -> None:  # type: ignore[no-untyped-def]
    harness = make_app()
    sign_in(harness.client)
    response = harness.client.get(
        "/staff/admin/audit",
        params={"patient": "Maria", "actor": "nobody@riverside.example", "from": "March", "to": "9999-12-31"},
    )
    assert response.status_code == 400
    errors = dict(re.findall(r'<span class="error" id="e-(\w+)">([^<]+)</span>', response.text))
    assert errors == {
        "actor": "No staff account has that email; enter an email or a staff id.",
        "patient": "A patient id is a number.",
        "from": "Use a date like 2026-11-18.",
        "to": "Use a date from 1970-01-01 to 9000-12-31.",
    }
    assert shown(response.text) == []
