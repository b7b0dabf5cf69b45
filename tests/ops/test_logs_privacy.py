"""Logs carry ids only: real traffic with a planted patient leaves no name, phone or message text in any log."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import select

from bot.channels import outbox
from bot.channels.models import OutboxMessage
from bot.cli import _configure_logging
from bot.config import get_settings
from bot.db import session_scope
from bot.logging_setup import WITHHELD, JsonFormatter, PhoneNumberFilter, TextFormatter, configure_logging
from bot.patients.models import Patient
from bot.patients.service import get_or_create_identity
from tests.channels.telegram.conftest import telegram_env
from tests.channels.twilio.conftest import SmsApp, twilio_env
from tests.channels.webchat.conftest import ORIGIN
from tests.fakes.fake_telegram import contact_update, text_update

NAME = "Zebediah Quartermaine"
PHONE = "+16175550166"
DOB = date(1971, 6, 5)
SECRET_WORD = "hedgehog"
# A Telegram chat id is the patient's address on Telegram, as a phone number is on SMS.
TELEGRAM_CHAT = 918_273_645
NEEDLES = ["Zebediah", "Quartermaine", PHONE, "16175550166", "6175550166", "5550166", "555-0166", SECRET_WORD,
           str(TELEGRAM_CHAT)]  # fmt: skip


class RawCapture(logging.Handler):
    """Keep each record's message and JSON form as emitted by the code, before any filter."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self.lines.append(self.formatter_json.format(record))


@pytest.fixture
def captured() -> Iterator[tuple[RawCapture, io.StringIO]]:
    """Capture every record at DEBUG, raw and as the production JSON handler writes it."""
    root = logging.getLogger()
    raw, stream = RawCapture(), io.StringIO()
    previous = root.level
    root.addHandler(raw)
    handler = configure_logging(level="DEBUG", json_lines=True, stream=stream)
    try:
        yield raw, stream
    finally:
        root.removeHandler(raw)
        root.removeHandler(handler)
        root.setLevel(previous)


def leaks(lines: list[str]) -> list[str]:
    return [line for line in lines for needle in NEEDLES if needle.lower() in line.lower()]


def test_real_traffic_on_every_channel_logs_no_name_phone_or_text(
    make_app, fake_twilio, fake_telegram, captured: tuple[RawCapture, io.StringIO]
) -> None:
    raw, stream = captured
    with session_scope() as session:
        session.add(Patient(name=NAME, preferred_name="Zeb", date_of_birth=DOB, phone=PHONE, language="en"))
    harness = make_app(**(twilio_env(fake_twilio) | telegram_env(fake_telegram)))
    sms = SmsApp(harness=harness, fake=fake_twilio)
    client = harness.client
    client.base_url = "https://testserver"  # the public URL is https, so the chat cookie is Secure

    # SMS: a verified patient asks personal and general questions, and one message repeats their details.
    for text in (f"{SECRET_WORD}: are my lab results ready?", f"this is {NAME}, {PHONE}, {SECRET_WORD}"):
        assert sms.text_in(text, sender=PHONE).status_code == 200
    sms.settle()

    # Web chat: the visitor gives name and phone in the text, then verifies by a code sent over SMS.
    assert client.get("/chat").status_code == 200
    for text in (f"hi I'm {NAME}, call me at 617-555-0166 about the {SECRET_WORD}", "what are your hours"):
        body = {"text": text, "client_message_id": uuid.uuid4().hex}
        assert client.post("/chat/api/messages", json=body, headers=ORIGIN).status_code == 202
    start = client.post(
        "/chat/api/verify/start", json={"phone": PHONE, "date_of_birth": DOB.isoformat()}, headers=ORIGIN
    )
    assert start.status_code == 202, start.text
    harness.settle()
    with session_scope() as session:
        code_text = session.scalars(select(OutboxMessage.body).where(OutboxMessage.key.like("otp:%"))).one()
    code = re.search(r"\b(\d{6})\b", code_text or "")
    assert code is not None
    assert client.post("/chat/api/verify/code", json={"code": code[1]}, headers=ORIGIN).status_code == 200
    body = {"text": f"{SECRET_WORD} are my lab results ready", "client_message_id": uuid.uuid4().hex}
    assert client.post("/chat/api/messages", json=body, headers=ORIGIN).status_code == 202

    # Telegram: the patient shares their contact (their phone) and writes their name.
    secret = {"X-Telegram-Bot-Api-Secret-Token": telegram_env(fake_telegram)["TELEGRAM_WEBHOOK_SECRET"]}
    for update in (
        contact_update(1, TELEGRAM_CHAT, PHONE, contact_user_id=TELEGRAM_CHAT),
        text_update(2, TELEGRAM_CHAT, f"{NAME} {SECRET_WORD}"),
    ):
        assert client.post("/webhooks/telegram", json=update, headers=secret).status_code == 200
    harness.settle()
    harness.workers.channels["telegram"].close()

    assert len(fake_twilio.messages) >= 3, "replies and the code went out over SMS"
    assert len(fake_telegram.sent) >= 2, "replies went out over Telegram"
    assert len(raw.lines) > 20, "the traffic was logged"
    assert leaks(raw.lines) == []
    written = stream.getvalue().splitlines()
    assert len(written) == len(raw.lines) // 2
    assert leaks(written) == []
    assert all(set(json.loads(line)) >= {"ts", "level", "logger", "message"} for line in written)


