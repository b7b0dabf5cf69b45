"""Complaint cases over HTTP on real databases: opened from a complaint, worked, resolved with the patient told."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bot.channels.models import OutboxMessage
from bot.clinic_settings import load_clinic
from bot.conversations.models import Conversation, Handoff, Message
from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.patients.models import Patient
from bot.promises.models import Promise, PromiseKind
from bot.staff.models import AuditEvent, ComplaintAction, ComplaintCase, StaffUser
from bot.when import render_due
from tests.channels.twilio.conftest import JIM, SmsApp, twilio_env
from tests.channels.webchat.conftest import Visitor
from tests.fakes.fake_twilio import FakeTwilio
from tests.staff.conftest import DEMO_STAFF_EMAIL, sign_in

COMPLAINT = "I want to make a complaint, the receptionist was rude"
# A Wednesday morning in the clinic's time zone (America/New_York): working hours, no holiday.
WEDNESDAY_10AM = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    """A fake Twilio REST API on a random loopback port."""
    with FakeTwilio(account_sid="AC" + "cd34" * 8, auth_token="test-auth-token-5678") as fake:
        yield fake


def sms_app(make_app: Any, fake: FakeTwilio, **extra: str) -> SmsApp:
    """Return the app with SMS through the fake Twilio (plus any extra settings)."""
    return SmsApp(harness=make_app(**(twilio_env(fake) | extra)), fake=fake)


def visitor(make_app: Any) -> Visitor:
    """Return a web chat visitor on a fresh app."""
    harness = make_app()
    assert harness.client.get("/chat").status_code == 200
    return Visitor(harness)


def count(model: Any, *where: Any) -> int:
    """Return how many rows of a model match."""
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def staff_id(email: str) -> int:
    """Return a staff member's id by email."""
    with session_scope() as session:
        return session.scalars(select(StaffUser.id).where(StaffUser.email == email)).one()


def audit_rows(action: str) -> list[tuple[str | None, str | None, int | None, str]]:
    """Return (actor id, subject id, patient id, outcome) of every audit event with this action."""
    with session_scope() as session:
        rows = session.execute(
            select(AuditEvent.actor_id, AuditEvent.subject_id, AuditEvent.patient_id, AuditEvent.outcome)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        ).all()
    return [(row[0], row[1], row[2], row[3]) for row in rows]


def only_case() -> ComplaintCase:
    with session_scope() as session:
        case = session.scalars(select(ComplaintCase)).one()
        session.expunge(case)
    return case


def test_a_complaint_in_the_web_chat_opens_one_case_due_when_the_acknowledgement_promised(make_app) -> None:
    chat = visitor(make_app)
    with time_machine.travel(WEDNESDAY_10AM, tick=False):
        replies = chat.ask(COMPLAINT)
        chat.ask("and nobody called me back")  # the chat is with staff now: no second case
    case = only_case()
    with session_scope() as session:
        handoff = session.get(Handoff, case.handoff_id)
        promise = session.scalars(select(Promise).where(Promise.kind == PromiseKind.COMPLAINT_FOLLOWUP)).one()
        conversation = session.get(Conversation, case.conversation_id)
        assert handoff is not None and conversation is not None
        actual = (case.status, case.summary, case.category, case.patient_id, case.owner_id, case.due_at,
                  handoff.reason, promise.subject_type, promise.subject_id, promise.due_at)  # fmt: skip
        expected = (
            "open",
            "",
            "other",
            None,
            None,
            handoff.due_at,
            "complaint",
            "handoff",
            handoff.id,
            handoff.due_at,
        )
        assert actual == expected
        # Wednesday 10:00 plus 480 working minutes (open 8 am - 6 pm) is 6 pm the same day.
        assert case.due_at == datetime(2026, 11, 18, 23, 0, tzinfo=UTC)
    assert replies == [
        "I'm sorry about your experience. We take this seriously, and I've passed it to our practice manager. "
        "They'll reply by 6 pm today."
    ]
    assert audit_rows("complaint.opened") == [(None, str(case.id), None, "ok")]
    # Every role sees complaints; the list shows the case, oldest first.
    sign_in(chat.client, DEMO_STAFF_EMAIL)
    page = chat.client.get("/staff/complaints")
    assert page.status_code == 200
    assert f'href="/staff/complaints/{case.id}">Complaint #{case.id}</a>' in page.text
    assert COMPLAINT not in page.text


