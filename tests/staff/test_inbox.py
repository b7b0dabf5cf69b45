"""The staff inbox over HTTP on real databases: queue, live events, a conversation and every action."""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from fastapi.testclient import TestClient
from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.conversations import flows
from bot.conversations.models import Conversation, Handoff, HandoffReason, Message
from bot.conversations.service import open_conversation, store_inbound
from bot.db import session_scope, utcnow
from bot.demo import DEMO_ADMIN_EMAIL, DEMO_ADMIN_PASSWORD
from bot.patients.models import Patient
from bot.patients.service import get_or_create_identity
from bot.promises.models import Promise
from bot.staff.models import AuditEvent, CannedReply, StaffNote, StaffSession, StaffUser
from bot.web.routers import staff_inbox
from tests.channels.twilio.conftest import JIM, SmsApp, fake_twilio, sms_app  # noqa: F401  (fixtures)
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in

AISHA = "+16175550177"
MARIA = "+16175550101"
STRANGER = "+16175550123"
UNKNOWN_2 = "+16175550188"
CLAIMED = "Sam Lee from Riverside Family Clinic is now replying to you here."
_ids = itertools.count(1)


# -- helpers -----------------------------------------------------------------------------------


def escalate(address: str, reason: HandoffReason, *, at: datetime | None = None) -> int:
    """Store a patient's SMS and hand the conversation to staff, as the engine does; return its id."""
    with time_machine.travel(at or utcnow(), tick=False), session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address=address)
        conversation = open_conversation(session=session, identity=identity)
        message = store_inbound(session=session, conversation=conversation, text="help please",
                                provider_message_id=f"SMtest{next(_ids)}")  # fmt: skip
        assert message is not None
        message.processed_at, message.route = utcnow(), "handoff"
        flows.do_handoff(session=session, conversation_id=conversation.id, reason=reason)
        return conversation.id


def row_ids(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr data-id="(\d+)"', html)]


def other_client(app_client: TestClient) -> TestClient:
    """A second browser on the same app (its own cookies)."""
    return TestClient(app_client.app, base_url=str(app_client.base_url))


def post(client: TestClient, path: str, csrf: str, **form: str) -> object:
    return client.post(path, data={"csrf_token": csrf, **form}, follow_redirects=False)


def send_reply(client: TestClient, conversation_id: int, csrf: str, **form: str) -> object:
    """Post the reply form as a freshly rendered page would: with its own one-time submission id."""
    return post(client, f"/staff/conversations/{conversation_id}/reply", csrf,
                **{"submission": secrets.token_urlsafe(16), **form})  # fmt: skip


def audit_rows(action: str) -> list[AuditEvent]:
    with session_scope() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        )


def staff_id(email: str) -> int:
    with session_scope() as session:
        return session.scalars(select(StaffUser.id).where(StaffUser.email == email)).one()


def patient_id(phone: str) -> int:
    with session_scope() as session:
        return session.scalars(select(Patient.id).where(Patient.phone == phone)).one()


def conversation(conversation_id: int) -> Conversation:
    with session_scope() as session:
        found = session.get(Conversation, conversation_id)
        assert found is not None
        return found


@pytest.fixture
def sms(sms_app: SmsApp) -> SmsApp:  # noqa: F811
    # The public URL is https, so the staff cookie is Secure: browse over https like production.
    sms_app.client.base_url = "https://testserver"
    return sms_app


def texts_to(app: SmsApp, number: str) -> list[str]:
    return [message.body for message in app.fake.messages_to(number)]


# -- the queue ---------------------------------------------------------------------------------


@pytest.fixture
def queue_world(make_app) -> Iterator[tuple[TestClient, dict[str, int]]]:  # type: ignore[no-untyped-def]
    harness = make_app()
    now = utcnow()
    ids = {
        "unclear": escalate(MARIA, HandoffReason.UNCLEAR, at=now - timedelta(minutes=60)),
        "human": escalate(JIM, HandoffReason.HUMAN, at=now - timedelta(minutes=30)),
        "medical": escalate(UNKNOWN_2, HandoffReason.MEDICAL, at=now - timedelta(minutes=20)),
        "complaint": escalate(AISHA, HandoffReason.COMPLAINT, at=now - timedelta(minutes=10)),
        "emergency": escalate(STRANGER, HandoffReason.EMERGENCY, at=now - timedelta(minutes=5)),
    }
    yield harness.client, ids