@pytest.mark.filterwarnings("ignore:.*retry_after.*:telegram.warnings.PTBDeprecationWarning")
def test_a_telegram_text_stored_with_its_chat_id_before_is_logged_by_message_id_only(
    make_app, fake_telegram, captured: tuple[RawCapture, io.StringIO]
) -> None:
    raw, _ = captured
    harness = make_app(**telegram_env(fake_telegram))
    # Cut short after its first part by a version that stored "chat_id:message_id"; the rest meets a 429.
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="telegram", address=str(TELEGRAM_CHAT))
        outbox_id = outbox.enqueue(session=session, key="test:cut", identity=identity,
                                   body="\n\n".join(["word " * 700] * 2))  # fmt: skip
        row = session.get(OutboxMessage, outbox_id)
        row.parts_sent, row.provider_message_id = 1, f"{TELEGRAM_CHAT}:77"
    fake_telegram.rate_limit(retry_after=30)
    harness.settle()
    harness.workers.channels["telegram"].close()

    reported = [line for line in raw.lines if line.startswith(f"outbox {outbox_id} ")]
    assert reported == [f"outbox {outbox_id} pending via telegram (attempt 1) as 77"]
    assert leaks(raw.lines) == []


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("bot.test", logging.INFO, __file__, 7, message, args, None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


@pytest.mark.parametrize(
    "message",
    ["sent to +16175550142", "from 617-555-0142", "call (617) 555-0142", "call 617.555.0142", "number 16175550142",
     "number 6175550142", "ext 555-0142", "to +1 617 555 0142"],
)  # fmt: skip
def test_filter_withholds_anything_shaped_like_a_phone_number(message: str) -> None:
    entry = record("%s", message)
    assert PhoneNumberFilter().filter(entry) is True
    assert entry.getMessage() == f"{WITHHELD} (test_logs_privacy:7)"


@pytest.mark.parametrize(
    "message",
    ["inbound 1234567 stored (conversation 42, sms)", "outbox 12 sent via sms (attempt 1)",
     "promise 3 due 2026-05-01T16:00:00+00:00", "twilio status delivered for SM0123456789abcdef0123456789abcdef"],
)  # fmt: skip
def test_filter_lets_ids_times_and_provider_ids_through(message: str) -> None:
    entry = record(message)
    PhoneNumberFilter().filter(entry)
    assert entry.getMessage() == message


def test_filter_checks_extra_fields_and_exception_messages() -> None:
    entry = record("outbox %s failed", 9, to="+16175550142")
    PhoneNumberFilter().filter(entry)
    assert (entry.getMessage(), hasattr(entry, "to")) == (f"{WITHHELD} (test_logs_privacy:7)", False)
    try:
        raise ValueError("bad number +16175550142")
    except ValueError:
        import sys

        entry = record("sending failed")
        entry.exc_info = sys.exc_info()
    PhoneNumberFilter().filter(entry)
    assert (entry.getMessage(), entry.exc_info) == (f"{WITHHELD} (test_logs_privacy:7)", None)


def test_json_lines_carry_ts_level_logger_message_extra_ids_and_no_exception_text() -> None:
    stream = io.StringIO()
    handler = configure_logging(level="INFO", json_lines=True, stream=stream)
    log = logging.getLogger("bot.ops.example")
    try:
        log.info("outbox %s sent", 12, extra={"conversation_id": 7})
        detail = "secret detail"
        try:
            raise RuntimeError(detail)
        except RuntimeError:
            log.exception("sending %s failed", 12)
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first.pop("ts"))
    assert first == {
        "level": "INFO",
        "logger": "bot.ops.example",
        "message": "outbox 12 sent",
        "conversation_id": 7,
    }
    assert (second["message"], second["exc_type"]) == ("sending 12 failed", "RuntimeError")
    assert "secret detail" not in json.dumps(second) and "raise RuntimeError(detail)" in second["stack"]