def resolve_form(client: Any, case_id: int) -> str:
    """Return the prefilled resolution message on the case page."""
    page = client.get(f"/staff/complaints/{case_id}")
    assert page.status_code == 200
    match = re.search(r'<textarea id="resolution-message"[^>]*>(.*?)</textarea>', page.text, re.S)
    assert match, "no resolution form"
    import html

    return html.unescape(match[1])


def test_sms_complaint_is_resolved_with_the_patient_told_what_was_done(make_app, fake_twilio) -> None:
    app = sms_app(make_app, fake_twilio)
    assert app.text_in(COMPLAINT).status_code == 200
    app.settle()
    case = only_case()
    with session_scope() as session:
        jim = session.scalars(select(Patient).where(Patient.phone == JIM)).one()
    assert case.patient_id == jim.id
    # The public URL is https, so the session cookie is Secure: staff use the app over https.
    staff = TestClient(app.client.app, base_url="https://testserver")
    csrf = sign_in(staff)
    admin = staff_id(DEMO_ADMIN_EMAIL)

    # Resolving needs an action first: refused, nothing sent, the staff member's text kept.
    refused = staff.post(
        f"/staff/complaints/{case.id}/resolve", data={"csrf_token": csrf, "message": "Done."}
    )
    assert refused.status_code == 400
    assert "Record at least one action" in refused.text and ">Done.</textarea>" in refused.text
    assert count(OutboxMessage, OutboxMessage.key.like("complaint-resolved:%")) == 0

    for body in ("spoke with the receptionist about courtesy", "Added greeting training for the front desk."):
        response = staff.post(f"/staff/complaints/{case.id}/actions", data={"csrf_token": csrf, "body": body},
                                   follow_redirects=False)  # fmt: skip
        assert (response.status_code, response.headers["location"]) == (
            303,
            f"/staff/complaints/{case.id}#actions",
        )
    draft = resolve_form(staff, case.id)
    assert draft == (
        "Thank you for telling us about your experience. Here is what we have done: Spoke with the receptionist "
        "about courtesy. Added greeting training for the front desk. If anything is still not right, reply to this "
        "message. Dana Reyes, Riverside Family Clinic"
    )
    edited = draft.replace("If anything", "We are sorry this happened. If anything")

    empty = staff.post(f"/staff/complaints/{case.id}/resolve", data={"csrf_token": csrf, "message": "  "})
    assert empty.status_code == 400 and "Write the message" in empty.text
    # Jim's lipid panel is on file: an SMS may not name it, even in a resolution.
    named = staff.post(f"/staff/complaints/{case.id}/resolve",
                       data={"csrf_token": csrf, "message": "We also checked your lipid panel."})  # fmt: skip
    assert named.status_code == 400 and "must not name tests or results, and this one names Lipid panel" in named.text
    assert count(OutboxMessage, OutboxMessage.key.like("complaint-resolved:%")) == 0
    with session_scope() as session:
        reasons = session.scalars(select(AuditEvent.details).where(AuditEvent.action == "complaint.resolved")).all()
    assert [reason["reason"] for reason in reasons] == ["no_action", "no_message", "names_tests"]

    done = staff.post(f"/staff/complaints/{case.id}/resolve", data={"csrf_token": csrf, "message": edited},
                           follow_redirects=False)  # fmt: skip
    assert (done.status_code, done.headers["location"]) == (303, f"/staff/complaints/{case.id}")
    app.settle()
    assert [m.body for m in app.fake.messages_to(JIM)][-1] == edited

    with session_scope() as session:
        resolved = session.get(ComplaintCase, case.id)
        assert resolved is not None and resolved.resolution_message_id is not None
        sent = session.get(Message, resolved.resolution_message_id)
        promise = session.scalars(select(Promise).where(Promise.kind == PromiseKind.COMPLAINT_FOLLOWUP)).one()
        assert sent is not None
        actual = (resolved.status, resolved.resolved_by_id, resolved.resolved_at is not None, sent.direction,
                  sent.author_kind, sent.author_id, sent.body, promise.status, promise.kept_at == resolved.resolved_at)  # fmt: skip
        assert actual == ("resolved", admin, True, "out", "staff", admin, edited, "kept", True)
    page = staff.get(f"/staff/complaints/{case.id}")
    assert "We are sorry this happened." in page.text and 'id="resolution-message"' not in page.text

    again = staff.post(f"/staff/complaints/{case.id}/resolve", data={"csrf_token": csrf, "message": edited})
    assert again.status_code == 409
    assert count(OutboxMessage, OutboxMessage.key == f"complaint-resolved:{case.id}") == 1
    late_action = staff.post(f"/staff/complaints/{case.id}/actions", data={"csrf_token": csrf, "body": "x"})
    assert late_action.status_code == 409
    assert count(ComplaintAction) == 2
    assert audit_rows("complaint.resolved") == [
        (str(admin), str(case.id), jim.id, "refused"),
        (str(admin), str(case.id), jim.id, "refused"),
        (str(admin), str(case.id), jim.id, "refused"),
        (str(admin), str(case.id), jim.id, "ok"),
    ]
    assert len(audit_rows("complaint.action_recorded")) == 2
    viewed = audit_rows("complaint.viewed")
    assert viewed and {row[2] for row in viewed} == {jim.id}


