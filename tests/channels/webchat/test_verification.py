"""Verifying a web chat session with a one-time code: personal information only after it."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import select

from bot.channels.models import OutboxMessage, OutboxStatus
from bot.channels.verification import VerificationCode, hash_code
from bot.conversations.flows import patient_for
from bot.conversations.models import Conversation, Message
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity, Patient
from bot.staff.models import AuditEvent
from bot.web.routers.webchat import COOKIE_NAME, address_for
from tests.channels.webchat.conftest import JIM, JIM_DOB, MARIA, MARIA_DOB, ORIGIN, Visitor, sent_codes

LAB_QUESTION = "is my lab result back?"
PERSONAL = ("taking longer than expected", "are in")


def webchat_identity(visitor: Visitor) -> ChannelIdentity:
    address = address_for(visitor.client.cookies[COOKIE_NAME])
    with session_scope() as session:
        return session.scalars(
            select(ChannelIdentity).where(ChannelIdentity.channel == "webchat", ChannelIdentity.address == address)
        ).one()


def jim_id() -> int:
    with session_scope() as session:
        return session.scalars(select(Patient.id).where(Patient.phone == JIM)).one()


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


def test_personal_information_only_after_verification(visitor: Visitor) -> None:
    before = " ".join(visitor.ask(LAB_QUESTION))
    assert "verify" in before.lower()
    assert not any(phrase in before for phrase in PERSONAL) and "Jim" not in before

    started = visitor.start_verification("(617) 555-0142", JIM_DOB)
    assert started.status_code == 202
    assert started.json()["status"] == "sent"
    [(key, channel, code)] = sent_codes()
    assert channel == "sms" and key.startswith("otp:")
    with session_scope() as session:
        text = session.scalars(select(OutboxMessage).where(OutboxMessage.key == key)).one()
        sms = session.get(ChannelIdentity, text.identity_id)
        assert (sms.channel, sms.address, text.status) == ("sms", JIM, OutboxStatus.PENDING)
        stored = session.scalars(select(VerificationCode)).one()
        # Only a salted hash of the code is stored.
        assert code not in (stored.code_hash, stored.salt) and stored.code_hash == hash_code(code=code, salt=stored.salt)
    assert "Riverside Family Clinic" in text.body and "10 minutes" in text.body

    # A requested code alone is not verification.
    assert not any(phrase in " ".join(visitor.ask(LAB_QUESTION)) for phrase in PERSONAL)

    planted = visitor.client.cookies[COOKIE_NAME]
    verified = visitor.enter_code(f"{code[:3]} {code[3:]}")
    assert verified.status_code == 200
    # The session id changes on verification; the old one now opens an anonymous chat.
    assert verified.cookies[COOKIE_NAME] != planted
    with session_scope() as session:
        assert session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == address_for(planted))).first() is None
    assert verified.json()["status"] == "verified" and verified.json()["name"] == "Jim"
    identity = webchat_identity(visitor)
    assert (identity.patient_id, identity.verification_method) == (jim_id(), "otp")
    assert identity.verified_at is not None
    with session_scope() as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "identity.verified")).one()
    assert audit.subject_id == str(identity.id)
    assert audit.details["patient_id"] == jim_id() and audit.details["method"] == "otp"
    assert JIM not in str(audit.details) and "Jim" not in str(audit.details)

    visitor.app.settle()
    assert any("Thanks, Jim. You're verified" in text for text in visitor.replies())
    after = " ".join(visitor.ask(LAB_QUESTION))
    assert "taking longer than expected" in after and "are in" in after
    # The code is single use.
    assert visitor.enter_code(code).json()["status"] == "dead"


def test_a_message_retried_after_the_session_id_rotated_is_stored_and_answered_once(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    (_, _, code) = sent_codes()[-1]
    before = visitor.client.cookies[COOKIE_NAME]
    # The page posts a message; the server stores it, but the 202 never reaches the browser.
    assert visitor.say("what are your hours", client_message_id="abc123").json() == {"status": "accepted"}
    visitor.app.settle()
    # Meanwhile the patient enters the code: the session id rotates.
    assert visitor.enter_code(code).status_code == 200
    assert visitor.client.cookies[COOKIE_NAME] != before
    # The page's retry sends the very same message with the same client message id.
    assert visitor.say("what are your hours", client_message_id="abc123").json() == {"status": "duplicate"}
    visitor.app.settle()
    with session_scope() as session:
        stored = session.scalars(select(Message.id).where(Message.direction == "in")).all()
        replies = session.scalars(select(OutboxMessage.key).where(OutboxMessage.key.like("reply:%"))).all()
    assert replies == [f"reply:{stored[0]}:0"] and len(stored) == 1
    # The stream still ties the stored message to the page's id, so the page shows it once.
    sent = [data for _, data in visitor.events() if data["kind"] == "visitor"]
    assert [(data["text"], data["client_message_id"]) for data in sent] == [("what are your hours", "abc123")]


def test_page_shows_verified_state_and_ending_the_chat_stops_sharing(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    visitor.enter_code(code)
    page = visitor.client.get("/chat").text
    assert "Verified<span id=\"verified-name\">: Jim</span>" in page
    old_cookie = visitor.client.cookies[COOKIE_NAME]
    ended = visitor.client.post("/chat/api/session/end", json={}, headers=ORIGIN)
    assert ended.json() == {"status": "ended", "was_verified": True}
    with session_scope() as session:
        old = session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == address_for(old_cookie))).one()
    assert old.verified_at is None and not old.is_verified
    assert COOKIE_NAME not in visitor.client.cookies
    visitor.client.get("/chat")
    assert visitor.client.cookies[COOKIE_NAME] != old_cookie
    assert not any(phrase in " ".join(visitor.ask(LAB_QUESTION)) for phrase in PERSONAL)


def test_verification_lapses_after_twelve_hours(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    assert visitor.enter_code(code).status_code == 200
    with time_machine.travel(utcnow() + timedelta(hours=13), tick=False):
        assert not any(phrase in " ".join(visitor.ask(LAB_QUESTION)) for phrase in PERSONAL)
    assert not webchat_identity(visitor).is_verified


def test_a_lapsed_verification_is_trusted_nowhere_even_before_its_visitor_comes_back(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    assert visitor.enter_code(code).status_code == 200
    with time_machine.travel(utcnow() + timedelta(hours=13), tick=False), session_scope() as session:
        identity = session.get(ChannelIdentity, webchat_identity(visitor).id)
        conversation = session.scalars(select(Conversation).where(Conversation.identity_id == identity.id)).one()
        # Nobody has come back to end it yet, but whatever trusts the session (a staff reply's name, an
        # action's patient) finds no patient behind it.
        assert identity.verified_at is not None and identity.patient_id == jim_id()
        assert not identity.is_verified
        assert patient_for(session=session, conversation_id=conversation.id) is None


def test_a_lapsed_verification_never_shows_its_history_again(visitor: Visitor) -> None:
    # A shared computer left open: whoever sits down 13 hours later must not read Jim's answers.
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    assert visitor.enter_code(code).status_code == 200
    answered = " ".join(visitor.ask(LAB_QUESTION))
    assert any(phrase in answered for phrase in PERSONAL)
    assert any("Jim" in text for text in visitor.replies())
    jims = visitor.client.cookies[COOKIE_NAME]
    with time_machine.travel(utcnow() + timedelta(hours=13), tick=False):
        # The event stream first (a reload of the chat reconnects it with the cookie it has).
        stream = visitor.client.get("/chat/api/events", params={"once": "1"})
        assert stream.status_code == 200
        assert "Jim" not in stream.text and not any(phrase in stream.text for phrase in PERSONAL)
        assert visitor.client.cookies[COOKIE_NAME] != jims  # a new, empty session
        assert visitor.replies() == []
        visitor.client.cookies.set(COOKIE_NAME, jims, path="/chat")
        page = visitor.client.get("/chat")
        assert "Jim" not in page.text and page.cookies[COOKIE_NAME] != jims
        # Verifying again in that browser, as anyone, starts from an empty chat too.
        visitor.client.cookies.set(COOKIE_NAME, jims, path="/chat")
        again = visitor.start_verification(MARIA, MARIA_DOB)
        assert again.status_code == 202 and again.cookies[COOKIE_NAME] != jims
    with session_scope() as session:
        old = session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == address_for(jims))).one()
        assert not old.is_verified and old.patient_id == jim_id()  # staff still see whose chat it was
        ended = session.scalars(select(AuditEvent).where(AuditEvent.action == "identity.verification_ended")).one()
        assert ended.details["reason"] == "expired"


def test_a_code_in_digits_other_than_0_to_9_is_refused_naming_the_field_and_costs_no_attempt(
    visitor: Visitor,
) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    # The same code in Arabic-Indic, Devanagari and fullwidth digits: each is a digit to \\d, none to ASCII.
    lookalikes = ["".join(chr(zero + int(d)) for d in code) for zero in (0x0660, 0x0966, 0xFF10)]
    answers = [visitor.enter_code(lookalike) for lookalike in lookalikes]

    assert [(a.status_code, a.json()["field"], a.json()["detail"]) for a in answers] == [
        (422, "code", "code: must be 6 digits (0-9)")
    ] * 3
    with session_scope() as session:
        assert session.scalars(select(VerificationCode.attempts)).one() == 0
    assert visitor.enter_code(f"{code[:3]} {code[3:]}").json()["status"] == "verified"


def test_five_wrong_codes_kill_the_code(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(key, _, code)] = sent_codes()
    results = [visitor.enter_code(wrong(code)).json() for _ in range(5)]
    assert [r["status"] for r in results] == ["wrong", "wrong", "wrong", "wrong", "dead"]
    assert [r.get("attempts_left") for r in results[:4]] == [4, 3, 2, 1]
    final = visitor.enter_code(code)
    assert (final.status_code, final.json()["status"]) == (400, "dead")
    assert not webchat_identity(visitor).is_verified
    with session_scope() as session:
        assert session.scalars(select(VerificationCode.attempts)).one() == 5
        # The undelivered text of a dead code is withdrawn.
        assert session.scalars(select(OutboxMessage.status).where(OutboxMessage.key == key)).one() == "cancelled"
        assert session.scalars(select(AuditEvent).where(AuditEvent.action == "verification.code_locked")).one()


def test_four_wrong_codes_then_the_right_one_verifies(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    for _ in range(4):
        assert visitor.enter_code(wrong(code)).json()["status"] == "wrong"
    assert visitor.enter_code(code).json()["status"] == "verified"


def test_expired_code_is_refused(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    with time_machine.travel(utcnow() + timedelta(minutes=10, seconds=1), tick=False):
        response = visitor.enter_code(code)
    assert (response.status_code, response.json()["status"]) == (400, "dead")
    assert not webchat_identity(visitor).is_verified


def test_code_just_inside_ten_minutes_still_works(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    with time_machine.travel(utcnow() + timedelta(minutes=9, seconds=50), tick=False):
        assert visitor.enter_code(code).json()["status"] == "verified"


def test_a_newer_code_replaces_the_older_one(visitor: Visitor) -> None:
    visitor.start_verification(JIM, JIM_DOB)
    visitor.start_verification(JIM, JIM_DOB)
    (_, _, old), (_, _, new) = sent_codes()
    if old != new:
        assert visitor.enter_code(old).json()["status"] == "wrong"
    assert visitor.enter_code(new).json()["status"] == "verified"


def test_code_works_only_for_the_session_that_asked(make_app) -> None:
    harness = make_app()
    harness.client.get("/chat")
    Visitor(harness).start_verification(JIM, JIM_DOB)
    [(_, _, code)] = sent_codes()
    harness.client.cookies.clear()
    harness.client.get("/chat")
    assert Visitor(harness).enter_code(code).json()["status"] == "dead"


def test_same_answer_whether_or_not_the_details_match(visitor: Visitor) -> None:
    answers = []
    for phone, dob in ((JIM, JIM_DOB), (JIM, "1957-11-03"), ("+16175550999", JIM_DOB), (MARIA, JIM_DOB)):
        response = visitor.start_verification(phone, dob)
        answers.append((response.status_code, response.json(), sorted(response.headers)))
    assert all(answer == answers[0] for answer in answers)
    assert [channel for _, channel, _ in sent_codes()] == ["sms"]
    # A code for details that matched nobody never verifies anything.
    assert visitor.enter_code("000000").json()["status"] in {"wrong", "dead"}
    assert not webchat_identity(visitor).is_verified


def test_unknown_phone_never_gets_a_text_and_its_code_never_verifies(visitor: Visitor) -> None:
    visitor.start_verification("+16175550999", "1990-01-01")
    assert sent_codes() == []
    with session_scope() as session:
        decoy = session.scalars(select(VerificationCode)).one()
    assert decoy.patient_id is None
    for _ in range(5):
        assert visitor.enter_code("123456").json()["status"] in {"wrong", "dead"}
    assert not webchat_identity(visitor).is_verified


def test_at_most_three_codes_per_phone_per_hour(make_app) -> None:
    harness = make_app()
    statuses = []
    for _ in range(4):
        # Fresh sessions: the limit follows the phone, not the browser.
        harness.client.cookies.clear()
        harness.client.get("/chat")
        statuses.append(Visitor(harness).start_verification(JIM, JIM_DOB).status_code)
    assert statuses == [202, 202, 202, 429]
    assert len(sent_codes()) == 3
    # The same limit, with the same answer, for a phone that matches nobody.
    unknown = []
    for _ in range(4):
        harness.client.cookies.clear()
        harness.client.get("/chat")
        response = Visitor(harness).start_verification("+16175550999", "1990-01-01")
        unknown.append((response.status_code, response.json()["status"]))
    assert unknown == [(202, "sent")] * 3 + [(429, "too_many")]
    with time_machine.travel(utcnow() + timedelta(minutes=61), tick=False):
        harness.client.cookies.clear()
        harness.client.get("/chat")
        assert Visitor(harness).start_verification(JIM, JIM_DOB).status_code == 202


def test_code_goes_to_a_verified_telegram_chat_too(visitor: Visitor) -> None:
    with session_scope() as session:
        session.add(ChannelIdentity(channel="telegram", address="555000111", patient_id=jim_id(), verified_at=utcnow(),
                                    verification_method="link"))  # fmt: skip
        session.add(ChannelIdentity(channel="telegram", address="555000222", patient_id=jim_id()))
    visitor.start_verification(JIM, JIM_DOB)
    codes = sent_codes()
    assert sorted(channel for _, channel, _ in codes) == ["sms", "telegram"]
    assert len({code for _, _, code in codes}) == 1


def test_spanish_patient_gets_the_code_in_spanish(visitor: Visitor) -> None:
    response = visitor.start_verification(MARIA, MARIA_DOB, lang="es")
    assert "código" in response.json()["message"]
    with session_scope() as session:
        body = session.scalars(select(OutboxMessage.body).where(OutboxMessage.key.like("otp:%"))).one()
    assert body.startswith("Su código de Riverside Family Clinic es ")


def test_verification_input_errors_name_the_field(visitor: Visitor) -> None:
    bad_phone = visitor.start_verification("not a phone", JIM_DOB)
    assert (bad_phone.status_code, bad_phone.json()["field"]) == (422, "phone")
    bad_dob = visitor.start_verification(JIM, "02/11/1957")
    assert (bad_dob.status_code, bad_dob.json()["field"]) == (422, "date_of_birth")
    missing = visitor.client.post("/chat/api/verify/start", json={"phone": JIM}, headers=ORIGIN)
    assert missing.json()["detail"] == "date_of_birth: is required"
    short = visitor.enter_code("12345")
    assert (short.status_code, short.json()["field"]) == (422, "code")
    assert sent_codes() == []
