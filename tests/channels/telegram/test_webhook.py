"""The Telegram webhook: secret token, parsing, dedupe, inline buttons and callback queries."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.conversations.models import Direction, Message
from bot.db import session_scope
from bot.patients.models import ChannelIdentity
from bot.staff.models import AuditEvent
from tests.channels.telegram.conftest import CHAT, SECRET, TelegramApp, count, telegram_env
from tests.fakes.fake_telegram import FakeTelegram, callback_update, member_update, text_update


def inbound(provider_message_id: str) -> list[Message]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Message).where(Message.direction == Direction.IN, Message.provider_message_id == provider_message_id)
            )
        )


def test_a_text_gets_exactly_one_reply(telegram_app: TelegramApp) -> None:
    response = telegram_app.post(text_update(1, CHAT, "what time do you open tomorrow?"))
    telegram_app.settle()

    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert [m.body for m in inbound("update:1")] == ["what time do you open tomorrow?"]
    assert [m.chat_id for m in telegram_app.fake.sent] == [CHAT]
    with session_scope() as session:
        row = session.scalars(select(OutboxMessage)).one()
    assert (row.status, row.provider_message_id) == ("sent", str(telegram_app.fake.sent[0].message_id))
    assert telegram_app.fake.sent[0].text == row.body


def test_a_wrong_or_missing_secret_is_refused_and_nothing_stored(telegram_app: TelegramApp) -> None:
    statuses = [
        telegram_app.post(text_update(2, CHAT, "hello"), secret=secret).status_code
        for secret in ("wrong-secret", "", None, SECRET + "x", SECRET[:-1])
    ]
    telegram_app.settle()

    assert statuses == [403, 403, 403, 403, 403]
    assert (count(Message), count(ChannelIdentity), telegram_app.fake.sent) == (0, 0, [])


def test_without_a_bot_token_the_webhook_is_off(make_app, fake_telegram: FakeTelegram) -> None:  # type: ignore[no-untyped-def]
    harness = make_app(**telegram_env(fake_telegram, TELEGRAM_BOT_TOKEN=""))
    response = harness.client.post(
        "/webhooks/telegram", json=text_update(3, CHAT, "hello"), headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
    )

    assert response.status_code == 404
    assert "telegram" not in harness.workers.channels
    assert count(Message) == 0


def test_without_a_webhook_secret_every_update_is_refused(make_app, fake_telegram: FakeTelegram) -> None:  # type: ignore[no-untyped-def]
    harness = make_app(**telegram_env(fake_telegram, TELEGRAM_WEBHOOK_SECRET=""))
    refused = [
        harness.client.post("/webhooks/telegram", json=text_update(4, CHAT, "hi"), headers=headers).status_code
        for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": ""}, {"X-Telegram-Bot-Api-Secret-Token": "x"})
    ]
    harness.workers.channels["telegram"].close()

    assert refused == [403, 403, 403]
    assert count(Message) == 0


def test_a_malformed_update_is_a_clear_400(telegram_app: TelegramApp) -> None:
    cases = [
        (b"this is not json", "the body is not JSON (Expecting value at line 1 column 1)"),
        (b"\xff\xfe", "the body is not UTF-8 text"),
        (b"[1, 2]", "the body is not a JSON object"),
        (b'{"message": {}}', "update_id must be a non-negative integer"),
        (b'{"update_id": "7"}', "update_id must be a non-negative integer"),
        (b'{"update_id": 7, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}}}',
         "not a Telegram update: KeyError 'date'"),
        (b'{"update_id": 1, "x": ' + b"[" * 16_000, "the body is not JSON we can read (nested too deep)"),
        (b'{"update_id": 1, "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
         "the body is not JSON we can read (nested too deep)"),
    ]  # fmt: skip
    answers = [telegram_app.post(body) for body, _ in cases]

    assert [(a.status_code, a.json()) for a in answers] == [(400, {"detail": detail}) for _, detail in cases]
    assert count(Message) == 0


def with_message(update: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Return a text update whose message has these fields replaced (None: removed)."""
    message = {**update["message"], **fields}
    return {**update, "message": {k: v for k, v in message.items() if v is not None}}