def test_staff_open_a_case_from_a_conversation_and_the_patient_is_told_when_they_will_hear_back(
    make_app,
) -> None:
    chat = visitor(make_app)
    with time_machine.travel(WEDNESDAY_10AM, tick=False):
        chat.ask("what are your hours")
        with session_scope() as session:
            conversation_id = session.scalars(select(Conversation.id)).one()
        csrf = sign_in(chat.client, DEMO_STAFF_EMAIL)
        sam = staff_id(DEMO_STAFF_EMAIL)
        response = chat.client.post(f"/staff/conversations/{conversation_id}/complaint", data={"csrf_token": csrf},
                                    follow_redirects=False)  # fmt: skip
        case = only_case()
        assert (response.status_code, response.headers["location"]) == (303, f"/staff/complaints/{case.id}")
        with session_scope() as session:
            clinic = load_clinic(session=session)
            assert case.due_at is not None
            due = render_due(due=case.due_at, now=datetime.now(tz=UTC), tz=clinic.calendar.tz, lang="en")
        cursor = chat.events()[-1][0]
        chat.app.settle()
        replies = [data for _, data in chat.events(last_event_id=cursor) if data["kind"] == "reply"]
        # Again: the same case, and the patient is not told twice.
        again = chat.client.post(f"/staff/conversations/{conversation_id}/complaint", data={"csrf_token": csrf},
                                 follow_redirects=False)  # fmt: skip
    assert due == "by 6 pm today"
    expected = (
        "I'm sorry about your experience. We take this seriously, and I've passed it to our practice manager. "
        f"They'll reply {due}."
    )
    assert [(r["text"], r["author"]) for r in replies] == [(expected, "staff")]
    assert (again.status_code, again.headers["location"]) == (303, f"/staff/complaints/{case.id}")
    assert count(ComplaintCase) == 1
    assert count(OutboxMessage, OutboxMessage.key == f"complaint-ack:{case.id}") == 1
    with session_scope() as session:
        conversation = session.get(Conversation, conversation_id)
        handoff = session.get(Handoff, case.handoff_id)
        promise = session.scalars(select(Promise).where(Promise.kind == PromiseKind.COMPLAINT_FOLLOWUP)).one()
        assert conversation is not None and handoff is not None
        actual = (conversation.state, conversation.reason, handoff.reason, promise.subject_id, promise.due_at)
    assert actual == ("waiting", "complaint", "complaint", handoff.id, case.due_at)
    assert audit_rows("complaint.opened") == [(None, str(case.id), None, "ok")]
    assert audit_rows("complaint.opened_by_staff") == [(str(sam), str(case.id), None, "ok")]


