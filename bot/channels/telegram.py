"""Telegram: send through the Bot API, take updates in (webhook or long polling), register the webhook.

python-telegram-bot is asyncio-based and its HTTP client belongs to the event loop it first ran
on, so each object here that talks to Telegram owns one private loop and runs its calls there, one
at a time, from whichever thread calls it (the outbox sender, a webhook's background task, the
polling thread). Updates from both the webhook and the poller go through `accept_update`, which
stores each update's effect once, keyed by its update_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import re
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx
from sqlalchemy.orm import Session
from telegram import (
    Bot,
    CallbackQuery,
    ChatMember,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    Update,
)
from telegram import Message as TelegramMessage
from telegram.constants import ChatType
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from bot.channels import linking, outbox
from bot.channels.base import MAX_MEDIA_BYTES, Delivery, Media, MediaError, OutgoingText, SendResult
from bot.channels.inbound import InboundText, do_accept_inbound
from bot.config import Settings
from bot.conversations.models import Conversation, ConversationState, Message, Route
from bot.db import session_scope, utcnow
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import get_identity
from bot.staff import audit

if TYPE_CHECKING:
    from bot.channels.workers import Workers
    from bot.conversations.domain import Domain

log = logging.getLogger(__name__)

T = TypeVar("T")

WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name, not a secret)
# The update kinds we act on; set on the webhook and on each long poll.
ALLOWED_UPDATES = ("message", "callback_query", "my_chat_member")
MAX_UPDATE_BYTES = 1_000_000
MAX_CALLBACK_DATA_BYTES = 64
POLL_TIMEOUT_SECONDS = 20
POLL_RETRY_SECONDS = 5.0
CALLBACK_ANSWER_TIMEOUT = 3.0
# Telegram's rule for a webhook secret token.
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")
# Attachments a person must look at; the id lets staff tools fetch the file through the Bot API.
_FILE_KINDS = ("photo", "document", "video", "voice", "audio", "video_note", "animation")
# Transport errors raised before any byte of the request reached Telegram.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError,
             httpx.UnsupportedProtocol, httpx.LocalProtocolError)  # fmt: skip


class _RedactToken(logging.Filter):
    """Hide the bot token, which Bot API URLs carry, in what httpx and python-telegram-bot log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/bot" in message:
            record.msg, record.args = _TOKEN_IN_URL.sub("/bot<token>", message), ()
        return True


_REDACT = _RedactToken()
for _name in ("httpx", "telegram.Bot", "telegram._bot"):
    logging.getLogger(_name).addFilter(_REDACT)
# PTB 22 warns on every 429 that RetryAfter.retry_after will become a timedelta; both forms are handled.
warnings.filterwarnings("ignore", message=r".*`retry_after` will be of type", category=PTBDeprecationWarning)


class TelegramSetupError(Exception):
    """Telegram cannot be used as configured; the message says what to fix."""


class InvalidUpdate(ValueError):
    """A request body that is not a Telegram update; the message says what is wrong."""


def file_base_url(base_url: str) -> str:
    """Return the file-download URL that goes with a Bot API URL (.../bot gives .../file/bot)."""
    head, _, tail = base_url.rstrip("/").rpartition("/")
    return f"{head}/file/{tail}"


def make_bot(settings: Settings, *, timeout: float) -> Bot:
    """Build a Bot for the configured API URL whose calls give up after timeout seconds."""
    if not settings.telegram_enabled:
        raise TelegramSetupError("TELEGRAM_BOT_TOKEN is not set")
    base_url = settings.telegram_api_base_url.rstrip("/")

    def request(pool: int) -> HTTPXRequest:
        return HTTPXRequest(connection_pool_size=pool, connect_timeout=min(timeout, 5.0), read_timeout=timeout,
                            write_timeout=timeout, pool_timeout=timeout)  # fmt: skip

    return Bot(
        token=settings.telegram_bot_token.get_secret_value(),
        base_url=base_url,
        base_file_url=file_base_url(base_url),
        request=request(4),
        get_updates_request=request(1),
    )


