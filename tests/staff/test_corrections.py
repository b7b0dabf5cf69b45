"""Open disclosure over HTTP on real databases: one correction per wrong message, an incident, content review."""

from __future__ import annotations

from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.conversations.models import Conversation, Direction, Message
from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.staff.models import AuditEvent, Incident
from tests.staff.conftest import DEMO_CLINICIAN_EMAIL, DEMO_STAFF_EMAIL, sign_in
from tests.staff.test_complaints import audit_rows, count, staff_id, visitor

CORRECTION = "We are open until 6 pm on weekdays, not 8 pm."
EXPECTED_TEXT = (
    "A correction from Riverside Family Clinic: an earlier message we sent you was wrong, and we are sorry. "
    f"{CORRECTION} If you have any questions, reply here or call us at +1 (617) 555-0100."
)


def bot_reply(conversation_id: int) -> Message:
    with session_scope() as session:
        message = session.scalars(
            select(Message).where(Message.conversation_id == conversation_id, Message.author_kind == "bot")
        ).one()
        session.expunge(message)
    return message


def only_conversation() -> int:
    with session_scope() as session:
        return session.scalars(select(Conversation.id)).one()


def test_a_wrong_bot_answer_is_corrected_once_and_listed_for_review(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("what are your hours")
    conversation_id = only_conversation()
    wrong = bot_reply(conversation_id)
    csrf = sign_in(chat.client, DEMO_STAFF_EMAIL)
    sam = staff_id(DEMO_STAFF_EMAIL)
    url = f"/staff/messages/{wrong.id}/correction"

    form = chat.client.get(url)
    assert form.status_code == 200
    assert '<label for="explanation">What was wrong (internal)</label>' in form.text
    assert '<label for="correction">Correction</label>' in form.text
    assert "A correction from Riverside Family Clinic" in form.text

    data = {"csrf_token": csrf, "explanation": "Said we close at 8 pm", "correction": CORRECTION}
    preview = chat.client.post(url, data=data | {"intent": "preview"})
    assert preview.status_code == 200 and EXPECTED_TEXT.replace("'", "&#39;") in preview.text
    assert count(Incident) == 0 and count(OutboxMessage, OutboxMessage.key.like("correction:%")) == 0
    # The preview shows the message again: audited as the form's view is.
    with session_scope() as session:
        purposes = session.scalars(select(AuditEvent.details).where(AuditEvent.action == "message.viewed")
                                   .order_by(AuditEvent.id)).all()  # fmt: skip
    assert purposes == [{"purpose": "correction"}, {"purpose": "correction_preview"}]

    sent = chat.client.post(url, data=data | {"intent": "send"}, follow_redirects=False)
    assert (sent.status_code, sent.headers["location"]) == (303, f"/staff/conversations/{conversation_id}")
    twice = chat.client.post(url, data=data | {"intent": "send"})
    assert twice.status_code == 409 and "already corrected" in twice.text
    assert count(Incident) == 1
    assert count(OutboxMessage, OutboxMessage.key.like("correction:%")) == 1

    with session_scope() as session:
        incident = session.scalars(select(Incident)).one()
        fix = session.get(Message, incident.correction_message_id)
        asked = session.scalars(select(Message).where(Message.direction == Direction.IN)).one()
        assert fix is not None
        actual = (incident.message_id, incident.conversation_id, incident.reported_by_id, incident.explanation,
                  incident.author_kind, incident.intent, incident.response_key, incident.review_status,
                  fix.direction, fix.author_kind, fix.author_id, fix.body)  # fmt: skip
        incident_id, intent = incident.id, asked.intent
    assert intent == "hours"
    expected = (wrong.id, conversation_id, sam, "Said we close at 8 pm", "bot", "hours", wrong.response_key,
                "pending", "out", "staff", sam, EXPECTED_TEXT)  # fmt: skip
    assert actual == expected
    assert wrong.response_key
    assert count(OutboxMessage, OutboxMessage.key == f"correction:{incident_id}") == 1
    assert [row[:3] for row in audit_rows("correction.sent")] == [(str(sam), str(incident_id), None)]

    chat.app.settle()
    replies = [data for _, data in chat.events() if data["kind"] == "reply"]
    assert (replies[-1]["text"], replies[-1]["author"]) == (EXPECTED_TEXT, "staff")
    # The page now says it was corrected and offers no second form.
    again = chat.client.get(url)
    assert (
        f"already corrected (incident #{incident_id})" in again.text and 'name="correction"' not in again.text
    )

    # Content review is for admins only.
    assert chat.client.get("/staff/admin/review").status_code == 403
    assert (
        chat.client.post(f"/staff/admin/review/{incident_id}", data={"csrf_token": csrf}).status_code == 403
    )
    sign_in(chat.client, DEMO_CLINICIAN_EMAIL)
    assert chat.client.get("/staff/admin/review").status_code == 403
    admin_csrf = sign_in(chat.client)
    review = chat.client.get("/staff/admin/review")
    assert review.status_code == 200
    row = review.text.split(f'data-incident="{incident_id}"')[1].split("</tr>")[0]
    assert '<td data-label="Intent">hours</td>' in row
    assert f"<code>{wrong.response_key}</code>" in row
    assert wrong.body and wrong.body.replace("'", "&#39;") in row
    assert "Said we close at 8 pm" in row and "Sam Lee" in row

    done = chat.client.post(f"/staff/admin/review/{incident_id}", data={"csrf_token": admin_csrf, "note": "Fixed hours"},
                            follow_redirects=False)  # fmt: skip
    assert done.status_code == 303
    with session_scope() as session:
        reviewed = session.get(Incident, incident_id)
        assert reviewed is not None
        assert (reviewed.review_status, reviewed.reviewed_by_id, reviewed.review_note) == (
            "reviewed", staff_id(DEMO_ADMIN_EMAIL), "Fixed hours",
        )  # fmt: skip
    assert f'data-incident="{incident_id}"' not in chat.client.get("/staff/admin/review").text
    assert (
        chat.client.post(f"/staff/admin/review/{incident_id}", data={"csrf_token": admin_csrf}).status_code
        == 409
    )


def test_a_staff_message_can_be_corrected_and_patient_messages_cannot(make_app) -> None:
    chat = visitor(make_app)
    chat.ask("what are your hours")
    conversation_id = only_conversation()
    csrf = sign_in(chat.client)
    # The acknowledgement of a complaint staff opened is a staff-authored message.
    opened = chat.client.post(f"/staff/conversations/{conversation_id}/complaint", data={"csrf_token": csrf})
    assert opened.status_code == 200  # redirected to the case page
    with session_scope() as session:
        staff_message = session.scalars(select(Message).where(Message.author_kind == "staff")).one()
        inbound = session.scalars(select(Message).where(Message.direction == Direction.IN)).one()
        staff_message_id, inbound_id, response_key = staff_message.id, inbound.id, staff_message.response_key
    data = {
        "csrf_token": csrf,
        "explanation": "Wrong team",
        "correction": "Our nurse will reply, not the manager.",
    }
    refused = chat.client.post(f"/staff/messages/{inbound_id}/correction", data=data)
    assert refused.status_code == 400
    assert chat.client.get(f"/staff/messages/{inbound_id}/correction").status_code == 400
    assert chat.client.get("/staff/messages/99999/correction").status_code == 404
    empty = chat.client.post(
        f"/staff/messages/{staff_message_id}/correction", data=data | {"correction": " "}
    )
    assert empty.status_code == 400 and "Write the correction" in empty.text
    no_csrf = chat.client.post(
        f"/staff/messages/{staff_message_id}/correction", data=data | {"csrf_token": ""}
    )
    assert no_csrf.status_code == 403
    assert count(Incident) == 0

    sent = chat.client.post(
        f"/staff/messages/{staff_message_id}/correction", data=data, follow_redirects=False
    )
    assert sent.status_code == 303
    with session_scope() as session:
        incident = session.scalars(select(Incident)).one()
        actual = (incident.author_kind, incident.intent, incident.response_key)
    assert actual == ("staff", None, response_key)
    assert response_key == "utter_handoff_complaint"
