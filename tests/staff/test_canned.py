"""Canned replies on real databases: admin management, placeholder checks, and filling them in for a patient."""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.conversations.models import HandoffReason
from bot.db import session_scope
from bot.staff.models import AuditEvent, CannedReply
from tests.staff.conftest import DEMO_STAFF_EMAIL, sign_in
from tests.staff.test_inbox import JIM, MARIA, STRANGER, escalate, other_client, post

GREETING_EN = "Hi {patient_name}, {staff_name} here from {clinic_name}. Call {clinic_phone} any time."
GREETING_ES = "Hola {patient_name}, soy {staff_name} de {clinic_name}. Llame al {clinic_phone}."


def canned_id(title: str) -> int:
    with session_scope() as session:
        return session.scalars(select(CannedReply.id).where(CannedReply.title == title)).one()


def test_admin_adds_a_reply_and_unknown_placeholders_are_refused_by_name(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    bad = post(client, "/staff/admin/canned", csrf, title="Oops", body_en="Hi {first_name} from {clinic}",
               body_es="Hola")  # fmt: skip
    assert bad.status_code == 400  # type: ignore[attr-defined]
    assert "unknown placeholder(s) {clinic}, {first_name}" in bad.text  # type: ignore[attr-defined]
    assert 'value="Oops"' in bad.text  # the form keeps what was typed  # type: ignore[attr-defined]
    braces = post(
        client, "/staff/admin/canned", csrf, title="Oops", body_en="Hi", body_es="Hola {patient_name"
    )
    assert braces.status_code == 400 and "The Spanish text has a { or } without its pair" in braces.text  # type: ignore[attr-defined]

    made = post(
        client, "/staff/admin/canned", csrf, title="Greeting", body_en=GREETING_EN, body_es=GREETING_ES
    )
    assert (made.status_code, made.headers["location"]) == (303, "/staff/admin/canned?status=created")  # type: ignore[attr-defined]
    page = client.get("/staff/admin/canned?status=created")
    assert page.status_code == 200 and "Canned reply added." in page.text and "Greeting" in page.text
    duplicate = post(client, "/staff/admin/canned", csrf, title="Greeting", body_en="Hi", body_es="Hola")
    assert duplicate.status_code == 400 and "already exists" in duplicate.text  # type: ignore[attr-defined]
    with session_scope() as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("canned.%"))).all()
    assert actions == ["canned.created"]


def test_canned_management_is_admin_only(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client, DEMO_STAFF_EMAIL)
    assert client.get("/staff/admin/canned").status_code == 403
    assert (
        post(client, "/staff/admin/canned", csrf, title="X", body_en="Hi", body_es="Hola").status_code == 403
    )  # type: ignore[attr-defined]
    with session_scope() as session:
        assert session.scalars(select(CannedReply.id).where(CannedReply.title == "X")).first() is None


def test_render_fills_placeholders_in_the_patients_language(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    post(client, "/staff/admin/canned", csrf, title="Greeting", body_en=GREETING_EN, body_es=GREETING_ES)
    reply = canned_id("Greeting")
    maria = escalate(MARIA, HandoffReason.HUMAN)
    with session_scope() as session:
        from bot.conversations.models import Conversation

        found = session.get(Conversation, maria)
        assert found is not None
        found.language = "es"
    jim = escalate(JIM, HandoffReason.HUMAN)
    stranger = escalate(STRANGER, HandoffReason.HUMAN)
    cases = [
        (maria, "Hola Maria, soy Dana Reyes de Riverside Family Clinic. Llame al +1 (617) 555-0100."),
        (jim, "Hi Jim, Dana Reyes here from Riverside Family Clinic. Call +1 (617) 555-0100 any time."),
        # An unverified sender is never greeted by the record's name.
        (stranger, "Hi, Dana Reyes here from Riverside Family Clinic. Call +1 (617) 555-0100 any time."),
    ]
    for conversation_id, expected in cases:
        response = client.get(f"/staff/canned/{reply}/render", params={"conversation": conversation_id})
        assert (response.status_code, response.json()) == (200, {"text": expected})
    # Without JavaScript the page itself is shown with the Reply box prefilled.
    page = client.get(f"/staff/conversations/{jim}", params={"canned": reply}).text
    assert re.search(r'<textarea id="reply"[^>]*>Hi Jim, Dana Reyes here', page)


def test_editing_and_withdrawing_a_reply(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    csrf = sign_in(client)
    reply = canned_id("Call us to book")  # seeded with the demo clinic
    jim = escalate(JIM, HandoffReason.HUMAN)
    edited = post(client, f"/staff/admin/canned/{reply}", csrf, title="Call us to book",
                  body_en="Please call {clinic_phone}.", body_es="Llame al {clinic_phone}.")  # fmt: skip
    assert edited.status_code == 303  # type: ignore[attr-defined]
    response = client.get(f"/staff/canned/{reply}/render", params={"conversation": jim})
    assert response.json() == {"text": "Please call +1 (617) 555-0100."}
    rejected = post(client, f"/staff/admin/canned/{reply}", csrf, title="Call us to book",
                    body_en="Please call {phone}.", body_es="Llame.")  # fmt: skip
    assert rejected.status_code == 400 and "unknown placeholder(s) {phone}" in rejected.text  # type: ignore[attr-defined]

    withdrawn = post(client, f"/staff/admin/canned/{reply}/active", csrf, active="false")
    assert withdrawn.headers["location"] == "/staff/admin/canned?status=deactivated"  # type: ignore[attr-defined]
    assert client.get(f"/staff/canned/{reply}/render", params={"conversation": jim}).status_code == 404
    page = client.get(f"/staff/conversations/{jim}").text
    assert "Call us to book</option>" not in page and "Refill sent to pharmacy</option>" in page
    with session_scope() as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("canned.%"))).all()
    assert actions == ["canned.updated", "canned.deactivated"]


def test_staff_cannot_render_into_a_medical_chat(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    medical = escalate(JIM, HandoffReason.MEDICAL)
    staff = other_client(client)
    sign_in(staff, DEMO_STAFF_EMAIL)
    reply = canned_id("Refill sent to pharmacy")
    assert staff.get(f"/staff/canned/{reply}/render", params={"conversation": medical}).status_code == 403