def _retry_after_seconds(error: RetryAfter) -> float:
    value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def classify_error(error: TelegramError) -> SendResult:
    """Map a Bot API error to a delivery outcome; only a request that may have reached Telegram is unknown."""
    if isinstance(error, RetryAfter):
        return SendResult(Delivery.RETRY, error_code="rate_limited", retry_after=_retry_after_seconds(error))
    if isinstance(error, Forbidden):
        # "bot was blocked by the user", "user is deactivated": nothing will reach this chat again.
        return SendResult(Delivery.FAILED, error_code="forbidden", recipient_state="blocked")
    if isinstance(error, BadRequest):
        code = "chat_not_found" if "chat not found" in error.message.lower() else "bad_request"
        return SendResult(Delivery.FAILED, error_code=code)
    if isinstance(error, InvalidToken):
        log.error("telegram rejected the bot token; check TELEGRAM_BOT_TOKEN")
        return SendResult(Delivery.RETRY, error_code="invalid_token")
    if isinstance(error, TimedOut | NetworkError):
        cause = error.__cause__
        if isinstance(cause, httpx.HTTPError) and not isinstance(cause, _NOT_SENT):
            # The request left and the answer did not come back: Telegram may have delivered it.
            return SendResult(Delivery.UNKNOWN, error_code="timeout" if isinstance(error, TimedOut) else "network")
        # Never connected, or Telegram answered 5xx: nothing was sent.
        return SendResult(Delivery.RETRY, error_code="network")
    # Telegram answered with an error, so the message was not sent.
    return SendResult(Delivery.RETRY, error_code="telegram_error")


def _callback_data(button: dict[str, str], index: int) -> str:
    payload = button.get("payload") or button["title"]
    # Telegram carries at most 64 bytes back; a longer payload is found again by its button's text.
    return payload if len(payload.encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES else f"#{index}"


def _keyboard_from_db(text: OutgoingText) -> linking.KeyboardHint | None:
    from bot.runtime import get_runtime

    with session_scope() as session:
        return linking.keyboard_hint(session=session, domain=get_runtime().domain, outbox_id=text.outbox_id)


class _Loop:
    """A private event loop that runs one coroutine at a time for whichever thread asks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()

    def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run call() to completion; the coroutine is made under the lock so a closed loop never orphans it."""
        with self.lock:
            if self.loop.is_closed():
                raise RuntimeError("the Telegram client is closed")
            return self.loop.run_until_complete(call())

    def close(self, bot: Bot) -> None:
        """Release the HTTP client and the loop."""
        with self.lock:
            if self.loop.is_closed():
                return
            try:
                self.loop.run_until_complete(bot.shutdown())
            finally:
                self.loop.close()


# The Bot API takes at most 4,096 characters (UTF-16 code units) in one message.
MAX_MESSAGE_UNITS = 4096


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, *, limit: int = MAX_MESSAGE_UNITS) -> list[str]:
    """Split a text Telegram would refuse into parts it takes, at paragraph, line, sentence or word ends."""
    parts: list[str] = []
    rest = text
    while _units(rest) > limit:
        # The longest prefix within the limit, then back to the last natural break inside it.
        cut = limit
        while _units(rest[:cut]) > limit:
            cut -= 1
        window = rest[:cut]
        for separator in ("\n\n", "\n", ". ", " "):
            at = window.rfind(separator)
            if at > cut // 2:
                cut = at + len(separator)
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