REPLY = "Thanks, Jim, your cholesterol results are back and look fine"


def test_a_failed_insert_logged_as_text_shows_its_type_and_stack_but_never_the_text_it_carried(
    database_url: str,
) -> None:
    from sqlalchemy.exc import IntegrityError

    from bot.patients.service import get_or_create_identity

    stream = io.StringIO()
    handler = configure_logging(level="INFO", json_lines=False, stream=stream)
    failed: IntegrityError | None = None
    try:
        with session_scope() as session:
            identity = get_or_create_identity(session=session, channel="webchat", address="web-visitor-7")
            session.add(OutboxMessage(key="reply:7", channel="webchat", identity_id=identity.id, body="first"))
        try:
            with session_scope() as session:
                session.add(OutboxMessage(key="reply:7", channel="webchat", identity_id=identity.id, body=REPLY))
        except IntegrityError as error:  # the unique key: the reply was already queued
            failed = error
            logging.getLogger("bot.ops.example").exception("outbox %s not stored", "reply:7")
    finally:
        logging.getLogger().removeHandler(handler)
    assert failed is not None
    assert REPLY not in str(failed), "the engines hide statement parameters from error texts"
    lines = stream.getvalue().splitlines()
    assert [needle for needle in ("Thanks", "Jim", "cholesterol") if needle in stream.getvalue()] == []
    assert lines[0].endswith(" ERROR bot.ops.example: outbox reply:7 not stored")
    assert (lines[1], lines[-1]) == ("Traceback (most recent call last):", "IntegrityError (message not logged)")
    assert any("session.commit()" in line for line in lines)


def test_text_lines_leave_the_exception_message_out_even_when_another_handler_rendered_it() -> None:
    detail = "Thanks, Jim"
    try:
        raise RuntimeError(detail)
    except RuntimeError:
        import sys

        entry = record("sending %s failed", 12)
        entry.exc_info = sys.exc_info()
    assert detail in logging.Formatter().format(entry)  # a plain formatter caches the full text on the record
    text = TextFormatter().format(entry)
    lines = text.splitlines()
    assert lines[0].endswith(" INFO bot.test: sending 12 failed")
    assert (lines[1], lines[-1]) == ("Traceback (most recent call last):", "RuntimeError (message not logged)")
    assert detail not in text and "raise RuntimeError(detail)" in text


@pytest.mark.parametrize(
    ("command", "log_format", "json_lines"),
    [("serve", "auto", True), ("scheduler", "auto", True), ("chat", "auto", False), ("chat", "json", True),
     ("serve", "text", False)],
)  # fmt: skip
def test_cli_logs_json_for_long_running_processes(
    command: str, log_format: str, json_lines: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import reset_caches

    monkeypatch.setenv("CLINICBOT_LOG_FORMAT", log_format)
    reset_caches()
    root = logging.getLogger()
    _configure_logging(command, get_settings())
    try:
        (ours,) = [h for h in root.handlers if getattr(h, "_clinicbot", False)]
        assert isinstance(ours.formatter, JsonFormatter if json_lines else TextFormatter)
        assert any(isinstance(f, PhoneNumberFilter) for f in ours.filters)
    finally:
        root.removeHandler(ours)
        reset_caches()


def test_third_party_chatter_below_a_warning_is_kept_out_and_their_warnings_are_not() -> None:
    stream = io.StringIO()
    handler = configure_logging(level="INFO", json_lines=False, stream=stream)
    try:
        logging.getLogger("rasa_sdk.executor").info("Registered function for 'action_hours'.")
        logging.getLogger("alembic.runtime.plugins").info("setup plugin alembic.autogenerate.schemas")
        logging.getLogger("alembic.runtime.migration").warning("revision 0020 is missing")
        logging.getLogger("bot.cli").info("workers started")
    finally:
        logging.getLogger().removeHandler(handler)
    logged = stream.getvalue()
    assert "Registered function" not in logged and "setup plugin" not in logged
    assert "revision 0020 is missing" in logged and "workers started" in logged