def test_case_details_status_and_refusals(make_app) -> None:
    chat = visitor(make_app)
    chat.ask(COMPLAINT)
    case = only_case()
    csrf = sign_in(chat.client)
    sam = staff_id(DEMO_STAFF_EMAIL)
    url = f"/staff/complaints/{case.id}"
    saved = chat.client.post(f"{url}/details", data={"csrf_token": csrf, "summary": " Rude at check-in ",
                             "category": "staff_conduct", "owner_id": str(sam)}, follow_redirects=False)  # fmt: skip
    assert saved.status_code == 303
    assert chat.client.post(f"{url}/investigate", data={"csrf_token": csrf}).status_code == 200
    updated = only_case()
    assert (updated.summary, updated.category, updated.owner_id, updated.status) == (
        "Rude at check-in", "staff_conduct", sam, "investigating",
    )  # fmt: skip
    page = chat.client.get(url)
    assert '<option value="staff_conduct" selected>Staff conduct</option>' in page.text
    assert f'<option value="{sam}" selected>Sam Lee</option>' in page.text
    listing = chat.client.get("/staff/complaints?status=investigating")
    assert f"Complaint #{case.id}" in listing.text and "Sam Lee" in listing.text
    assert f"Complaint #{case.id}" not in chat.client.get("/staff/complaints?status=open").text

    bad_category = chat.client.post(f"{url}/details", data={"csrf_token": csrf, "category": "weather"})
    assert bad_category.status_code == 400
    no_csrf = chat.client.post(f"{url}/actions", data={"body": "called the patient"})
    assert no_csrf.status_code == 403
    empty_action = chat.client.post(f"{url}/actions", data={"csrf_token": csrf, "body": "   "})
    assert empty_action.status_code == 400
    assert count(ComplaintAction) == 0
    assert chat.client.get("/staff/complaints/999").status_code == 404
    assert chat.client.get("/staff/complaints?status=nonsense").status_code == 400
    assert [row[3] for row in audit_rows("complaint.updated")] == ["ok"]


# Two requests at once need two writers: PostgreSQL (SQLite's one writer serialises them anyway).
@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_open_complaint_clicks_at_once_open_one_case_and_acknowledge_once(
    runtime, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    from bot.conversations import flows
    from bot.conversations.service import open_conversation
    from bot.patients.service import get_or_create_identity
    from bot.staff import complaints

    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address=JIM)
        conversation_id = open_conversation(session=session, identity=identity).id
        staff_id = session.scalars(select(StaffUser.id).where(StaffUser.email == DEMO_ADMIN_EMAIL)).one()
    # Hold each request at the hand-off until the other reaches it too (or for a second, when it cannot):
    # unlocked, both would have found no case by then.
    both_there = threading.Barrier(2)
    handoff = flows.do_handoff

    def held(**kwargs: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_there.wait(timeout=1.0)
        return handoff(**kwargs)

    monkeypatch.setattr(flows, "do_handoff", held)

    def click() -> int:
        with session_scope() as session:
            return complaints.do_open_case_for_conversation(
                session=session, domain=runtime.domain, conversation_id=conversation_id, staff_id=staff_id
            ).case_id

    with ThreadPoolExecutor(max_workers=2) as pool:
        opened = list(pool.map(lambda _: click(), range(2)))
    with session_scope() as session:
        cases = session.scalars(select(ComplaintCase.id)).all()
        handoffs = session.scalars(select(Handoff.id).where(Handoff.conversation_id == conversation_id)).all()
        acks = session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like("complaint-ack:%"))).all()
    assert (opened, len(handoffs), acks) == ([cases[0]] * 2, 1, [f"complaint-ack:{cases[0]}"])