class TelegramChannel:
    """Deliver texts to Telegram chats with python-telegram-bot."""

    name = Channel.TELEGRAM.value
    # Telegram's limits: about one message a second to one chat, 30 a second overall.
    min_interval_per_address = 1.0
    max_per_second: float | None = 30.0

    def __init__(
        self,
        *,
        bot: Bot,
        keyboard_for: Callable[[OutgoingText], linking.KeyboardHint | None] | None = None,
        part_interval: float = 0.0,
    ) -> None:
        self.bot = bot
        self.keyboard_for = keyboard_for
        # Seconds between the parts of a long text: one chat takes about one message a second.
        self.part_interval = part_interval
        self._loop = _Loop()

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramChannel:
        """Build the channel from TELEGRAM_* settings; a send gives up after outbox_send_timeout."""
        return cls(bot=make_bot(settings, timeout=settings.outbox_send_timeout), keyboard_for=_keyboard_from_db,
                   part_interval=cls.min_interval_per_address if settings.outbox_pacing else 0.0)  # fmt: skip

    async def _ready(self) -> None:
        # getMe checks the token once and lets shutdown() close the HTTP client later.
        await self.bot.initialize()

    def send(self, text: OutgoingText) -> SendResult:
        """Send one text; report Telegram's answer as a delivery outcome."""
        try:
            chat_id = int(text.address)
        except ValueError:
            return SendResult(Delivery.FAILED, error_code="bad_address")
        markup = self._markup(text)
        try:
            self._loop.run(self._ready)
        except TelegramError as error:
            # Only getMe was attempted: the text itself has not left, so trying again doubles nothing.
            result = classify_error(error)
            log.warning("telegram outbox %s not sent: getMe failed (%s)", text.outbox_id, type(error).__name__)
            return SendResult(Delivery.RETRY, error_code=result.error_code, retry_after=result.retry_after)
        parts = split_message(text.text)
        first_id: str | None = None
        # An earlier attempt cut short after some parts: those reached the patient, the rest go now.
        for index in range(text.parts_sent, len(parts)):
            part, last = parts[index], index == len(parts) - 1
            if first_id is not None and self.part_interval:
                time.sleep(self.part_interval)  # about one message a second to one chat
            try:
                sent = self._loop.run(
                    # Buttons belong under the last part, where the patient's reading ends.
                    lambda part=part, last=last: self.bot.send_message(
                        chat_id=chat_id, text=part, reply_markup=markup if last else None
                    )
                )
            except TelegramError as error:
                result = classify_error(error)
                log.warning("telegram outbox %s %s (%s)", text.outbox_id, result.outcome, type(error).__name__)
                if index > text.parts_sent:
                    # Parts before this one reached the patient: the outbox keeps count, and a retry sends
                    # only the rest. A part whose outcome is unknown stays unknown (never resent blindly).
                    return replace(result, parts_sent=index, provider_message_id=first_id)
                return result
            # The message id alone (unique within its chat; the row's identity names the chat): the chat id
            # is the patient's address, for neither the logs nor a column that erasure leaves alone.
            first_id = first_id or str(sent.message_id)
        return SendResult(Delivery.SENT, provider_message_id=first_id)

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        """Report that an unknown outcome stays unknown: the Bot API cannot look a sent message up."""
        # Resending could show the patient the same text twice, and the outbox never resends blindly.
        # The sender asks again with backoff; after its last attempt it marks the text failed, where
        # staff see it (error "timeout" or "unknown_outcome") and can check with the patient.
        return None

    def answer_callback(self, *, callback_query_id: str) -> bool:
        """Stop the spinner on a tapped button; best effort, never raises for Telegram's errors."""
        try:
            self._loop.run(self._ready)
            return bool(
                self._loop.run(
                    lambda: self.bot.answer_callback_query(callback_query_id, read_timeout=CALLBACK_ANSWER_TIMEOUT)
                )
            )
        except TelegramError as error:
            log.info("telegram callback answer failed (%s)", type(error).__name__)
            return False

    def fetch_media(self, reference: str) -> Media:
        """Fetch a file a patient sent ("telegram:<kind>:<file_id>"), for staff; raise MediaError naming the problem."""
        prefix, _, rest = reference.partition(":")
        kind, _, file_id = rest.partition(":")
        if prefix != "telegram" or not kind or not file_id:
            raise MediaError("the attachment is not a Telegram file reference")

        async def download() -> tuple[bytes, str]:
            await self._ready()
            file = await self.bot.get_file(file_id)
            if file.file_size and file.file_size > MAX_MEDIA_BYTES:
                raise MediaError(f"the attachment is larger than {MAX_MEDIA_BYTES // (1024 * 1024)} MB")
            return bytes(await file.download_as_bytearray()), file.file_path or ""

        try:
            content, path = self._loop.run(download)
        except TelegramError as error:
            raise MediaError(f"Telegram could not give the attachment ({type(error).__name__}: {error.message})") from None
        return Media(content, mimetypes.guess_type(path)[0] or "application/octet-stream")

    def close(self) -> None:
        """Release the HTTP client and the private event loop."""
        self._loop.close(self.bot)

    def _markup(self, text: OutgoingText) -> InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove | None:
        if text.buttons:
            # One button a row: topic titles are phrases that would be cut short side by side.
            rows = [[InlineKeyboardButton(b["title"], callback_data=_callback_data(b, i))]
                    for i, b in enumerate(text.buttons)]  # fmt: skip
            return InlineKeyboardMarkup(rows)
        hint = self._hint(text)
        if hint is not None and hint.request_contact_label:
            button = KeyboardButton(hint.request_contact_label, request_contact=True)
            return ReplyKeyboardMarkup([[button]], resize_keyboard=True, one_time_keyboard=True)
        if hint is not None and hint.remove:
            return ReplyKeyboardRemove()
        return None

    def _hint(self, text: OutgoingText) -> linking.KeyboardHint | None:
        if self.keyboard_for is None:
            return None
        try:
            return self.keyboard_for(text)
        except Exception:
            # A keyboard is a convenience: the text still goes out without it.
            log.exception("telegram outbox %s: keyboard lookup failed; sending without one", text.outbox_id)
            return None


