"""Linking a Telegram chat to a patient: the sender's own shared number, or a one-time /start token."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from bot.channels.linking import TelegramLinkToken, create_link_token, hash_token
from bot.conversations.models import Direction, Message
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity, Patient
from bot.staff.models import AuditEvent
from tests.channels.telegram.conftest import CHAT, TelegramApp
from tests.fakes.fake_telegram import contact_update, text_update

JIM = "+16175550142"
OTHER_CHAT = 6002


def patient_id(phone: str) -> int:
    with session_scope() as session:
        return session.scalars(select(Patient.id).where(Patient.phone == phone)).one()


def identity(chat_id: int = CHAT) -> ChannelIdentity:
    with session_scope() as session:
        return session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == str(chat_id))).one()


def audit_trail(action_prefix: str = "identity.") -> list[tuple[str, dict]]:
    with session_scope() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action.startswith(action_prefix)).order_by(AuditEvent.id)
        )
        return [(e.action, e.details) for e in events]


def inbound(provider_message_id: str) -> Message:
    with session_scope() as session:
        return session.scalars(
            select(Message).where(Message.direction == Direction.IN, Message.provider_message_id == provider_message_id)
        ).one()


def make_token(*, ttl: timedelta = timedelta(hours=1)) -> str:
    with session_scope() as session:
        return create_link_token(session=session, patient_id=patient_id(JIM), ttl=ttl)


def test_sharing_your_own_number_links_and_verifies_the_chat(telegram_app: TelegramApp) -> None:
    fake = telegram_app.fake
    telegram_app.post(text_update(1, CHAT, "are my lab results back?"))
    telegram_app.settle()
    telegram_app.post(contact_update(2, CHAT, "16175550142", contact_user_id=CHAT))
    telegram_app.settle()
    telegram_app.post(text_update(3, CHAT, "are my lab results back?"))
    telegram_app.settle()

    asked, linked, *status = fake.sent
    # An unverified patient asking for their results is offered the button that shares their number.
    assert asked.reply_markup["keyboard"] == [[{"text": "Share my phone number", "request_contact": True}]]
    assert asked.reply_markup["one_time_keyboard"] is True
    assert linked.text.startswith("Thanks, Jim. This Telegram chat is now linked to your Riverside Family Clinic")
    assert linked.reply_markup == {"remove_keyboard": True}
    linked_identity = identity()
    assert (linked_identity.patient_id, linked_identity.verification_method) == (patient_id(JIM), "telegram_contact")
    assert linked_identity.verified_at is not None
    # The number it rests on is kept, so the link ends if the clinic files it for someone else too.
    assert linked_identity.linked_phone == "+16175550142"
    assert audit_trail() == [
        ("identity.linked", {"patient_id": patient_id(JIM), "method": "telegram_contact",
                             "previous_patient_id": None, "update_id": 2}),
    ]  # fmt: skip
    # The contact never reached the classifier: it was answered when it arrived.
    contact = inbound("update:2")
    assert (contact.body, contact.intent, contact.route) == ("[shared contact]", "telegram_contact", "answer")
    # Now the chat is verified, the same question gets the patient's own status.
    with session_scope() as session:
        keys = session.scalars(
            select(Message.response_key).where(Message.direction == Direction.OUT).order_by(Message.id)
        ).all()
    assert keys[:2] == ["utter_lab_results_unverified", "utter_telegram_linked"]
    assert status and all(key.startswith("utter_lab_status_") for key in keys[2:])


def test_someone_elses_contact_is_refused(telegram_app: TelegramApp) -> None:
    telegram_app.post(contact_update(1, CHAT, JIM, contact_user_id=CHAT + 1))
    telegram_app.post(contact_update(2, CHAT, JIM, contact_user_id=None))
    telegram_app.settle()

    refused = telegram_app.fake.sent
    assert [m.text[:32] for m in refused] == ["For your privacy I can only use ", "For your privacy I can only use "]
    assert refused[0].reply_markup["keyboard"] == [[{"text": "Share my phone number", "request_contact": True}]]
    assert (identity().patient_id, identity().verified_at) == (None, None)
    assert [(a, d["reason"]) for a, d in audit_trail()] == [("identity.link_refused", "contact_not_own")] * 2


def test_your_own_number_not_on_file_links_nothing(telegram_app: TelegramApp) -> None:
    telegram_app.post(contact_update(1, CHAT, "+16175559999", contact_user_id=CHAT))
    telegram_app.settle()

    [reply] = telegram_app.fake.sent
    assert reply.text.startswith("Sorry, I couldn't link this chat to your record.")
    assert identity().patient_id is None
    assert [d["reason"] for _, d in audit_trail()] == ["no_single_patient"]


def test_a_link_token_links_one_chat_once(telegram_app: TelegramApp) -> None:
    token = make_token()
    telegram_app.post(text_update(1, CHAT, f"/start {token}"))
    telegram_app.post(text_update(2, OTHER_CHAT, f"/start {token}"))
    telegram_app.post(text_update(3, CHAT, f"/start {token}"))
    telegram_app.settle()

    first, other, again = telegram_app.fake.sent
    assert (first.chat_id, first.text[:12]) == (CHAT, "Thanks, Jim.")
    assert (other.chat_id, other.text[:17]) == (OTHER_CHAT, "Sorry, I couldn't")
    # The chat that used the link taps it again: it is linked, and is told so, not alarmed.
    assert (again.chat_id, again.text[:12]) == (CHAT, "Thanks, Jim.")
    linked = identity()
    assert (linked.patient_id, linked.verification_method) == (patient_id(JIM), "telegram_deeplink")
    assert identity(OTHER_CHAT).patient_id is None
    assert [(a, d.get("reason")) for a, d in audit_trail()] == [("identity.linked", None),
                                                              ("identity.link_refused", "token_used")]  # fmt: skip
    # Only the token's hash is kept, and the stored message does not carry the token.
    with session_scope() as session:
        row = session.scalars(select(TelegramLinkToken)).one()
    assert (row.token_hash, row.used_by_identity_id) == (hash_token(token), linked.id)
    assert inbound("update:1").body == "/start"


def test_expired_and_unknown_tokens_link_nothing(telegram_app: TelegramApp) -> None:
    token = make_token()
    with session_scope() as session:
        session.execute(update(TelegramLinkToken).values(expires_at=utcnow() - timedelta(seconds=1)))
    telegram_app.post(text_update(1, CHAT, f"/start {token}"))
    telegram_app.post(text_update(2, CHAT, "/start not-a-real-token"))
    telegram_app.settle()

    assert [m.text[:17] for m in telegram_app.fake.sent] == ["Sorry, I couldn't"] * 2
    assert identity().patient_id is None
    assert [d["reason"] for _, d in audit_trail()] == ["token_expired", "token_unknown"]


def test_plain_start_greets_in_the_patients_language_and_undoes_a_block(telegram_app: TelegramApp) -> None:
    telegram_app.post(text_update(1, CHAT, "hola"))
    with session_scope() as session:
        session.execute(update(ChannelIdentity).values(opted_out_at=utcnow()))
    telegram_app.post(text_update(2, OTHER_CHAT, "/start", language_code="es"))
    telegram_app.post(text_update(3, CHAT, "/start@riverside_test_bot"))
    telegram_app.settle()

    by_chat = {m.chat_id: m.text for m in telegram_app.fake.sent}
    assert by_chat[OTHER_CHAT].startswith("Hola, le escribe Riverside Family Clinic.")
    assert CHAT in by_chat
    assert identity().opted_out_at is None
    start = inbound("update:2")
    assert (start.body, start.intent, start.route, start.processed_at is not None) == ("/start", "greeting", "answer", True)



def test_the_cli_link_for_a_patient_links_the_chat_that_opens_it(
    telegram_app: TelegramApp, capsys: pytest.CaptureFixture[str]
) -> None:
    from bot.cli import main

    assert main(["telegram", "link", "--phone", "(617) 555-0142", "--hours", "24"]) == 0
    out, err = capsys.readouterr()
    prefix = "https://t.me/riverside_test_bot?start="
    assert out.startswith(prefix) and err == f"one-time link for patient {patient_id(JIM)}, valid 24 h\n"
    telegram_app.post(text_update(1, CHAT, f"/start {out.strip().removeprefix(prefix)}"))
    telegram_app.settle()

    [reply] = telegram_app.fake.sent
    assert reply.text[:12] == "Thanks, Jim."
    assert identity().patient_id == patient_id(JIM)
    with session_scope() as session:
        expires = session.scalars(select(TelegramLinkToken.expires_at)).one()
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(hours=24)


def test_the_cli_link_needs_a_patient_on_file(telegram_app: TelegramApp, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    assert main(["telegram", "link", "--phone", "+16175550999"]) == 2
    assert main(["telegram", "link", "--phone", "not a phone"]) == 2
    _, err = capsys.readouterr()
    assert err.splitlines()[0] == "clinicbot: error: telegram link: no patient has that phone number on file"
    assert err.splitlines()[1].startswith("clinicbot: error: telegram link: --phone: ")
    with session_scope() as session:
        assert session.scalars(select(TelegramLinkToken)).all() == []