def test_queue_sorts_by_priority_then_waiting_time_and_hides_medical_from_staff(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client)
    page = client.get("/staff")
    assert page.status_code == 200
    expected = [ids["emergency"], ids["complaint"], ids["medical"], ids["unclear"], ids["human"]]
    assert row_ids(page.text) == expected
    assert row_ids(client.get("/staff/queue").text) == expected
    assert 'aria-current="page">All open</a>' in page.text
    assert "Unknown sender" in page.text and "•••• 0123" in page.text and ">Jim</a>" in page.text

    staff = other_client(client)
    sign_in(staff, DEMO_STAFF_EMAIL)
    assert row_ids(staff.get("/staff").text) == [
        ids["emergency"],
        ids["complaint"],
        ids["unclear"],
        ids["human"],
    ]
    denied = staff.get(f"/staff/conversations/{ids['medical']}")
    assert denied.status_code == 403
    assert [(row.actor_id, row.outcome) for row in audit_rows("patient.viewed")] == [
        (str(staff_id(DEMO_STAFF_EMAIL)), "denied")
    ]
    csrf = sign_in(staff, DEMO_STAFF_EMAIL)
    assert post(staff, f"/staff/conversations/{ids['medical']}/claim", csrf).status_code == 403  # type: ignore[attr-defined]

    clinician = other_client(client)
    sign_in(clinician, DEMO_CLINICIAN_EMAIL)
    assert clinician.get(f"/staff/conversations/{ids['medical']}").status_code == 200


def test_a_number_lab_intake_files_for_a_second_patient_stops_naming_either_and_staff_see_why(queue_world) -> None:  # type: ignore[no-untyped-def]
    from bot.labs.flows import PatientIn, do_upsert_order

    client, ids = queue_world
    sign_in(client)
    assert ">Jim</a>" in client.get("/staff").text
    with session_scope() as session:
        do_upsert_order(session=session, order_id="ORD-ANN", test_name="Thyroid panel",
                        patient=PatientIn(name="Ann Wilson", phone=JIM, external_id="RFC-9001"),
                        ordered_at=utcnow() - timedelta(days=1), expected_by=utcnow() + timedelta(days=2),
                        source="rest")  # fmt: skip
    # At once, not at the next text or sweep: the queue names neither patient for the shared line.
    queue = client.get("/staff").text
    assert ">Jim</a>" not in queue and "Ann" not in queue
    page = client.get(f"/staff/conversations/{ids['human']}").text
    assert "Not verified" in page and "on file for 2 patients (a shared line)" in page
    assert "James Wilson" not in page and "Ann Wilson" not in page
    stranger = client.get(f"/staff/conversations/{ids['emergency']}").text
    assert "This number is not on file for any patient." in stranger



def test_overdue_rows_stand_out_until_a_staff_reply(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client)
    with session_scope() as session:
        for handoff in session.scalars(select(Handoff)):
            late = handoff.conversation_id == ids["human"]
            handoff.due_at = utcnow() + (timedelta(minutes=-3) if late else timedelta(hours=1))
    html = client.get("/staff").text
    overdue = re.findall(r'<tr data-id="(\d+)" class="overdue">', html)
    assert overdue == [str(ids["human"])]
    assert '<span class="pill overdue">Overdue</span>' in html
    with session_scope() as session:
        handoff = session.scalars(select(Handoff).where(Handoff.conversation_id == ids["human"])).one()
        handoff.first_response_at = utcnow()
    assert re.findall(r'<tr data-id="(\d+)" class="overdue">', client.get("/staff").text) == []