# -- updates in ---------------------------------------------------------------------------------


class Kind(StrEnum):
    """What an update asks of us."""

    TEXT = "text"  # a message for the engine
    CALLBACK = "callback"  # an inline button tapped: its title is the patient's text
    CONTACT = "contact"  # a shared contact: identity linking
    START = "start"  # /start, with or without a link token
    BLOCKED = "blocked"
    UNBLOCKED = "unblocked"
    IGNORED = "ignored"


@dataclass(frozen=True)
class TelegramEvent:
    """One update in plain values; nothing past this point sees the SDK's objects."""

    update_id: int
    kind: Kind
    chat_id: int | None = None
    text: str = ""
    media: tuple[str, ...] = ()
    start_arg: str | None = None
    contact_phone: str | None = None
    contact_is_own: bool = False
    language_code: str | None = None
    callback_query_id: str | None = None


@dataclass(frozen=True)
class Handled:
    """What accepting an update did, so the caller wakes the right worker."""

    stored: bool = False  # a new message for the inbound processor
    queued: bool = False  # a reply queued here, for the outbox sender
    duplicate: bool = False


# -- the fields we read, checked ---------------------------------------------------------------
# python-telegram-bot builds objects from whatever JSON it is given, unchecked: a number where text
# belongs, or a message without its chat, would only fail later (a 500) or be stored as it came (a
# chat id {"x": 1} became the address "{'x': 1}"). So every field `read_update` reads from the kinds
# it handles is checked here first, and a wrong one is a 400 naming it. Telegram always sends these
# fields with these types: a body without them is not an update we can act on, and answering 400
# (which Telegram retries, and shows in getWebhookInfo's last_error_message) is never a silent drop.
# The kinds we do not handle (edited_message, channel_post ...) are not read, so not checked: they
# are acknowledged and ignored by update id (see `read_update`).

# Telegram's ids fit in a signed 64-bit integer; a longer number is not an id and overflows columns.
_MAX_ID = 2**63 - 1
_JSON_TYPE = {str: "a string", int: "an integer", dict: "an object", list: "an array"}


def _field(parent: dict[str, Any], name: str, kind: type, where: str, *, required: bool = False) -> Any:
    """Return parent[name] if it has the JSON type kind (None when absent); raise InvalidUpdate naming it."""
    value = parent.get(name)
    path = f"{where}.{name}" if where else name
    if value is None:
        if required:
            raise InvalidUpdate(f"{path} is required")
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidUpdate(f"{path} must be {_JSON_TYPE[kind]}")
    if kind is int and not -_MAX_ID - 1 <= value <= _MAX_ID:
        raise InvalidUpdate(f"{path} must be a 64-bit integer")
    return value


def _objects(values: list[Any], where: str) -> list[dict[str, Any]]:
    for index, value in enumerate(values):
        if not isinstance(value, dict):
            raise InvalidUpdate(f"{where}[{index}] must be an object")
    return values


def _check_chat(parent: dict[str, Any], where: str) -> None:
    chat = _field(parent, "chat", dict, where, required=True)
    _field(chat, "id", int, f"{where}.chat", required=True)
    _field(chat, "type", str, f"{where}.chat", required=True)


def _check_user(parent: dict[str, Any], where: str, *, required: bool) -> None:
    user = _field(parent, "from", dict, where, required=required)
    if user is not None:
        _field(user, "id", int, f"{where}.from", required=True)
        _field(user, "language_code", str, f"{where}.from")


def _check_message(message: dict[str, Any], where: str) -> None:
    """Check what `_read_message` and `_button_title` read from a message."""
    _check_chat(message, where)
    _check_user(message, where, required=False)
    _field(message, "text", str, where)
    _field(message, "caption", str, where)
    contact = _field(message, "contact", dict, where)
    if contact is not None:
        _field(contact, "phone_number", str, f"{where}.contact", required=True)
        _field(contact, "user_id", int, f"{where}.contact")
    sticker = _field(message, "sticker", dict, where)
    if sticker is not None:
        _field(sticker, "emoji", str, f"{where}.sticker")
    for kind in _FILE_KINDS:
        # A photo comes in several sizes (an array); every other kind is one object.
        attachment = _field(message, kind, list if kind == "photo" else dict, where)
        items = _objects(attachment, f"{where}.{kind}") if isinstance(attachment, list) else [attachment]
        for index, item in enumerate(items):
            if item is not None:
                at = f"{where}.{kind}" + (f"[{index}]" if kind == "photo" else "")
                _field(item, "file_id", str, at, required=True)
    markup = _field(message, "reply_markup", dict, where)
    rows = _field(markup, "inline_keyboard", list, f"{where}.reply_markup") if markup is not None else None
    for row_index, row in enumerate(rows or ()):
        at = f"{where}.reply_markup.inline_keyboard[{row_index}]"
        if not isinstance(row, list):
            raise InvalidUpdate(f"{at} must be an array")
        for index, button in enumerate(_objects(row, at)):
            _field(button, "text", str, f"{at}[{index}]", required=True)
            _field(button, "callback_data", str, f"{at}[{index}]")


