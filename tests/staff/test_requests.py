"""Refill and appointment requests over HTTP on real databases: staff answer each, and the patient is told once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bot.channels.models import OutboxMessage
from bot.conversations import flows
from bot.conversations.models import Conversation, ConversationState, PatientRequest, RequestKind
from bot.db import session_scope
from bot.promises.models import Promise, PromiseKind
from bot.staff.models import AuditEvent
from tests.channels.twilio.conftest import JIM, SmsApp, twilio_env
from tests.fakes.fake_twilio import FakeTwilio
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in
from tests.staff.test_complaints import staff_id


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid="AC" + "ef56" * 8, auth_token="test-auth-token-9012") as twilio:
        yield twilio


@pytest.fixture
def app(make_app: Any, fake: FakeTwilio) -> SmsApp:
    sms = SmsApp(harness=make_app(**twilio_env(fake)), fake=fake)
    sms.client.base_url = "https://testserver"  # the public URL is https: the session cookie is Secure
    return sms


def ask_for_refill(app: SmsApp) -> PatientRequest:
    """Jim (a demo patient, verified by his number) asks for a refill by SMS, through the real pipeline."""
    for text in ("i need a refill on my rx pls", "lisinopril 10 mg", "CVS on Main Street"):
        assert app.text_in(text).status_code == 200
        app.settle()
    return only_request()


def only_request() -> PatientRequest:
    with session_scope() as session:
        return session.scalars(select(PatientRequest).order_by(PatientRequest.id.desc())).first()


def request_in_jims_chat(kind: RequestKind, action: str | None, details: dict[str, str]) -> int:
    with session_scope() as session:
        conversation_id = session.scalars(select(Conversation.id).order_by(Conversation.id.desc())).first()
        return flows.do_record_request(session=session, conversation_id=conversation_id, kind=kind, action=action,
                                       details=details).request_id  # fmt: skip


def textarea(html: str, outcome: str) -> str:
    match = re.search(rf'<textarea id="{outcome}-message"[^>]*>([^<]*)</textarea>', html)
    assert match, f"no {outcome} form"
    return match.group(1).replace("&#39;", "'").replace("&amp;", "&")


def audit_rows(action: str) -> list[tuple[Any, ...]]:
    with session_scope() as session:
        return [tuple(row) for row in session.execute(
            select(AuditEvent.actor_id, AuditEvent.subject_id, AuditEvent.patient_id, AuditEvent.outcome,
                   AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.id))]  # fmt: skip


def queued(key: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.key == key)) or 0


def answer(client: TestClient, csrf: str, request_id: int, outcome: str, message: str):  # type: ignore[no-untyped-def]
    return client.post(f"/staff/requests/{request_id}/answer", follow_redirects=False,
                       data={"outcome": outcome, "message": message, "csrf_token": csrf})  # fmt: skip


def test_staff_answer_a_refill_and_the_patient_is_told_once(app: SmsApp) -> None:
    request = ask_for_refill(app)
    before = len(app.fake.messages_to(JIM))
    client = app.client
    csrf = sign_in(client, email=DEMO_STAFF_EMAIL)
    listing = client.get("/staff/requests")
    assert listing.status_code == 200 and 'aria-current="page">Requests' in listing.text
    assert f'href="/staff/requests/{request.id}">Refill #{request.id}' in listing.text
    assert "Jim" in listing.text and "pharmacy: CVS on Main Street" in listing.text
    page = client.get(f"/staff/requests/{request.id}")
    assert page.status_code == 200
    draft = textarea(page.text, "done")
    # The draft names the pharmacy and who answers, never the medicine: it goes by SMS.
    assert "CVS on Main Street" in draft and "Sam Lee" in draft and "lisinopril" not in draft.lower()
    assert "could not send it to the pharmacy" in textarea(page.text, "declined")
    assert "never name a medicine" in page.text
    response = answer(client, csrf, request.id, "done", draft)
    assert (response.status_code, response.headers["location"]) == (303, "/staff/requests?done=answered")
    app.settle()
    assert [m.body for m in app.fake.messages_to(JIM)[before:]] == [draft]
    with session_scope() as session:
        stored = session.get(PatientRequest, request.id)
        promise = session.scalars(select(Promise).where(Promise.kind == PromiseKind.REQUEST_ANSWER)).one()
        conversation = session.get(Conversation, stored.conversation_id)
        assert (stored.status, stored.completed_at is not None) == ("done", True)
        assert (promise.status, promise.subject_id) == ("kept", request.id)
        # The chat stays with the bot: answering a request is not taking it over.
        assert conversation.state == ConversationState.BOT and conversation.assigned_staff_id is None
    sam = str(staff_id(DEMO_STAFF_EMAIL))
    (row,) = audit_rows("request.answered")
    assert row[:4] == (sam, str(request.id), request.patient_id, "ok")
    assert row[4]["outcome"] == "done" and row[4]["promises_kept"] == [promise.id]
    assert audit_rows("request.viewed")[0][:3] == (sam, str(request.id), request.patient_id)
    # The same form again (a double click, a browser retry): nothing more is sent.
    again = answer(client, csrf, request.id, "done", draft)
    assert again.status_code == 409 and "answered already" in again.text
    app.settle()
    assert len(app.fake.messages_to(JIM)) == before + 1 and queued(f"request-answer:{request.id}") == 1
    # Gone from the open list, listed as answered, and its page says who sent what.
    assert f"/staff/requests/{request.id}" not in client.get("/staff/requests").text
    answered = client.get("/staff/requests?view=answered").text
    assert f"/staff/requests/{request.id}" in answered and "Done" in answered
    shown = client.get(f"/staff/requests/{request.id}").text
    assert "By Sam Lee" in shown and "CVS on Main Street" in shown and 'name="outcome"' not in shown


def test_an_sms_answer_never_names_the_medicine_and_what_was_typed_is_kept(app: SmsApp) -> None:
    request = ask_for_refill(app)
    before = len(app.fake.messages_to(JIM))
    csrf = sign_in(app.client, email=DEMO_STAFF_EMAIL)
    typed = "Your Lisinopril refill went to CVS on Main Street."
    refused = answer(app.client, csrf, request.id, "done", typed)
    assert refused.status_code == 400
    assert "must not name the medicine (lisinopril)" in refused.text
    assert textarea(refused.text, "done") == typed
    app.settle()
    assert len(app.fake.messages_to(JIM)) == before and only_request().status == "open"
    assert [row[3] for row in audit_rows("request.answered")] == ["names_medicine"]


def test_an_appointment_answer_needs_its_day_and_time_and_a_decline_is_recorded(app: SmsApp) -> None:
    app.text_in("hi")
    app.settle()
    booking = request_in_jims_chat(RequestKind.APPOINTMENT, "book", {"appointment": "check-up", "preferred": "mornings"})
    refill = request_in_jims_chat(RequestKind.REFILL, None, {"medication": "metformin", "pharmacy": "CVS"})
    csrf = sign_in(app.client)
    draft = textarea(app.client.get(f"/staff/requests/{booking}").text, "done")
    assert "(day and time)" in draft
    unchanged = answer(app.client, csrf, booking, "done", draft)
    assert unchanged.status_code == 400 and "Replace (day and time) with the appointment&#39;s day and time" in unchanged.text
    filled = draft.replace("(day and time)", "Tuesday, Dec 1 at 9:30 am")
    assert answer(app.client, csrf, booking, "done", filled).status_code == 303
    declined = textarea(app.client.get(f"/staff/requests/{refill}").text, "declined")
    assert answer(app.client, csrf, refill, "declined", declined).status_code == 303
    app.settle()
    bodies = [m.body for m in app.fake.messages_to(JIM)]
    assert filled in bodies and declined in bodies
    with session_scope() as session:
        statuses = dict(session.execute(select(PatientRequest.id, PatientRequest.status)).tuples().all())
    assert (statuses[booking], statuses[refill]) == ("done", "declined")
    assert "Could not be done" in app.client.get("/staff/requests?view=answered").text
    for outcome, message, status, fragment in (
        ("maybe", "Hello", 400, "Choose whether the request was done"),
        ("done", "   ", 400, "Write the message the patient will receive."),
        ("done", "x" * 1601, 400, "limited to 1600 characters"),
    ):
        other = request_in_jims_chat(RequestKind.REFILL, None, {"pharmacy": "CVS"})
        response = answer(app.client, csrf, other, outcome, message)
        assert response.status_code == status and fragment in response.text
    assert answer(app.client, csrf, 999_999, "done", "Hello").status_code == 404


def test_requests_in_a_medical_chat_are_for_clinicians_and_admins(app: SmsApp) -> None:
    request = ask_for_refill(app)
    with session_scope() as session:
        session.get(Conversation, request.conversation_id).reason = "medical"
    desk = app.client
    csrf = sign_in(desk, email=DEMO_STAFF_EMAIL)
    assert f"/staff/requests/{request.id}" not in desk.get("/staff/requests").text
    assert desk.get(f"/staff/requests/{request.id}").status_code == 403
    assert answer(desk, csrf, request.id, "done", "Sent to CVS.").status_code == 403
    assert only_request().status == "open"
    clinician = TestClient(desk.app, base_url="https://testserver")
    clinician_csrf = sign_in(clinician, email=DEMO_CLINICIAN_EMAIL)
    assert f"/staff/requests/{request.id}" in clinician.get("/staff/requests").text
    assert answer(clinician, clinician_csrf, request.id, "done", "Your refill went to CVS.").status_code == 303


def test_answering_needs_a_session_and_the_csrf_token(app: SmsApp) -> None:
    request = ask_for_refill(app)
    data = {"outcome": "done", "message": "Sent to CVS."}
    assert app.client.post(f"/staff/requests/{request.id}/answer", data=data).status_code == 401
    assert app.client.get("/staff/requests", follow_redirects=False).status_code in {303, 401}
    sign_in(app.client, email=DEMO_STAFF_EMAIL)
    assert app.client.post(f"/staff/requests/{request.id}/answer", data=data).status_code == 403
    assert only_request().status == "open" and queued(f"request-answer:{request.id}") == 0


def test_a_request_settled_by_closing_its_chat_says_so(app: SmsApp) -> None:
    request = ask_for_refill(app)
    csrf = sign_in(app.client)
    app.client.post(f"/staff/conversations/{request.conversation_id}/claim", data={"csrf_token": csrf})
    closed = app.client.post(f"/staff/conversations/{request.conversation_id}/close",
                             data={"outcome": "resolved", "csrf_token": csrf}, follow_redirects=False)  # fmt: skip
    assert closed.status_code == 303
    page = app.client.get(f"/staff/requests/{request.id}").text
    assert "when staff closed the chat" in page and 'name="outcome"' not in page
    assert answer(app.client, csrf, request.id, "done", "Sent to CVS.").status_code == 409


def test_a_spanish_speaking_patient_gets_spanish_drafts_and_the_blank_is_caught(app: SmsApp) -> None:
    app.text_in("hola")
    app.settle()
    booking = request_in_jims_chat(RequestKind.APPOINTMENT, "book", {"appointment": "chequeo"})
    with session_scope() as session:
        conversation = session.get(Conversation, only_request().conversation_id)
        assert conversation.language == "es"
    csrf = sign_in(app.client)
    page = app.client.get(f"/staff/requests/{booking}").text
    draft = textarea(page, "done")
    assert draft.startswith("Su cita quedó programada para el (día y hora).") and "Dana Reyes" in draft
    assert textarea(page, "declined").startswith("Sobre su solicitud de cita")
    refused = answer(app.client, csrf, booking, "done", draft)
    assert refused.status_code == 400 and "Replace (día y hora)" in refused.text
    filled = draft.replace("(día y hora)", "martes 1 de diciembre a las 9:30")
    assert answer(app.client, csrf, booking, "done", filled).status_code == 303
    app.settle()
    assert app.fake.messages_to(JIM)[-1].body == filled


def test_a_refill_draft_without_a_pharmacy_says_so_in_the_patients_language(app: SmsApp) -> None:
    app.text_in("hola")
    app.settle()
    refill = request_in_jims_chat(RequestKind.REFILL, None, {"medication": "metformina"})
    sign_in(app.client)
    draft = textarea(app.client.get(f"/staff/requests/{refill}").text, "done")
    assert draft.startswith("Su solicitud de resurtido está lista: la enviamos a su farmacia.")
    assert "your pharmacy" not in draft and "metformina" not in draft