def test_views_mine_unassigned_and_closed(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    csrf = sign_in(client)
    assert post(client, f"/staff/conversations/{ids['human']}/claim", csrf).status_code == 303  # type: ignore[attr-defined]
    assert (
        post(client, f"/staff/conversations/{ids['unclear']}/close", csrf, outcome="duplicate").status_code
        == 303
    )  # type: ignore[attr-defined]
    assert row_ids(client.get("/staff?view=mine").text) == [ids["human"]]
    assert row_ids(client.get("/staff?view=unassigned").text) == [
        ids["emergency"],
        ids["complaint"],
        ids["medical"],
    ]
    closed = client.get("/staff?view=closed")
    assert row_ids(closed.text) == [ids["unclear"]]
    assert 'aria-current="page">Closed</a>' in closed.text and "duplicate" in closed.text
    assert row_ids(client.get("/staff?view=open").text) == [
        ids["emergency"],
        ids["complaint"],
        ids["medical"],
        ids["human"],
    ]


def test_search_by_name_or_phone(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client)
    cases = [
        ("jim", [ids["human"]]),
        ("WILSON", [ids["human"]]),
        ("maria", [ids["unclear"]]),
        ("(617) 555-0177", [ids["complaint"]]),
        ("+1 617 555 0123", [ids["emergency"]]),
        ("0188", [ids["medical"]]),
        ("nobody", []),
    ]
    for query, expected in cases:
        assert row_ids(client.get("/staff", params={"q": query}).text) == expected, query
        assert row_ids(client.get("/staff/queue", params={"q": query}).text) == expected, query


def test_queue_needs_a_session(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    assert client.get("/staff/queue").status_code == 401
    response = client.get("/staff", headers={"Accept": "text/html"}, follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/staff/login?next=%2Fstaff")


# -- live events -------------------------------------------------------------------------------


def read_events(lines: Iterator[str], count: int) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    """Read SSE events from a line iterator until `count` named events arrived."""
    found: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    name, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and name:
            found.append((name, json.loads(data)))
            name, data = "", ""
            if len(found) == count:
                break
    return found


def test_events_announce_a_new_patient_message(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client)
    with client.stream("GET", "/staff/events", params={"max_seconds": "20"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        [(name, first)] = read_events(lines, 1)
        assert (name, first["alerts"], first["alert_text"]) == ("changed", 0, "")
        # A new message in a waiting chat changes the version: the page refetches the queue.
        with session_scope() as session:
            conversation = session.get(Conversation, ids["human"])
            assert conversation is not None
            store_inbound(
                session=session, conversation=conversation, text="hello?", provider_message_id="SMlive1"
            )
        [(name, second)] = read_events(lines, 1)
    assert name == "changed"
    assert second["version"] != first["version"]


def test_events_stream_of_a_medical_chat_is_refused_to_staff(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client, DEMO_STAFF_EMAIL)
    response = client.get("/staff/events", params={"conversation": str(ids["medical"]), "max_seconds": "1"})
    assert response.status_code == 403


def test_events_say_signed_out_when_the_session_ends(queue_world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, _ = queue_world
    sign_in(client)
    monkeypatch.setattr(staff_inbox, "AUTH_RECHECK_SECONDS", 0.0)
    with client.stream("GET", "/staff/events", params={"max_seconds": "20"}) as response:
        lines = response.iter_lines()
        assert [name for name, _ in read_events(lines, 1)] == ["changed"]
        with session_scope() as session:
            for row in session.scalars(select(StaffSession).where(StaffSession.ended_at.is_(None))):
                row.ended_at, row.end_reason = utcnow(), "logout"
        assert [name for name, _ in read_events(lines, 1)] == ["signed-out"]


def test_searching_the_queue_is_audited_by_the_patients_it_showed_never_by_what_was_typed(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, _ = queue_world
    sign_in(client)
    client.get("/staff")  # the queue itself: not a search
    assert audit_rows("patient.searched") == []
    assert ">Jim</a>" in client.get("/staff", params={"q": "jim"}).text
    [searched] = audit_rows("patient.searched")
    assert (searched.actor_id, searched.patient_id) == (str(staff_id(DEMO_ADMIN_EMAIL)), patient_id(JIM))
    assert searched.details == {"results": 1, "patient_ids": [patient_id(JIM)]}
    # The inbox refreshes a search on screen at every change: recorded again only after a while.
    live = {"X-Live-Refresh": "1"}
    client.get("/staff/queue", params={"q": "jim"}, headers=live)
    assert len(audit_rows("patient.searched")) == 1
    client.get("/staff/queue", params={"q": "0142"})  # a new search by number
    assert len(audit_rows("patient.searched")) == 2
    start = utcnow()
    for minutes in (14, 28):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            client.get("/staff")  # someone is there (the session stays open)
    with time_machine.travel(start + timedelta(minutes=31), tick=False):
        assert client.get("/staff/queue", params={"q": "jim"}, headers=live).status_code == 200
    assert len(audit_rows("patient.searched")) == 3


def test_the_transcript_and_a_filled_in_canned_reply_are_audited_as_views_of_the_patient(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client)
    # A transcript can be fetched on its own, without the (audited) page around it.
    assert "help please" in client.get(f"/staff/conversations/{ids['human']}/transcript").text
    [viewed] = audit_rows("patient.viewed")
    assert (viewed.subject_id, viewed.patient_id, viewed.details) == (
        str(ids["human"]), patient_id(JIM), {"purpose": "transcript"})  # fmt: skip
    client.get(f"/staff/conversations/{ids['human']}/transcript", headers={"X-Live-Refresh": "1"})
    assert len(audit_rows("patient.viewed")) == 1  # live refreshes of the same view, within the window
    with session_scope() as session:
        canned_id = session.scalars(select(CannedReply.id).order_by(CannedReply.id)).first()
    filled = client.get(f"/staff/canned/{canned_id}/render", params={"conversation": ids["unclear"]})
    assert filled.status_code == 200
    assert [(row.subject_id, row.patient_id, row.details) for row in audit_rows("patient.viewed")][1:] == [
        (str(ids["unclear"]), patient_id(MARIA), {"purpose": "canned_reply"})]  # fmt: skip
    start = utcnow()
    for minutes in (14, 28):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            client.get("/staff")  # someone is there (the session stays open)
    with time_machine.travel(start + timedelta(minutes=31), tick=False):
        transcript = client.get(f"/staff/conversations/{ids['human']}/transcript", headers={"X-Live-Refresh": "1"})
        assert transcript.status_code == 200
    assert len(audit_rows("patient.viewed")) == 3


def test_staff_actions_on_a_chat_known_only_by_the_senders_phone_are_in_that_patients_trail(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    csrf = sign_in(client)
    # The chat opened before Jim's number was on file; a lab order then linked his number (labs/flows.py),
    # so the patient is known only through the sender's identity.
    with session_scope() as session:
        session.get(Conversation, ids["human"]).patient_id = None  # type: ignore[union-attr]
    assert post(client, f"/staff/conversations/{ids['human']}/claim", csrf).status_code == 303  # type: ignore[attr-defined]
    [claimed] = audit_rows("conversation.claimed")
    assert claimed.patient_id == patient_id(JIM)


# -- a conversation, end to end over SMS -------------------------------------------------------


def test_takeover_claim_silence_reply_and_hand_back(sms: SmsApp) -> None:
    csrf = sign_in(sms.client, DEMO_STAFF_EMAIL)
    assert sms.text_in("I want to talk to a person").status_code == 200
    sms.settle()
    assert len(texts_to(sms, JIM)) == 1  # the bot's hand-off reply
    [conversation_id] = row_ids(sms.client.get("/staff").text)

    page = sms.client.get(f"/staff/conversations/{conversation_id}")
    assert page.status_code == 200
    assert "I want to talk to a person" in page.text and "intent <code>speak_to_human</code>" in page.text
    assert "••/••/1957" in page.text and "•••• 0142" in page.text and "Lipid panel" in page.text
    viewed = audit_rows("patient.viewed")
    assert [(row.actor_id, row.patient_id, row.outcome) for row in viewed] == [
        (str(staff_id(DEMO_STAFF_EMAIL)), patient_id(JIM), "ok")
    ]

    claimed = post(sms.client, f"/staff/conversations/{conversation_id}/claim", csrf)
    assert (claimed.status_code, claimed.headers["location"]) == (  # type: ignore[attr-defined]
        303, f"/staff/conversations/{conversation_id}?status=claimed")  # fmt: skip
    sms.settle()
    assert texts_to(sms, JIM)[-1] == CLAIMED
    state = conversation(conversation_id)
    assert (state.state, state.assigned_staff_id) == ("staff", staff_id(DEMO_STAFF_EMAIL))

    # The bot stays silent while staff hold the chat.
    sms.text_in("are you there?")
    sms.settle()
    assert len(texts_to(sms, JIM)) == 2
    with session_scope() as session:
        message = session.scalars(select(Message).where(Message.body == "are you there?")).one()
        replies = session.scalars(
            select(OutboxMessage).where(OutboxMessage.key.like(f"reply:{message.id}:%"))
        ).all()
    assert (message.route, replies) == ("silent", [])

    sent = send_reply(sms.client, conversation_id, csrf,
        body="Hi Jim, Sam here. How can I help?",
    )
    assert sent.status_code == 303  # type: ignore[attr-defined]
    sms.settle()
    assert texts_to(sms, JIM)[-1] == "Hi Jim, Sam here. How can I help?"
    with session_scope() as session:
        handoff = session.scalars(select(Handoff).where(Handoff.conversation_id == conversation_id)).one()
        promise = session.scalars(select(Promise).where(Promise.subject_type == "handoff",
                                                        Promise.subject_id == handoff.id)).one()  # fmt: skip
        staff_message = session.scalars(select(Message).where(Message.author_kind == "staff")).one()
        delivery = session.scalars(
            select(OutboxMessage).where(OutboxMessage.message_id == staff_message.id)
        ).one()
    assert handoff.first_response_at is not None and handoff.claimed_by_id == staff_id(DEMO_STAFF_EMAIL)
    assert (promise.kind, promise.status, promise.kept_at is not None) == ("handoff_reply", "kept", True)
    assert (delivery.key.rpartition(":")[0], delivery.status, staff_message.author_id) == (
        f"staff-reply:{conversation_id}", "sent", staff_id(DEMO_STAFF_EMAIL))  # fmt: skip
    fragment = sms.client.get(f"/staff/conversations/{conversation_id}/transcript").text
    assert "Hi Jim, Sam here." in fragment and '<span class="delivery sent">sent</span>' in fragment
    assert f'href="/staff/messages/{staff_message.id}/correction"' in fragment

    handed = post(sms.client, f"/staff/conversations/{conversation_id}/handback", csrf)
    assert handed.status_code == 303  # type: ignore[attr-defined]
    sms.settle()
    assert texts_to(sms, JIM)[-1].startswith("Thanks for talking with us.")
    sms.text_in("what are your hours")
    sms.settle()
    assert "8 am" in texts_to(sms, JIM)[-1]
    state = conversation(conversation_id)
    assert (state.state, state.assigned_staff_id) == ("bot", None)
    assert [row.action for row in audit_rows("conversation.claimed")] == ["conversation.claimed"]
    assert [row.patient_id for row in audit_rows("conversation.replied")] == [patient_id(JIM)]
    assert [row.patient_id for row in audit_rows("conversation.handed_back")] == [patient_id(JIM)]


def test_two_staff_claiming_at_once_only_one_wins(sms: SmsApp) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    sam, priya = other_client(sms.client), other_client(sms.client)
    tokens = {sam: sign_in(sam, DEMO_STAFF_EMAIL), priya: sign_in(priya, DEMO_CLINICIAN_EMAIL)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda c: post(c, f"/staff/conversations/{conversation_id}/claim", tokens[c]),
                                  [sam, priya]))  # fmt: skip
    assert sorted(r.status_code for r in responses) == [303, 409]  # type: ignore[attr-defined]
    loser = next(r for r in responses if r.status_code == 409)  # type: ignore[attr-defined]
    winner = conversation(conversation_id).assigned_staff_id
    winner_name = "Sam Lee" if winner == staff_id(DEMO_STAFF_EMAIL) else "Priya Patel"
    assert loser.json() == {"detail": f"{winner_name} already claimed this chat."}  # type: ignore[attr-defined]
    sms.settle()
    assert len([t for t in texts_to(sms, JIM) if "is now replying" in t]) == 1
    assert [row.outcome for row in audit_rows("conversation.claimed")] == ["ok", "conflict"]


def conversation_id_of_jim() -> int:
    with session_scope() as session:
        return session.scalars(
            select(Conversation.id)
            .where(Conversation.patient_id == patient_id(JIM))
            .order_by(Conversation.id.desc())
        ).first()  # type: ignore[return-value]


def test_send_on_an_unclaimed_bot_chat_claims_it_first(sms: SmsApp) -> None:
    sms.text_in("what are your hours")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    assert conversation(conversation_id).state == "bot"
    csrf = sign_in(sms.client)
    assert (
        send_reply(sms.client, conversation_id, csrf, body="Hello from the desk"
        ).status_code
        == 303
    )  # type: ignore[attr-defined]
    sms.settle()
    assert texts_to(sms, JIM)[-2:] == ["Dana Reyes from Riverside Family Clinic is now replying to you here.",
                                        "Hello from the desk"]  # fmt: skip
    with session_scope() as session:
        handoff = session.scalars(select(Handoff).where(Handoff.conversation_id == conversation_id)).one()
    assert (handoff.reason, handoff.claimed_by_id, handoff.first_response_at is not None) == (
        "human", staff_id(DEMO_ADMIN_EMAIL), True)  # fmt: skip


def form_submission(client: TestClient, conversation_id: int) -> str:
    """Return the one-time submission id the conversation page's reply form carries."""
    page = client.get(f"/staff/conversations/{conversation_id}").text
    [found] = re.findall(r'<input type="hidden" name="submission" value="([^"]+)">', page)
    return found


def staff_replies(conversation_id: int) -> tuple[list[str], list[str], list[int]]:
    """Return the staff messages, the reply outbox keys and the callback promises of a conversation."""
    with session_scope() as session:
        bodies = session.scalars(select(Message.body).where(Message.conversation_id == conversation_id,
                                                            Message.author_kind == "staff")).all()  # fmt: skip
        keys = session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like("staff-reply:%"))).all()
        promises = session.scalars(select(Promise.id).where(Promise.kind == "callback")).all()
    return [b or "" for b in bodies], list(keys), list(promises)


def test_a_reply_form_submitted_twice_texts_the_patient_once(sms: SmsApp) -> None:
    # A double click, a browser retry or a resubmitted form posts the same rendered form again.
    sms.text_in("what are your hours")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    submission = form_submission(sms.client, conversation_id)
    form = {"body": "Your refill is ready for pickup.", "followup": "next_day", "submission": submission}
    responses = [post(sms.client, f"/staff/conversations/{conversation_id}/reply", csrf, **form) for _ in range(2)]
    sms.settle()
    expected = f"/staff/conversations/{conversation_id}?status=claimed_sent"
    assert [(r.status_code, r.headers["location"]) for r in responses] == [(303, expected)] * 2  # type: ignore[attr-defined]
    bodies, keys, promises = staff_replies(conversation_id)
    assert (len(bodies), keys, len(promises)) == (1, [f"staff-reply:{conversation_id}:{submission}"], 1)
    assert [t for t in texts_to(sms, JIM) if t.startswith("Your refill is ready")] == bodies
    assert len(audit_rows("conversation.replied")) == 1
    # A fresh page is a new form: the same words sent again on purpose go out again.
    assert form_submission(sms.client, conversation_id) != submission
    again = send_reply(sms.client, conversation_id, csrf, body="Your refill is ready for pickup.")
    assert (again.status_code, again.headers["location"]) == (  # type: ignore[attr-defined]
        303, f"/staff/conversations/{conversation_id}?status=sent")  # fmt: skip
    assert len(staff_replies(conversation_id)[0]) == 2


def test_a_reply_form_posted_twice_at_once_texts_the_patient_once(sms: SmsApp) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    form = {"body": "Hi Jim, Dana here.", "submission": form_submission(sms.client, conversation_id)}
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(
            lambda _: post(sms.client, f"/staff/conversations/{conversation_id}/reply", csrf, **form), range(2)))  # fmt: skip
    sms.settle()
    assert [r.status_code for r in responses] == [303, 303]  # type: ignore[attr-defined]
    assert len({r.headers["location"] for r in responses}) == 1  # type: ignore[attr-defined]
    assert (staff_replies(conversation_id)[0], texts_to(sms, JIM).count("Hi Jim, Dana here.")) == (
        ["Hi Jim, Dana here."], 1)  # fmt: skip


@pytest.mark.parametrize("submission", ["", "short", "x" * 65, "not/a-token-at-all!!"])
def test_a_reply_without_a_well_formed_submission_id_is_refused(sms: SmsApp, submission: str) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    refused = post(sms.client, f"/staff/conversations/{conversation_id}/reply", csrf, body="Hello",
                   submission=submission)  # fmt: skip
    assert refused.status_code == 400  # type: ignore[attr-defined]
    assert "submission id is missing or malformed" in refused.text  # type: ignore[attr-defined]
    assert staff_replies(conversation_id) == ([], [], [])


def test_reply_refuses_empty_or_too_long_text_with_a_message(sms: SmsApp) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    empty = send_reply(sms.client, conversation_id, csrf, body="   ")
    assert empty.status_code == 400  # type: ignore[attr-defined]
    assert "Write a reply before pressing Send." in empty.text  # type: ignore[attr-defined]
    long = send_reply(sms.client, conversation_id, csrf, body="x" * 1601)
    assert long.status_code == 400  # type: ignore[attr-defined]
    assert "limited to 1600 characters" in long.text and "this one has 1601" in long.text  # type: ignore[attr-defined]
    assert "x" * 1601 in long.text  # what was typed is kept  # type: ignore[attr-defined]
    with session_scope() as session:
        assert session.scalars(select(Message).where(Message.author_kind == "staff")).all() == []
    assert [row.outcome for row in audit_rows("conversation.replied")] == ["invalid", "invalid"]


def test_a_reply_by_sms_may_not_name_the_patients_tests(sms: SmsApp) -> None:
    # Jim's lipid panel is on screen beside the reply box; an SMS sits on his lock screen.
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    named = send_reply(sms.client, conversation_id, csrf, body="Good news, your LIPID PANEL came back normal.")
    assert named.status_code == 400  # type: ignore[attr-defined]
    assert "Texts by SMS must not name tests or results, and this one names Lipid panel." in named.text  # type: ignore[attr-defined]
    with session_scope() as session:
        assert session.scalars(select(Message).where(Message.author_kind == "staff")).all() == []
    assert [row.outcome for row in audit_rows("conversation.replied")] == ["invalid"]
    fine = send_reply(sms.client, conversation_id, csrf,
                      body="The doctor has reviewed your results: please see the portal.")
    assert fine.status_code == 303  # type: ignore[attr-defined]


# Wednesday 2 December 2026, 10:00 in Cambridge MA (15:00 UTC); the clinic is open 08:00-18:00 on weekdays.
WEDNESDAY_10AM = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
FOLLOWUP_CASES = [
    ("today", "", datetime(2026, 12, 2, 23, 0, tzinfo=UTC), "We'll get back to you by 6 pm today."),
    ("next_day", "", datetime(2026, 12, 3, 23, 0, tzinfo=UTC), "We'll get back to you by 6 pm tomorrow."),
    (
        "date",
        "2026-12-04",
        datetime(2026, 12, 4, 23, 0, tzinfo=UTC),
        "We'll get back to you by 6 pm on Friday.",
    ),
]


@pytest.mark.parametrize(("choice", "on", "due", "sentence"), FOLLOWUP_CASES)
def test_a_reply_can_carry_a_follow_up_promise_in_working_hours(sms: SmsApp, choice: str, on: str, due: datetime,
                                                                  sentence: str) -> None:  # fmt: skip
    with time_machine.travel(WEDNESDAY_10AM, tick=True):
        sms.text_in("I want to talk to a person")
        sms.settle()
        conversation_id = conversation_id_of_jim()
        csrf = sign_in(sms.client)
        response = send_reply(sms.client, conversation_id, csrf,
                        body="I'll check with the doctor.", followup=choice, followup_date=on)  # fmt: skip
        assert response.status_code == 303  # type: ignore[attr-defined]
        sms.settle()
    assert texts_to(sms, JIM)[-1] == f"I'll check with the doctor. {sentence}"
    with session_scope() as session:
        message = session.scalars(select(Message).where(Message.author_kind == "staff")).one()
        promise = session.scalars(select(Promise).where(Promise.kind == "callback")).one()
    assert (promise.subject_type, promise.subject_id, promise.reason_key, promise.due_at, promise.status) == (
        "message", message.id, "staff_followup", due, "open")  # fmt: skip
    assert (promise.patient_id, promise.conversation_id) == (patient_id(JIM), conversation_id)


def test_a_follow_up_date_must_be_a_future_working_day(sms: SmsApp) -> None:
    with time_machine.travel(WEDNESDAY_10AM, tick=True):
        sms.text_in("I want to talk to a person")
        sms.settle()
        conversation_id = conversation_id_of_jim()
        csrf = sign_in(sms.client)
        for on, message in [("2026-12-05", "The clinic is closed on 2026-12-05"),
                            ("2026-12-02", "The follow-up date 2026-12-02 is not in the future."),
                            ("", "Pick the follow-up date")]:  # fmt: skip
            response = send_reply(sms.client, conversation_id, csrf, body="Soon.", followup="date", followup_date=on)
            assert response.status_code == 400, on  # type: ignore[attr-defined]
            assert message in response.text  # type: ignore[attr-defined]
    with session_scope() as session:
        assert session.scalars(select(Promise).where(Promise.kind == "callback")).all() == []


def test_a_note_is_kept_and_never_sent(sms: SmsApp) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    with session_scope() as session:
        queued_before = len(session.scalars(select(OutboxMessage)).all())
    response = post(
        sms.client, f"/staff/conversations/{conversation_id}/note", csrf, note="Called his pharmacy."
    )
    assert (response.status_code, response.headers["location"]) == (  # type: ignore[attr-defined]
        303, f"/staff/conversations/{conversation_id}?status=noted")  # fmt: skip
    sms.settle()
    with session_scope() as session:
        notes = [(n.body, n.patient_id, n.author_id) for n in session.scalars(select(StaffNote))]
        assert len(session.scalars(select(OutboxMessage)).all()) == queued_before
    assert notes == [("Called his pharmacy.", patient_id(JIM), staff_id(DEMO_ADMIN_EMAIL))]
    assert len(texts_to(sms, JIM)) == 1
    page = sms.client.get(f"/staff/conversations/{conversation_id}?status=noted").text
    assert "Internal note by Dana Reyes (not sent)" in page and "Note added." in page
    assert [row.details for row in audit_rows("note.added")] == [{"note_id": 1}]


def test_transfer_to_a_colleague_tells_the_patient(sms: SmsApp) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    sam = other_client(sms.client)
    csrf = sign_in(sam, DEMO_STAFF_EMAIL)
    assert post(sam, f"/staff/conversations/{conversation_id}/claim", csrf).status_code == 303  # type: ignore[attr-defined]
    priya = staff_id(DEMO_CLINICIAN_EMAIL)
    response = post(sam, f"/staff/conversations/{conversation_id}/transfer", csrf, to_staff_id=str(priya))
    assert response.status_code == 303  # type: ignore[attr-defined]
    sms.settle()
    assert (
        texts_to(sms, JIM)[-1] == "Priya Patel from Riverside Family Clinic will continue helping you here."
    )
    assert conversation(conversation_id).assigned_staff_id == priya
    # Sam no longer holds it: he cannot reply, transfer or close.
    held = send_reply(sam, conversation_id, csrf, body="still me")
    assert (held.status_code, held.json()) == (409, {"detail": "Priya Patel is handling this chat, so you cannot "  # type: ignore[attr-defined]
                                                "reply to it. Ask them to transfer it to you."})  # fmt: skip
    [event] = audit_rows("conversation.transferred")
    assert (event.details["to_staff_id"], event.details["from_staff_id"], event.patient_id) == (
        priya, staff_id(DEMO_STAFF_EMAIL), patient_id(JIM))  # fmt: skip
    with session_scope() as session:
        keys = session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like("transfer:%"))).all()
    assert keys == [f"transfer:{event.details['handoff_id']}:{priya}:{event.id}"]


def test_a_medical_chat_cannot_be_transferred_to_front_desk_staff(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    conversation_id = escalate(JIM, HandoffReason.MEDICAL)
    csrf = sign_in(client)
    response = post(client, f"/staff/conversations/{conversation_id}/transfer", csrf,
                    to_staff_id=str(staff_id(DEMO_STAFF_EMAIL)))  # fmt: skip
    assert (response.status_code, response.json()) == (400, {"detail": "Sam Lee cannot take a medical conversation: "  # type: ignore[attr-defined]
                                                              "pick a clinician."})  # fmt: skip
    page = client.get(f"/staff/conversations/{conversation_id}").text
    assert "Sam Lee (staff)" not in page and "Priya Patel (clinician)" in page


def test_close_with_an_outcome_sends_nothing_and_cancels_an_unkept_promise(sms: SmsApp) -> None:
    sms.text_in("I want to talk to a person")
    sms.settle()
    conversation_id = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    bad = post(sms.client, f"/staff/conversations/{conversation_id}/close", csrf, outcome="whatever")
    assert bad.status_code == 400  # type: ignore[attr-defined]
    response = post(
        sms.client, f"/staff/conversations/{conversation_id}/close", csrf, outcome="no_reply_needed"
    )
    assert response.status_code == 303  # type: ignore[attr-defined]
    sms.settle()
    assert len(texts_to(sms, JIM)) == 1
    state = conversation(conversation_id)
    assert (state.state, state.outcome, state.closed_by_id, state.closed_at is not None) == (
        "closed", "no_reply_needed", staff_id(DEMO_ADMIN_EMAIL), True)  # fmt: skip
    with session_scope() as session:
        handoff = session.scalars(select(Handoff).where(Handoff.conversation_id == conversation_id)).one()
        promise = session.scalars(
            select(Promise).where(Promise.subject_type == "handoff", Promise.subject_id == handoff.id)
        ).one()
    assert (handoff.resolved_at is not None, promise.status) == (True, "cancelled")
    again = post(sms.client, f"/staff/conversations/{conversation_id}/claim", csrf)
    assert again.status_code == 409  # type: ignore[attr-defined]
    # The patient's next message opens a new conversation, answered by the bot.
    sms.text_in("what are your hours")
    sms.settle()
    assert conversation_id_of_jim() != conversation_id
    assert "8 am" in texts_to(sms, JIM)[-1]
    assert row_ids(sms.client.get("/staff?view=closed").text) == [conversation_id]


def test_transcript_spans_the_patients_channels_and_conversations(sms: SmsApp) -> None:
    sms.text_in("what are your hours")
    sms.settle()
    first = conversation_id_of_jim()
    csrf = sign_in(sms.client)
    post(sms.client, f"/staff/conversations/{first}/close", csrf, outcome="resolved")
    sms.text_in("I want to talk to a person")
    sms.settle()
    second = conversation_id_of_jim()
    assert second != first
    page = sms.client.get(f"/staff/conversations/{second}").text
    assert page.index("what are your hours") < page.index("I want to talk to a person")
    assert f'<a href="/staff/conversations/{first}">conversation {first}</a>' in page
    assert f'<a href="/staff/conversations/{first}">Conversation {first}</a>' in page
    assert "response <code>utter_hours" in page
    assert f'action="/staff/conversations/{second}/complaint"' in page


def test_forms_need_the_csrf_token(queue_world) -> None:  # type: ignore[no-untyped-def]
    client, ids = queue_world
    sign_in(client)
    response = client.post(f"/staff/conversations/{ids['human']}/claim", data={}, follow_redirects=False)
    assert response.status_code == 403
    assert conversation(ids["human"]).state == "waiting"


def test_sign_in_still_works_for_the_demo_admin(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    response = client.post("/staff/login", data={"email": DEMO_ADMIN_EMAIL, "password": DEMO_ADMIN_PASSWORD},
                           follow_redirects=True)  # fmt: skip
    assert response.status_code == 200 and "<h1>Inbox</h1>" in response.text