def _check_fields(data: dict[str, Any]) -> None:
    """Check the fields `read_update` reads; raise InvalidUpdate naming the first one wrong."""
    message = _field(data, "message", dict, "")
    if message is not None:
        _check_message(message, "message")
    query = _field(data, "callback_query", dict, "")
    if query is not None:
        _field(query, "id", str, "callback_query", required=True)
        # Always sent: the language comes from it, and the chat too when the update carries no message.
        _check_user(query, "callback_query", required=True)
        _field(query, "data", str, "callback_query")
        tapped_on = _field(query, "message", dict, "callback_query")
        if tapped_on is not None:
            _check_message(tapped_on, "callback_query.message")
    member = _field(data, "my_chat_member", dict, "")
    if member is not None:
        _check_chat(member, "my_chat_member")
        new = _field(member, "new_chat_member", dict, "my_chat_member", required=True)
        _field(new, "status", str, "my_chat_member.new_chat_member", required=True)


def parse_update(body: bytes) -> Update:
    """Parse a webhook body into an Update, or raise InvalidUpdate saying what is wrong."""
    if len(body) > MAX_UPDATE_BYTES:
        raise InvalidUpdate(f"the update is larger than {MAX_UPDATE_BYTES} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidUpdate("the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise InvalidUpdate(f"the body is not JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    except RecursionError:
        # json gives up on arrays or objects nested about a thousand deep; no update is.
        raise InvalidUpdate("the body is not JSON we can read (nested too deep)") from None
    if not isinstance(data, dict):
        raise InvalidUpdate("the body is not a JSON object")
    update_id = data.get("update_id")
    if not isinstance(update_id, int) or isinstance(update_id, bool) or update_id < 0:
        raise InvalidUpdate("update_id must be a non-negative integer")
    if update_id > _MAX_ID:
        raise InvalidUpdate("update_id must be a 64-bit integer")
    _check_fields(data)
    # Only the kinds we act on are parsed: any other kind is acknowledged and ignored whatever it holds.
    handled = {name: data[name] for name in ALLOWED_UPDATES if name in data}
    try:
        return Update.de_json({"update_id": update_id, **handled}, None)
    except Exception as error:
        # PTB raises whatever a malformed field provokes (KeyError, TypeError, ValueError ...).
        raise InvalidUpdate(f"not a Telegram update: {error.__class__.__name__} {error}") from None


def _read_message(update_id: int, message: TelegramMessage) -> TelegramEvent:
    if message.chat.type != ChatType.PRIVATE:
        # Patients' matters are never discussed where others read along.
        return TelegramEvent(update_id, Kind.IGNORED)
    chat_id = message.chat.id
    sender = message.from_user
    language_code = sender.language_code if sender is not None else None
    if message.contact is not None:
        own = sender is not None and message.contact.user_id is not None and message.contact.user_id == sender.id
        return TelegramEvent(update_id, Kind.CONTACT, chat_id, contact_phone=message.contact.phone_number,
                             contact_is_own=own, language_code=language_code)  # fmt: skip
    text = message.text or message.caption or ""
    command, _, argument = text.strip().partition(" ")
    if message.text and command.split("@")[0] == "/start":
        return TelegramEvent(update_id, Kind.START, chat_id, start_arg=argument.strip() or None,
                             language_code=language_code)  # fmt: skip
    if not text and message.sticker is not None:
        # A sticker says what its emoji says.
        text = message.sticker.emoji or ""
    media: tuple[str, ...] = ()
    for kind in _FILE_KINDS:
        attachment = getattr(message, kind, None)
        if attachment:
            item = attachment[-1] if isinstance(attachment, tuple | list) else attachment  # largest photo last
            media = (f"telegram:{kind}:{item.file_id}",)
            break
    if not text and not media:
        return TelegramEvent(update_id, Kind.IGNORED, chat_id)
    return TelegramEvent(update_id, Kind.TEXT, chat_id, text=text, media=media, language_code=language_code)


def _button_title(query: CallbackQuery) -> str:
    data = query.data or ""
    markup = getattr(query.message, "reply_markup", None)
    if isinstance(markup, InlineKeyboardMarkup):
        for row in markup.inline_keyboard:
            for button in row:
                if button.callback_data == data:
                    return button.text
    # The keyboard is not in the update: the payload names the topic ("/lab_results").
    return "" if data.startswith("#") else data.lstrip("/").replace("_", " ")


def _read_callback(update_id: int, query: CallbackQuery) -> TelegramEvent:
    message = query.message
    if message is not None and message.chat.type != ChatType.PRIVATE:
        return TelegramEvent(update_id, Kind.IGNORED, callback_query_id=query.id)
    # In a private chat the chat id is the user's id.
    chat_id = message.chat.id if message is not None else query.from_user.id
    text = _button_title(query)
    kind = Kind.CALLBACK if text else Kind.IGNORED
    return TelegramEvent(update_id, kind, chat_id, text=text, language_code=query.from_user.language_code,
                         callback_query_id=query.id)  # fmt: skip


def read_update(update: Update) -> TelegramEvent:
    """Return what an update asks of us."""
    update_id = update.update_id
    if update.message is not None:
        return _read_message(update_id, update.message)
    if update.callback_query is not None:
        return _read_callback(update_id, update.callback_query)
    member = update.my_chat_member
    # Anything else (another kind of update, a group's member change, a kind of status we do not act on)
    # is acknowledged and ignored, logged by update id: Telegram would resend it on any other answer.
    if member is not None and member.chat.type == ChatType.PRIVATE:
        status = member.new_chat_member.status
        if status == ChatMember.BANNED:
            return TelegramEvent(update_id, Kind.BLOCKED, member.chat.id)
        if status == ChatMember.MEMBER:
            return TelegramEvent(update_id, Kind.UNBLOCKED, member.chat.id)
    return TelegramEvent(update_id, Kind.IGNORED)


def do_set_blocked(*, session: Session, identity: ChannelIdentity, blocked: bool, update_id: int) -> None:
    """Record that a patient blocked or unblocked the bot; a blocked chat gets nothing more."""
    if blocked and identity.opted_out_at is None:
        identity.opted_out_at = utcnow()
        cancelled = outbox.cancel_pending(session=session, identity_id=identity.id, reason="blocked")
        audit.record(session=session, actor_kind="patient", action="identity.blocked",
                     subject_type="channel_identity", subject_id=identity.id,
                     details={"update_id": update_id, "cancelled_outbox": cancelled})  # fmt: skip
    elif not blocked and identity.opted_out_at is not None:
        # Telegram has no STOP keyword: blocking is the opt-out, and unblocking or /start undoes it.
        identity.opted_out_at = None
        audit.record(session=session, actor_kind="patient", action="identity.unblocked",
                     subject_type="channel_identity", subject_id=identity.id,
                     details={"update_id": update_id})  # fmt: skip


def do_accept_update(*, session: Session, domain: Domain, event: TelegramEvent) -> Handled:
    """Store one update's effect exactly once: a message for the engine, a link, a greeting or a block."""
    if event.kind is Kind.IGNORED or event.chat_id is None:
        return Handled()
    address = str(event.chat_id)
    if event.kind in (Kind.BLOCKED, Kind.UNBLOCKED):
        identity = get_identity(session=session, channel=Channel.TELEGRAM, address=address)
        if identity is not None:
            do_set_blocked(session=session, identity=identity, blocked=event.kind is Kind.BLOCKED,
                           update_id=event.update_id)  # fmt: skip
        return Handled()
    provider_message_id = f"update:{event.update_id}"
    if event.kind in (Kind.TEXT, Kind.CALLBACK):
        inbound = InboundText(channel=Channel.TELEGRAM, address=address, text=event.text,
                              provider_message_id=provider_message_id, media_urls=event.media)  # fmt: skip
        accepted = do_accept_inbound(session=session, inbound=inbound)
        return Handled(stored=accepted.stored, duplicate=not accepted.stored)
    # A contact or a command is answered here, never read by the NLU; the stored body is a note
    # for staff (a link token is a secret and the shared number is on the patient's record).
    note = "/start" if event.kind is Kind.START else "[shared contact]"
    accepted = do_accept_inbound(
        session=session,
        inbound=InboundText(channel=Channel.TELEGRAM, address=address, text=note,
                            provider_message_id=provider_message_id),  # fmt: skip
    )
    if not accepted.stored or accepted.message_id is None:
        return Handled(duplicate=True)
    message = session.get(Message, accepted.message_id)
    conversation = session.get(Conversation, accepted.conversation_id)
    identity = session.get(ChannelIdentity, accepted.identity_id)
    assert message is not None and conversation is not None and identity is not None
    message.processed_at, message.route = utcnow(), Route.ANSWER
    if event.kind is Kind.CONTACT:
        message.intent = "telegram_contact"
        key = linking.do_link_by_contact(session=session, identity=identity, phone=event.contact_phone or "",
                                         own=event.contact_is_own, update_id=event.update_id)  # fmt: skip
    else:
        # /start is what Telegram sends when a patient restarts a chat they had blocked.
        do_set_blocked(session=session, identity=identity, blocked=False, update_id=event.update_id)
        if event.start_arg:
            message.intent = "telegram_link"
            key = linking.do_link_by_token(session=session, identity=identity, token=event.start_arg,
                                           update_id=event.update_id)  # fmt: skip
        elif conversation.state in (ConversationState.WAITING, ConversationState.STAFF):
            # Staff own this conversation; a greeting from the bot would talk over them.
            message.intent, message.route = "greeting", Route.SILENT
            return Handled()
        else:
            message.intent, key = "greeting", "utter_greet"
    patient = session.get(Patient, identity.patient_id) if identity.is_verified else None
    lang = linking.reply_language(session=session, conversation=conversation, patient=patient,
                                  language_code=event.language_code)  # fmt: skip
    conversation.language = message.lang = lang
    queued = linking.do_queue_reply(session=session, domain=domain, identity=identity, conversation=conversation,
                                    key=key, lang=lang, outbox_key=f"telegram-link:{event.update_id}")  # fmt: skip
    return Handled(queued=queued is not None)


def accept_update(update: Update, *, domain: Domain) -> tuple[TelegramEvent, Handled]:
    """Read one update and store its effect in its own transaction."""
    event = read_update(update)
    with session_scope() as session:
        handled = do_accept_update(session=session, domain=domain, event=event)
    log.info("telegram update %s %s%s", event.update_id, event.kind, " (duplicate)" if handled.duplicate else "")
    return event, handled


def notify(workers: Workers | None, handled: Handled) -> None:
    """Wake the workers an accepted update gave work to."""
    if workers is None:
        return
    if handled.stored:
        workers.notify_inbound()
    if handled.queued:
        workers.notify_outbox()


class TelegramPoller:
    """Fetch updates by long polling (development without a public URL) into the webhook's intake."""

    def __init__(
        self, *, bot: Bot, domain: Domain, workers: Workers | None = None, poll_timeout: int = POLL_TIMEOUT_SECONDS
    ) -> None:
        self.bot = bot
        self.domain = domain
        self.workers = workers
        self.poll_timeout = poll_timeout
        self._loop = _Loop()
        # Updates below the offset are confirmed to Telegram; it only moves past stored updates.
        self._offset: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, domain: Domain, workers: Workers | None = None) -> TelegramPoller:
        """Build a poller from TELEGRAM_* settings."""
        return cls(bot=make_bot(settings, timeout=10.0), domain=domain, workers=workers)

    async def poll(self, *, timeout: int) -> int:
        """Fetch one batch of updates, store each once, and confirm them; return how many came."""
        updates = await self.bot.get_updates(offset=self._offset, timeout=timeout, allowed_updates=list(ALLOWED_UPDATES))
        for update in updates:
            event, handled = accept_update(update, domain=self.domain)
            # Stored (or a duplicate): the next getUpdates may confirm it.
            self._offset = update.update_id + 1
            notify(self.workers, handled)
            if event.callback_query_id:
                try:
                    await self.bot.answer_callback_query(event.callback_query_id, read_timeout=CALLBACK_ANSWER_TIMEOUT)
                except TelegramError as error:
                    log.info("telegram callback answer failed (%s)", type(error).__name__)
        return len(updates)

    def poll_once(self, *, timeout: int = 0) -> int:
        """Run one polling round in the calling thread; return how many updates came."""

        async def once() -> int:
            await self.bot.initialize()
            return await self.poll(timeout=timeout)

        return self._loop.run(once)

    async def _prepare(self) -> bool:
        while True:
            try:
                await self.bot.initialize()
                # Telegram refuses getUpdates while a webhook is set (409), as python-telegram-bot's
                # own run_polling does, remove it; `clinicbot telegram set-webhook` puts it back.
                await self.bot.delete_webhook(drop_pending_updates=False)
                log.warning("telegram long polling started; the webhook is removed while it runs")
                return True
            except InvalidToken:
                log.error("telegram rejected the bot token; long polling stops (check TELEGRAM_BOT_TOKEN)")
                return False
            except TelegramError as error:
                log.warning("telegram polling cannot start yet (%s); retrying", type(error).__name__)
                await asyncio.sleep(POLL_RETRY_SECONDS)

    async def _run(self) -> None:
        if not await self._prepare():
            return
        while True:
            try:
                await self.poll(timeout=self.poll_timeout)
            except TelegramError as error:
                log.warning("telegram polling failed (%s); retrying", type(error).__name__)
                await asyncio.sleep(POLL_RETRY_SECONDS)
            except Exception:
                # The database, most likely: the update was not confirmed, so Telegram sends it again.
                log.exception("telegram polling round failed; retrying")
                await asyncio.sleep(POLL_RETRY_SECONDS)

    def start(self) -> None:
        """Poll in a background thread until stop()."""
        self._task = self._loop.loop.create_task(self._run())
        self._thread = threading.Thread(target=self._thread_main, name="clinicbot-telegram-polling", daemon=True)
        self._thread.start()

    def _thread_main(self) -> None:
        assert self._task is not None
        with self._loop.lock:
            try:
                self._loop.loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("telegram polling stopped")
        self.close()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop polling now, cancelling an open long poll, and release the client."""
        thread, task = self._thread, self._task
        if thread is None or task is None:
            self.close()
            return
        with contextlib.suppress(RuntimeError):  # the loop already finished and closed
            self._loop.loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        """Return whether the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Release the HTTP client and the private event loop."""
        self._loop.close(self.bot)


def bot_username(*, settings: Settings) -> str:
    """Ask Telegram for the bot's @username (getMe), for t.me deep links."""
    bot = make_bot(settings, timeout=15.0)

    async def ask() -> str:
        async with bot:
            me = await bot.get_me()
            return me.username or ""

    try:
        username = asyncio.run(ask())
    except InvalidToken:
        raise TelegramSetupError("Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather") from None
    except TelegramError as error:
        raise TelegramSetupError(f"could not ask Telegram for the bot's name ({error.__class__.__name__})") from None
    if not username:
        raise TelegramSetupError("Telegram returned no username for this bot")
    return username


def set_webhook(*, settings: Settings) -> str:
    """Register PUBLIC_URL/webhooks/telegram and the secret token with Telegram; return the URL."""
    if not settings.telegram_enabled:
        raise TelegramSetupError("TELEGRAM_BOT_TOKEN is not set")
    secret = settings.telegram_webhook_secret.get_secret_value()
    if not secret:
        raise TelegramSetupError("TELEGRAM_WEBHOOK_SECRET is not set; Telegram must send it with every update")
    if not _SECRET_TOKEN.fullmatch(secret):
        raise TelegramSetupError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
    public = settings.public_url.rstrip("/")
    if urlsplit(public).scheme != "https" or not urlsplit(public).netloc:
        raise TelegramSetupError(f"CLINICBOT_PUBLIC_URL must be an https:// URL for a Telegram webhook, not {public!r}")
    url = public + WEBHOOK_PATH
    bot = make_bot(settings, timeout=15.0)

    async def register() -> None:
        async with bot:
            await bot.set_webhook(url=url, secret_token=secret, allowed_updates=list(ALLOWED_UPDATES))

    api = urlsplit(settings.telegram_api_base_url).netloc or settings.telegram_api_base_url
    try:
        asyncio.run(register())
    except InvalidToken:
        # PTB's own message repeats the token; say it without.
        raise TelegramSetupError("Telegram rejected TELEGRAM_BOT_TOKEN; check it with @BotFather") from None
    except TelegramError as error:
        # BadRequest is a NetworkError in PTB; only a transport failure means Telegram was not reached.
        if isinstance(error, TimedOut) or isinstance(error.__cause__, httpx.HTTPError):
            raise TelegramSetupError(f"could not reach the Telegram Bot API at {api} ({error.__class__.__name__})") from None
        raise TelegramSetupError(f"Telegram refused the webhook: {error.message}") from None
    log.info("telegram webhook registered")
    return url