def test_a_field_we_read_that_is_missing_or_of_the_wrong_type_is_a_400_naming_it(telegram_app: TelegramApp) -> None:
    text = text_update(20, CHAT, "hello")
    tap = callback_update(21, CHAT, "/hours", buttons=[("opening hours", "/hours")])
    query = tap["callback_query"]
    chat = text["message"]["chat"]
    photo = with_message(text, text=None, caption="rash", photo=[{"file_id": 5, "file_unique_id": "u", "width": 1, "height": 1}])
    cases = [
        (with_message(text, text=12345), "message.text must be a string"),
        (with_message(text, text=None, caption=5), "message.caption must be a string"),
        (with_message(text, chat=None), "message.chat is required"),
        (with_message(text, chat={**chat, "id": {"x": 1}}), "message.chat.id must be an integer"),
        (with_message(text, chat={**chat, "id": "5001"}), "message.chat.id must be an integer"),
        (with_message(text, chat={**chat, "id": True}), "message.chat.id must be an integer"),
        (with_message(text, chat={**chat, "id": 2**64}), "message.chat.id must be a 64-bit integer"),
        (with_message(text, chat={"id": CHAT}), "message.chat.type is required"),
        (with_message(text, **{"from": {"id": CHAT, "language_code": 5}}), "message.from.language_code must be a string"),
        (with_message(text, text=None, contact={"phone_number": 16175550142}), "message.contact.phone_number must be a string"),
        (with_message(text, text=None, sticker={"emoji": ["x"]}), "message.sticker.emoji must be a string"),
        (photo, "message.photo[0].file_id must be a string"),
        (with_message(text, text=None, document="a.pdf"), "message.document must be an object"),
        ({"update_id": 20, "message": "hello"}, "message must be an object"),
        ({"update_id": 2**64, "message": text["message"]}, "update_id must be a 64-bit integer"),
        ({"update_id": 21, "callback_query": {"id": "cb-1", "chat_instance": "ci", "data": "/hours"}},
         "callback_query.from is required"),
        ({**tap, "callback_query": {**query, "data": 5}}, "callback_query.data must be a string"),
        ({**tap, "callback_query": {**query, "id": 5}}, "callback_query.id must be a string"),
        ({**tap, "callback_query": {**query, "message": {**query["message"], "reply_markup": {"inline_keyboard": [
            [{"text": 7, "callback_data": "/hours"}]]}}}},
         "callback_query.message.reply_markup.inline_keyboard[0][0].text must be a string"),
        ({"update_id": 22, "my_chat_member": {"chat": {"id": 1, "type": "private"}}},
         "my_chat_member.new_chat_member is required"),
        ({"update_id": 22, "my_chat_member": {"chat": {"id": 1, "type": "private"}, "new_chat_member": {"status": 1}}},
         "my_chat_member.new_chat_member.status must be a string"),
    ]  # fmt: skip
    answers = [telegram_app.post(update) for update, _ in cases]
    telegram_app.settle()

    assert [(a.status_code, a.json()) for a in answers] == [(400, {"detail": detail}) for _, detail in cases]
    assert (count(Message), count(ChannelIdentity), telegram_app.fake.sent) == (0, 0, [])
    assert telegram_app.post(text).status_code == 200 and telegram_app.post(tap).status_code == 200
    assert count(Message) == 2


def test_update_kinds_we_do_not_act_on_are_acknowledged_and_logged_by_update_id(
    telegram_app: TelegramApp, caplog: pytest.LogCaptureFixture
) -> None:
    # Telegram resends an update until it gets a 2xx; these are deliberately taken and dropped.
    updates = [
        {"update_id": 30, "edited_message": {"text": 5, "chat": "not read"}},
        {"update_id": 31, "channel_post": {"message_id": 1, "date": 0, "chat": {"id": -1001, "type": "channel"}}},
        with_message(text_update(32, CHAT, ""), text=None, location={"latitude": 42.36, "longitude": -71.06}),
        member_update(33, CHAT, status="left"),
    ]
    with caplog.at_level(logging.INFO, logger="bot.channels.telegram"):
        answers = [telegram_app.post(update) for update in updates]
    telegram_app.settle()

    assert [(a.status_code, a.json()) for a in answers] == [(200, {"ok": True})] * 4
    assert [r.getMessage() for r in caplog.records if r.name == "bot.channels.telegram"] == [
        f"telegram update {n} ignored" for n in (30, 31, 32, 33)
    ]
    assert (count(Message), telegram_app.fake.sent) == (0, [])


def test_a_redelivered_update_is_stored_and_answered_once(telegram_app: TelegramApp) -> None:
    update = text_update(5, CHAT, "where are you located?")
    statuses = [telegram_app.post(update).status_code for _ in range(3)]
    telegram_app.settle()
    statuses.append(telegram_app.post(update).status_code)
    telegram_app.settle()

    assert statuses == [200, 200, 200, 200]
    assert len(inbound("update:5")) == 1
    assert len(telegram_app.fake.sent) == 1


