"""Sending through the real python-telegram-bot client: limits, blocks, timeouts and retries."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from bot.channels import outbox
from bot.channels.base import Delivery, OutgoingText, SendResult
from bot.channels.models import OutboxMessage
from bot.channels.telegram import TelegramChannel, classify_error, make_bot
from bot.config import Settings
from bot.db import session_scope, utcnow
from bot.patients.models import ChannelIdentity
from bot.staff.models import AuditEvent
from tests.channels.telegram.conftest import CHAT, TelegramApp
from tests.e2e.server import free_port
from tests.fakes.fake_telegram import TOKEN, text_update

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")


def rows() -> list[OutboxMessage]:
    with session_scope() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def make_due(**values: object) -> None:
    with session_scope() as session:
        session.execute(update(OutboxMessage).values(next_attempt_at=utcnow(), **values))


def test_a_rate_limit_waits_as_long_as_telegram_asks(telegram_app: TelegramApp) -> None:
    telegram_app.fake.rate_limit(retry_after=30)
    telegram_app.post(text_update(1, CHAT, "what are your opening hours?"))
    before = utcnow()
    telegram_app.settle()
    [row] = rows()

    assert (row.status, row.error_code, row.attempts, telegram_app.fake.sent) == ("pending", "rate_limited", 1, [])
    assert row.next_attempt_at >= before + timedelta(seconds=30)

    make_due()
    telegram_app.settle()
    assert ([r.status for r in rows()], len(telegram_app.fake.sent)) == (["sent"], 1)


def test_a_blocked_bot_opts_the_chat_out_and_cancels_what_is_pending(telegram_app: TelegramApp) -> None:
    telegram_app.post(text_update(2, CHAT, "what are your opening hours?"))
    telegram_app.harness.workers.processor.drain()
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity)).one()
        later = outbox.enqueue(session=session, key="test:later", identity=identity, body="An update for you.")
        assert later is not None
        session.get(OutboxMessage, later).next_attempt_at = utcnow() + timedelta(hours=1)
    telegram_app.fake.block()
    telegram_app.settle()

    reply, queued = rows()
    assert (reply.status, reply.error_code) == ("failed", "forbidden")
    assert (queued.status, queued.error_code) == ("cancelled", "blocked")
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity)).one()
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.subject_id == str(identity.id))).all()
    assert identity.opted_out_at is not None
    assert actions == ["identity.blocked"]

    # While blocked, the bot stays silent (a patient cannot write to a bot they blocked anyway).
    telegram_app.post(text_update(3, CHAT, "hello?"))
    telegram_app.settle()
    assert (len(rows()), telegram_app.fake.sent) == (2, [])


def test_a_timed_out_send_is_unknown_and_never_resent(telegram_app: TelegramApp) -> None:
    telegram_app.fake.slow(seconds=3)
    telegram_app.post(text_update(4, CHAT, "what are your opening hours?"))
    telegram_app.settle()

    [row] = rows()
    assert (row.status, row.error_code) == ("unknown", "timeout")
    # Telegram did deliver it; only the answer was lost.
    assert len(telegram_app.fake.sent) == 1

    make_due()
    telegram_app.settle()
    assert ([r.status for r in rows()], len(telegram_app.fake.sent)) == (["unknown"], 1)

    # After the sender's last attempt the text is marked failed, for staff to see, still not resent.
    make_due(attempts=telegram_app.harness.workers.sender.max_attempts)
    telegram_app.settle()
    assert ([r.status for r in rows()], len(telegram_app.fake.sent)) == (["failed"], 1)
    assert len(telegram_app.fake.calls("sendMessage")) == 1


def test_chat_not_found_fails_without_opting_out(telegram_app: TelegramApp) -> None:
    telegram_app.fake.chat_not_found()
    telegram_app.post(text_update(5, CHAT, "what are your opening hours?"))
    telegram_app.settle()

    [row] = rows()
    assert (row.status, row.error_code) == ("failed", "chat_not_found")
    with session_scope() as session:
        assert session.scalars(select(ChannelIdentity)).one().opted_out_at is None


def test_a_server_error_is_retried_and_then_sent(telegram_app: TelegramApp) -> None:
    telegram_app.fake.server_error()
    telegram_app.post(text_update(6, CHAT, "what are your opening hours?"))
    telegram_app.settle()
    assert [(r.status, r.error_code) for r in rows()] == [("pending", "network")]

    make_due()
    telegram_app.settle()
    assert ([r.status for r in rows()], len(telegram_app.fake.sent)) == (["sent"], 1)


def test_an_unreachable_api_is_retried_because_nothing_left() -> None:
    settings = Settings(telegram_bot_token=TOKEN, telegram_api_base_url=f"http://127.0.0.1:{free_port()}/bot")
    channel = TelegramChannel(bot=make_bot(settings, timeout=0.5))
    try:
        result = channel.send(OutgoingText(outbox_id=1, key="k", channel="telegram", address=str(CHAT), text="hi"))
    finally:
        channel.close()

    assert result == SendResult(Delivery.RETRY, error_code="network")


def _caused(error: Exception, cause: Exception) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RetryAfter(12), SendResult(Delivery.RETRY, error_code="rate_limited", retry_after=12.0)),
        (Forbidden("Forbidden: user is deactivated"),
         SendResult(Delivery.FAILED, error_code="forbidden", recipient_state="blocked")),
        (BadRequest("Bad Request: chat not found"), SendResult(Delivery.FAILED, error_code="chat_not_found")),
        (BadRequest("Bad Request: message is too long"), SendResult(Delivery.FAILED, error_code="bad_request")),
        (_caused(TimedOut(), httpx.ReadTimeout("read")), SendResult(Delivery.UNKNOWN, error_code="timeout")),
        (_caused(TimedOut(), httpx.ConnectTimeout("connect")), SendResult(Delivery.RETRY, error_code="network")),
        (_caused(TimedOut(), httpx.PoolTimeout("pool")), SendResult(Delivery.RETRY, error_code="network")),
        (_caused(NetworkError("x"), httpx.ConnectError("refused")), SendResult(Delivery.RETRY, error_code="network")),
        (_caused(NetworkError("x"), httpx.ReadError("reset")), SendResult(Delivery.UNKNOWN, error_code="network")),
        (_caused(NetworkError("x"), httpx.RemoteProtocolError("eof")),
         SendResult(Delivery.UNKNOWN, error_code="network")),
        (NetworkError("Bad Gateway"), SendResult(Delivery.RETRY, error_code="network")),
    ],
)  # fmt: skip
def test_errors_map_to_outcomes(error: Exception, expected: SendResult) -> None:
    assert classify_error(error) == expected


def test_a_text_longer_than_telegram_takes_goes_out_in_parts_in_order(telegram_app: TelegramApp) -> None:
    settings = Settings(telegram_bot_token=TOKEN, telegram_api_base_url=telegram_app.fake.base_url)
    channel = TelegramChannel(bot=make_bot(settings, timeout=5))
    paragraphs = [(f"Paragraph {n}: " + "words to read " * 120).strip() for n in range(6)]
    body = "\n\n".join(paragraphs)  # about 10,000 characters
    buttons = ({"title": "Talk to a person", "payload": "/human"},)
    try:
        result = channel.send(OutgoingText(outbox_id=1, key="long", channel="telegram", address=str(CHAT),
                                           text=body, buttons=buttons))  # fmt: skip
    finally:
        channel.close()
    sent = telegram_app.fake.sent
    assert result.outcome is Delivery.SENT and result.provider_message_id == str(sent[0].message_id)
    assert len(sent) == 3 and all(len(message.text) <= 4096 for message in sent)
    # Split at paragraph ends, nothing lost or reordered, and the buttons under the last part only.
    assert "\n\n".join(message.text for message in sent) == body
    assert [message.reply_markup is not None for message in sent] == [False, False, True]


def _fail_call(fake, number: int, fault) -> None:  # type: ignore[no-untyped-def]
    """Make the fake's `number`th sendMessage from now on (2 or more) meet `fault` (a FakeTelegram method).

    The fake takes a fault at the start of the call after the one that queued it.
    """
    original = fake._api_sendMessage
    calls = []

    def failing(params):  # type: ignore[no-untyped-def]
        calls.append(params)
        if len(calls) == number - 1:
            fault()
        return original(params)

    fake._api_sendMessage = failing


def test_a_long_text_cut_short_resumes_after_the_parts_that_went(telegram_app: TelegramApp) -> None:
    settings = Settings(telegram_bot_token=TOKEN, telegram_api_base_url=telegram_app.fake.base_url)
    channel = TelegramChannel(bot=make_bot(settings, timeout=5))
    body = "\n\n".join(f"part {n} " + ("word " * 700).strip() for n in range(3))
    long_text = OutgoingText(outbox_id=1, key="long", channel="telegram", address=str(CHAT), text=body)
    _fail_call(telegram_app.fake, 2, telegram_app.fake.server_error)
    try:
        first = channel.send(long_text)
        sent_first = list(telegram_app.fake.sent)
        again = channel.send(replace(long_text, parts_sent=first.parts_sent))
    finally:
        channel.close()
    # Telegram refused the second part (nothing of it was sent): one part reached the patient, and the
    # retry sends the other two, never the first again.
    assert first == SendResult(Delivery.RETRY, error_code="network", parts_sent=1,
                               provider_message_id=str(sent_first[0].message_id))  # fmt: skip
    assert again.outcome is Delivery.SENT
    assert "\n\n".join(message.text for message in telegram_app.fake.sent) == body


def test_a_part_whose_outcome_is_unknown_is_never_resent_blindly(telegram_app: TelegramApp) -> None:
    settings = Settings(telegram_bot_token=TOKEN, telegram_api_base_url=telegram_app.fake.base_url)
    channel = TelegramChannel(bot=make_bot(settings, timeout=0.5))
    body = "\n\n".join("word " * 700 for _ in range(3))
    _fail_call(telegram_app.fake, 2, lambda: telegram_app.fake.slow(seconds=2))
    try:
        result = channel.send(OutgoingText(outbox_id=1, key="long", channel="telegram", address=str(CHAT), text=body))
    finally:
        channel.close()
    # The second part timed out after it left: Telegram may show it. The count stops before it.
    assert (result.outcome, result.parts_sent) == (Delivery.UNKNOWN, 1)


def test_the_outbox_resumes_a_long_text_where_it_was_cut_short(telegram_app: TelegramApp) -> None:
    telegram_app.post(text_update(3, CHAT, "what are your opening hours?"))
    telegram_app.settle()
    body = "\n\n".join(f"part {n} " + ("word " * 700).strip() for n in range(3))
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity)).one()
        long_id = outbox.enqueue(session=session, key="test:long", identity=identity, body=body)
    already = len(telegram_app.fake.sent)
    _fail_call(telegram_app.fake, 2, lambda: telegram_app.fake.rate_limit(retry_after=30))
    telegram_app.settle()
    with session_scope() as session:
        row = session.get(OutboxMessage, long_id)
        cut = (row.status, row.parts_sent, row.error_code, row.provider_message_id)
    first_part = telegram_app.fake.sent[already]
    assert cut == ("pending", 1, "rate_limited", str(first_part.message_id))

    make_due()
    telegram_app.settle()
    with session_scope() as session:
        row = session.get(OutboxMessage, long_id)
        done = (row.status, row.parts_sent, row.provider_message_id)
    # Every part once, in order; the text's id is still its first part's.
    assert "\n\n".join(message.text for message in telegram_app.fake.sent[already:]) == body
    assert done == ("sent", 1, str(first_part.message_id))


def test_the_parts_of_a_long_text_keep_telegrams_pace_when_pacing_is_on() -> None:
    def channel(pacing: bool) -> TelegramChannel:
        return TelegramChannel.from_settings(Settings(telegram_bot_token=TOKEN, outbox_pacing=pacing))

    assert (channel(True).part_interval, channel(False).part_interval) == (1.0, 0.0)