def test_a_clarifying_reply_offers_its_suggestions_as_inline_buttons(telegram_app: TelegramApp) -> None:
    telegram_app.post(text_update(6, CHAT, "blorp zzzt qwfp"))
    telegram_app.settle()

    [sent] = telegram_app.fake.sent
    keyboard = sent.reply_markup["inline_keyboard"]
    assert 2 <= len(keyboard) <= 3
    assert all(len(row) == 1 and row[0]["callback_data"].startswith("/") for row in keyboard)
    with session_scope() as session:
        row = session.scalars(select(OutboxMessage)).one()
    assert [[{"text": b["title"], "callback_data": b["payload"]}] for b in row.buttons] == keyboard


def test_a_tapped_button_is_the_patients_text_and_its_spinner_stops(telegram_app: TelegramApp) -> None:
    buttons = [("opening hours", "/hours"), ("a prescription refill", "/prescription_refill")]
    response = telegram_app.post(callback_update(7, CHAT, "/hours", buttons=buttons, query_id="cbq-7"))
    telegram_app.settle()

    assert response.status_code == 200
    [message] = inbound("update:7")
    assert (message.body, message.intent, message.route) == ("opening hours", "hours", "answer")
    assert telegram_app.fake.answered_callbacks == ["cbq-7"]
    assert [m.chat_id for m in telegram_app.fake.sent] == [CHAT]


def test_a_button_on_a_message_without_its_keyboard_falls_back_to_the_payload(telegram_app: TelegramApp) -> None:
    telegram_app.post(callback_update(8, CHAT, "/lab_results", buttons=None))
    telegram_app.settle()

    [message] = inbound("update:8")
    assert (message.body, message.intent) == ("lab results", "lab_results")


def test_group_chats_are_ignored(telegram_app: TelegramApp) -> None:
    response = telegram_app.post(text_update(9, -100777, "my lab results please", chat_type="supergroup"))
    telegram_app.settle()

    assert response.status_code == 200
    assert (count(Message), telegram_app.fake.sent) == (0, [])


def test_blocking_and_unblocking_the_bot_opt_the_chat_out_and_back_in(telegram_app: TelegramApp) -> None:
    telegram_app.post(text_update(10, CHAT, "hello"))
    telegram_app.settle()
    telegram_app.post(member_update(11, CHAT, status="kicked"))
    with session_scope() as session:
        blocked = session.scalars(select(ChannelIdentity)).one().opted_out_at is not None
    telegram_app.post(member_update(12, CHAT, status="member"))

    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity)).one()
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == str(identity.id))).all()
    assert (blocked, identity.opted_out_at) == (True, None)
    assert actions == ["identity.blocked", "identity.unblocked"]


def test_a_photo_is_stored_with_a_file_reference_for_staff(telegram_app: TelegramApp) -> None:
    update = text_update(13, CHAT, "")
    message = update["message"]
    del message["text"]
    message["caption"] = "is this rash normal"
    message["photo"] = [{"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90},
                        {"file_id": "big", "file_unique_id": "b", "width": 800, "height": 800}]  # fmt: skip
    telegram_app.post(update)

    assert [(m.body, m.media) for m in inbound("update:13")] == [("is this rash normal", ["telegram:photo:big"])]


def test_staff_open_a_photo_sent_on_telegram_through_the_server(telegram_app: TelegramApp) -> None:
    from tests.staff.conftest import sign_in

    telegram_app.fake.add_file("big", "photos/file_7.jpg", b"\xff\xd8\xff jpeg bytes")
    update = text_update(14, CHAT, "")
    message = update["message"]
    del message["text"]
    message["photo"] = [{"file_id": "big", "file_unique_id": "b", "width": 800, "height": 800}]
    telegram_app.post(update)
    (stored,) = inbound("update:14")
    sign_in(telegram_app.harness.client)
    page = telegram_app.harness.client.get(f"/staff/conversations/{stored.conversation_id}").text
    assert "Open photo 1" in page and "big" not in page.split("Open photo 1")[0][-300:]
    shown = telegram_app.harness.client.get(f"/staff/messages/{stored.id}/media/0")
    assert (shown.status_code, shown.content, shown.headers["content-type"]) == (
        200, b"\xff\xd8\xff jpeg bytes", "image/jpeg"), shown.text  # fmt: skip
