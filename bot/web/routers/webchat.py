"""The patient web chat: the page, its message API, live replies over SSE, and verification by code.

A visitor is an anonymous session: a random 128-bit id in an HttpOnly cookie. The database only
ever sees a hash of it (the web chat identity's address), so a copy of the database cannot be used
to take over a verified session. Replies are read from the outbox, never from memory, so any app
process can serve any visitor's stream.

Limits (messages and code requests per session, new sessions per IP) are moving windows counted in
this process, or in a Redis that app replicas share (bot.web.ratelimit). Code requests are also
limited in the database (per phone and per session), and wrong codes per code.

An emergency is never refused for being one message too many or too long: a message the safety rules
call an emergency is stored and routed (instructions and a staff alert) past the per-session message
limit and past the 2,000-character limit. It is still bounded: past the ordinary limit at most
EMERGENCY_RATE_PER_MINUTE such messages a minute per session, and at most MAX_EMERGENCY_TEXT_CHARS
characters (stored whole; the request body limit applies as ever). Every other refusal is unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from bot.channels import verification
from bot.channels.inbound import InboundText, do_accept_inbound
from bot.channels.models import OutboxMessage, OutboxStatus
from bot.config import Settings
from bot.conversations.models import Conversation, Direction, Message
from bot.conversations.service import clean_text
from bot.db import read_scope, session_scope, utcnow
from bot.nlu.safety import check
from bot.patients.models import Channel, Patient
from bot.patients.service import InvalidPhoneError, get_identity, get_or_create_identity, normalize_phone
from bot.runtime import Runtime
from bot.web.deps import RuntimeDep, SettingsDep, WorkersDep
from bot.web.origin import origin_matches
from bot.web.paths import TEMPLATES_DIR, asset_version
from bot.web.ratelimit import RateLimiter

log = logging.getLogger(__name__)

router = APIRouter(prefix="/chat", include_in_schema=False)

templates = Jinja2Templates(directory=TEMPLATES_DIR)

COOKIE_NAME = "clinicbot_chat"
SESSION_ID = re.compile(r"[0-9a-f]{32}")
LANGUAGES = ("en", "es")
MAX_TEXT_CHARS = 2_000
# An emergency is let past the limits below, up to these: twice the length (the whole text is stored and
# routed, so the safety rules read all of it again), and 60 more a minute per session than the ordinary
# limit, so a session that floods "emergencies" is still bounded. The text is read by the safety rules
# only when a request would otherwise be refused, and never past this length (a few ms of CPU at most).
MAX_EMERGENCY_TEXT_CHARS = 4_000
EMERGENCY_RATE_PER_MINUTE = 60
MAX_CLIENT_ID_CHARS = 64
MAX_BODY_BYTES = 16_384
POLL_SECONDS = 0.5
STREAM_SECONDS = 300  # then the browser reconnects with Last-Event-ID, freeing this worker slot
KEEPALIVE_SECONDS = 15
RETRY_MILLISECONDS = 2_000
EVENT_BATCH = 200
MAX_STREAMS_PER_SESSION = 5

# Outbox states a visitor may see, states that will never be shown, and (all others) not yet decided.
SHOWN = frozenset({OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.READ})
NEVER_SHOWN = frozenset({OutboxStatus.FAILED, OutboxStatus.CANCELLED, OutboxStatus.UNDELIVERED})

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
}


# -- limits ------------------------------------------------------------------------------------


@dataclass
class WebChatState:
    """This app's state: the rate limits (counted here or in a shared Redis) and its open event streams."""

    limits: RateLimiter
    streams: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def open_stream(self, session_id: str) -> bool:
        with self.lock:
            if self.streams[session_id] >= MAX_STREAMS_PER_SESSION:
                return False
            self.streams[session_id] += 1
            return True

    def close_stream(self, session_id: str) -> None:
        with self.lock:
            self.streams[session_id] -= 1
            if self.streams[session_id] <= 0:
                del self.streams[session_id]


_state_lock = threading.Lock()


def _state(request: Request, settings: Settings) -> WebChatState:
    """Return this app's web chat state, built on first use."""
    with _state_lock:
        state = getattr(request.app.state, "webchat", None)
        if state is None:
            state = WebChatState(limits=RateLimiter(
                per_minute=settings.webchat_rate_per_minute,
                storage_url=settings.rate_limit_storage_url.get_secret_value(),
            ))  # fmt: skip
            request.app.state.webchat = state
        return state


class Refused(Exception):
    """A request is refused with a status, a JSON detail and optional headers."""

    def __init__(
        self, status: int, detail: str, *, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.field, self.retry_after = status, detail, field, retry_after

    def response(self, extra: dict[str, Any] | None = None) -> JSONResponse:
        headers = dict(SECURITY_HEADERS)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        body: dict[str, Any] = {"detail": self.detail, **(extra or {})}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=headers)


def _too_many(retry_after: int) -> Refused:
    return Refused(429, "too many requests; try again later", retry_after=retry_after)


# -- sessions and origin -----------------------------------------------------------------------


def address_for(session_id: str) -> str:
    """Return the web chat identity address for a session id (a hash: the id itself is a credential)."""
    return hashlib.sha256(f"clinicbot-webchat:{session_id}".encode()).hexdigest()


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Visitor:
    """The session behind a request; `new` when this response must set the cookie."""

    session_id: str
    new: bool

    @property
    def address(self) -> str:
        return address_for(self.session_id)


async def _visitor(request: Request, state: WebChatState) -> Visitor:
    """Return the visitor's session, starting one (limited per IP) when there is no valid cookie."""
    value = request.cookies.get(COOKIE_NAME, "")
    if SESSION_ID.fullmatch(value):
        return Visitor(value, new=False)
    retry = await state.limits.check("sessions", f"ip:{_client_ip(request)}")
    if retry is not None:
        raise _too_many(retry)
    return Visitor(secrets.token_hex(16), new=True)


def _set_cookie(response: Response, visitor: Visitor, settings: Settings) -> Response:
    if visitor.new:
        # No max-age: the session ends when the browser closes, which suits shared computers.
        response.set_cookie(
            COOKIE_NAME,
            visitor.session_id,
            httponly=True,
            samesite="lax",
            secure=settings.public_url_is_https,
            path="/chat",
        )
    return response


def _origin_allowed(request: Request, settings: Settings) -> bool:
    """Return whether a state-changing request comes from our own page (the CSRF defence)."""
    # Strict: the chat's requests come from its own script, which browsers always send with an Origin.
    return origin_matches(request, settings) is True


def _check_origin(request: Request, settings: Settings) -> None:
    if not _origin_allowed(request, settings):
        log.info("web chat %s refused: origin does not match", request.url.path)
        raise Refused(403, "cross-origin request refused: the Origin header must match this site")


# -- request bodies ----------------------------------------------------------------------------

Model = TypeVar("Model", bound=BaseModel)


class MessageIn(BaseModel):
    """A visitor's message; the client id makes a double submit harmless."""

    model_config = ConfigDict(extra="ignore")

    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
    client_message_id: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_CLIENT_ID_CHARS, pattern=r"^[A-Za-z0-9_-]+$")
    ]

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        # Blank once stored: control characters are dropped there (clean_text), and nothing would be left.
        if not clean_text(value).strip():
            raise ValueError("must not be blank")
        return value


class EmergencyMessageIn(MessageIn):
    """An emergency, which may run longer than an ordinary message (up to MAX_EMERGENCY_TEXT_CHARS)."""

    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EMERGENCY_TEXT_CHARS)]


class VerifyStartIn(BaseModel):
    """The details on file: phone number and date of birth."""

    model_config = ConfigDict(extra="ignore")

    phone: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    date_of_birth: date
    lang: Literal["en", "es"] = "en"


class VerifyCodeIn(BaseModel):
    """A 6-digit code as typed (spaces and dashes are ignored)."""

    model_config = ConfigDict(extra="ignore")

    # [0-9], not \d: \d also matches other scripts' digits ("١٢٣٤٥٦"), which no code we send contains.
    code: Annotated[str, StringConstraints(pattern=r"^[0-9]{6}$")]
    lang: Literal["en", "es"] = "en"

    @field_validator("code", mode="before")
    @classmethod
    def _compact(cls, value: Any) -> Any:
        return re.sub(r"[\s-]", "", value) if isinstance(value, str) else value


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """Return the field and a sentence naming it, for one pydantic error."""
    name = ".".join(str(part) for part in error.get("loc", ())) or "body"
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    if kind == "missing":
        what = "is required"
    elif kind == "string_too_long":
        what = f"must be at most {ctx.get('max_length'):,} characters"
    elif kind == "string_too_short":
        what = "must not be empty"
    elif kind == "string_pattern_mismatch":
        what = "must be 6 digits (0-9)" if name == "code" else "may contain only letters, digits, '-' and '_'"
    elif kind == "string_type":
        what = "must be a string"
    elif kind == "value_error":
        what = str(ctx.get("error", error.get("msg", "is invalid")))
    elif kind.startswith("date"):
        what = "must be a date like 1980-01-31"
    elif kind == "literal_error":
        what = f"must be one of {', '.join(LANGUAGES)}"
    else:
        what = str(error.get("msg", "is invalid")).lower()
    return name, f"{name}: {what}"


async def _parse(request: Request, model: type[Model]) -> Model:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise Refused(413, f"body: must be at most {MAX_BODY_BYTES:,} bytes", field="body")
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise Refused(422, "body: must be a JSON object", field="body") from None
    except RecursionError:
        # json gives up on arrays or objects nested about a thousand deep; no chat message looks like that.
        raise Refused(422, "body: must be a JSON object, not nested this deep", field="body") from None
    if not isinstance(data, dict):
        raise Refused(422, "body: must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        name, sentence = _describe(error.errors()[0])
        raise Refused(422, sentence, field=name) from None


async def _is_emergency(request: Request) -> bool:
    """Return whether the body's text is an emergency by the safety rules (read once per request).

    Asked only of a message about to be refused; a body that is not a JSON object with a text of at most
    MAX_EMERGENCY_TEXT_CHARS is not read at all. The text is cleaned as it will be stored, so the
    engine, which reads the stored text, reaches the same verdict.
    """
    known = getattr(request.state, "emergency", None)
    if known is not None:
        return bool(known)
    found = False
    raw = await request.body()
    if len(raw) <= MAX_BODY_BYTES:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            data = None
        text = data.get("text") if isinstance(data, dict) else None
        if isinstance(text, str) and len(text) <= MAX_EMERGENCY_TEXT_CHARS:
            found = (await run_in_threadpool(check, clean_text(text))).is_emergency
    request.state.emergency = found
    return found


async def _admit(
    request: Request,
    settings: Settings,
    *,
    limiter: str,
    model: type[Model],
    replace_lapsed: bool = False,
    emergency: type[Model] | None = None,
) -> tuple[Visitor, Model]:
    """Check origin and the visitor's rate limit, then parse the body; raise Refused on any failure.

    `replace_lapsed`: a session whose verification lapsed is replaced first (see `_session_state`), so
    verifying again, perhaps as someone else, never reopens the history of the earlier verification.
    `emergency`: the model of an emergency message, which passes the rate limit (up to its own) and the
    model's checks when only its longer text keeps it from passing them.
    """
    _check_origin(request, settings)
    state = _state(request, settings)
    visitor = (await _current_visitor(request, state))[0] if replace_lapsed else await _visitor(request, state)
    key = f"session:{visitor.session_id}"
    retry = await state.limits.check(limiter, key)
    if retry is not None:
        if emergency is None or not await _is_emergency(request):
            log.info("web chat request refused: rate limit")
            raise _too_many(retry)
        beyond = await state.limits.check(f"{limiter}:emergency", key, per_minute=EMERGENCY_RATE_PER_MINUTE)
        if beyond is not None:
            log.warning("web chat emergency refused: past the emergency rate limit too")
            raise _too_many(beyond)
        log.warning("web chat emergency let past the rate limit")
    try:
        return visitor, await _parse(request, model)
    except Refused:
        if emergency is None or not await _is_emergency(request):
            raise
        parsed = await _parse(request, emergency)
        log.warning("web chat emergency let past the message checks")
        return visitor, parsed


# -- the page ----------------------------------------------------------------------------------


def page_language(request: Request) -> str:
    """Pick the page language: ?lang=, else the best of Accept-Language, else English."""
    asked = request.query_params.get("lang", "").lower()
    if asked in LANGUAGES:
        return asked
    best, best_q = "en", 0.0
    for part in request.headers.get("accept-language", "").split(","):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().split("-")[0].lower()
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if primary in LANGUAGES and quality > best_q:
            best, best_q = primary, quality
    return best


def _session_state(address: str) -> tuple[str | None, bool]:
    """Return the verified patient's preferred name for this session, and whether its verification lapsed.

    A stale verification is ended here. A lapsed session (verified once, not now) must not show its
    history again: the answers it got while verified carry personal information, and the person at
    this browser now may not be that patient (a shared computer left open past VERIFIED_SESSION_TTL).
    """
    # Every page load and event stream asks: a read beside SQLite's writer; the writer only to end one.
    with read_scope() as session:
        identity = get_identity(session=session, channel=Channel.WEBCHAT, address=address)
        if identity is None:
            return None, False
        stale = identity.verified_at is not None and not identity.is_verified
        if not identity.is_verified:
            # A web chat identity gets a patient only by verifying, and keeps it for staff when that ends.
            lapsed = identity.patient_id is not None
        else:
            patient = session.get(Patient, identity.patient_id)
            return (patient.display_name if patient is not None else None), False
    if stale:
        with session_scope() as session:
            identity = get_identity(session=session, channel=Channel.WEBCHAT, address=address)
            if identity is not None:
                verification.expire_stale_verification(session=session, identity=identity)
    return None, lapsed


async def _current_visitor(request: Request, state: WebChatState) -> tuple[Visitor, str | None]:
    """Return the visitor and the verified name; a lapsed session is replaced by a new, empty one."""
    visitor = await _visitor(request, state)
    if visitor.new:
        return visitor, None
    name, lapsed = await run_in_threadpool(_session_state, visitor.address)
    if lapsed:
        log.info("web chat session replaced: its verification ended")
        return Visitor(secrets.token_hex(16), new=True), None
    return visitor, name


@router.get("", response_class=HTMLResponse)
async def chat_page(request: Request, settings: SettingsDep, runtime: RuntimeDep) -> Response:
    """Serve the chat page."""
    state = _state(request, settings)
    lang = page_language(request)
    try:
        visitor, name = await _current_visitor(request, state)
    except Refused as refused:
        return templates.TemplateResponse(
            request,
            "chat_busy.html",
            {"lang": lang},
            status_code=429,
            headers={**PAGE_HEADERS, "Retry-After": str(refused.retry_after or 60)},
        )
    clinic = runtime.clinic
    today = clinic.calendar.local_date(utcnow())
    response = templates.TemplateResponse(
        request,
        "chat.html",
        {
            "lang": lang,
            "other_lang": "es" if lang == "en" else "en",
            "clinic": clinic,
            "hours_today": clinic.calendar.hours_text(today, lang=lang),
            "verified_name": name,
            "max_chars": MAX_TEXT_CHARS,
            "css_version": asset_version("chat/chat.css"),
            "js_version": asset_version("chat/chat.js"),
        },
        headers=PAGE_HEADERS,
    )
    return _set_cookie(response, visitor, settings)


# -- messages ----------------------------------------------------------------------------------


def provider_message_id(*, identity_id: int, client_message_id: str) -> str:
    """Return the dedupe id of a visitor's message: unique per web chat identity and client message id.

    The identity, not the session: a session id rotates when the visitor verifies (the identity keeps its
    id and takes the new address), and a message whose 202 was lost before that, retried after it, must
    be recognised. Identity ids are unique, so two visitors never share one. (A session replaced after
    its verification lapsed is a new identity on purpose: a retry there is that new chat's message, shown
    and answered in it, not a duplicate of one in a history it may no longer see.)
    """
    return f"i{identity_id}:{client_message_id}"


def _legacy_provider_message_id(*, address: str, client_message_id: str) -> str:
    """Return the dedupe id stored before identity ids were used: the session's address hash prefix."""
    return f"{address[:32]}:{client_message_id}"


def _accept(address: str, body: MessageIn) -> tuple[bool, int]:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel=Channel.WEBCHAT, address=address)
        verification.expire_stale_verification(session=session, identity=identity)
        # A retry of a message stored under the earlier id (the same session, across an upgrade) is a duplicate.
        legacy = _legacy_provider_message_id(address=address, client_message_id=body.client_message_id)
        stored_before = session.scalar(
            select(Message.id).where(Message.channel == Channel.WEBCHAT, Message.provider_message_id == legacy)
        )
        if stored_before is not None:
            return False, identity.id
        accepted = do_accept_inbound(
            session=session,
            inbound=InboundText(
                channel=Channel.WEBCHAT,
                address=address,
                text=body.text,
                provider_message_id=provider_message_id(
                    identity_id=identity.id, client_message_id=body.client_message_id
                ),
            ),
        )
        return accepted.stored, accepted.identity_id


@router.post("/api/messages", status_code=202)
async def post_message(request: Request, settings: SettingsDep, workers: WorkersDep) -> Response:
    """Store a visitor's message and wake the processor; the reply arrives on the event stream."""
    try:
        visitor, body = await _admit(
            request, settings, limiter="messages", model=MessageIn, emergency=EmergencyMessageIn
        )
    except Refused as refused:
        return refused.response()
    stored, identity_id = await workers.intake.run(_accept, visitor.address, body)
    if stored:
        workers.notify_inbound()
    log.info("web chat message from identity %s %s", identity_id, "stored" if stored else "was a duplicate")
    response = JSONResponse(
        {"status": "accepted" if stored else "duplicate"}, status_code=202, headers=SECURITY_HEADERS
    )
    return _set_cookie(response, visitor, settings)


# -- the event stream --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Where a stream stands: the last visitor message and the last outbox row it has passed."""

    inbound: int = 0
    outbound: int = 0

    @classmethod
    def parse(cls, value: str | None) -> Cursor:
        match = re.fullmatch(r"(\d{1,18})-(\d{1,18})", (value or "").strip())
        return cls(int(match[1]), int(match[2])) if match else cls()

    def __str__(self) -> str:
        return f"{self.inbound}-{self.outbound}"


def _event(cursor: Cursor, payload: dict[str, Any]) -> str:
    return f"id: {cursor}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


def poll_events(
    address: str, cursor: Cursor, identity_id: int | None
) -> tuple[list[str], Cursor, int | None]:
    """Read what the visitor has not seen yet, in order; return SSE frames, the new cursor and the identity."""
    # Every open chat polls twice a second: a read beside SQLite's writer, never in its queue.
    with read_scope() as session:
        if identity_id is None:
            identity = get_identity(session=session, channel=Channel.WEBCHAT, address=address)
            if identity is None:
                return [], cursor, None
            identity_id = identity.id
        inbound = session.execute(
            select(Message.id, Message.body, Message.provider_message_id, Message.created_at)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.identity_id == identity_id,
                Message.direction == Direction.IN,
                Message.id > cursor.inbound,
            )
            .order_by(Message.id)
            .limit(EVENT_BATCH)
        ).all()
        outbound = session.execute(
            select(
                OutboxMessage.id,
                OutboxMessage.status,
                OutboxMessage.body,
                OutboxMessage.buttons,
                OutboxMessage.created_at,
                Message.author_kind,
            )  # fmt: skip
            .outerjoin(Message, Message.id == OutboxMessage.message_id)
            .where(OutboxMessage.identity_id == identity_id, OutboxMessage.id > cursor.outbound)
            .order_by(OutboxMessage.id)
            .limit(EVENT_BATCH)
        ).all()
    # Replies are shown in outbox order and only once delivered: stop at the first undecided row,
    # so a later row sent first (an emergency jumps the queue) never moves the cursor past it.
    replies = []
    for row in outbound:
        if row.status in SHOWN:
            replies.append(row)
        elif row.status not in NEVER_SHOWN:
            break
        else:
            replies.append(row)  # passed over silently, but the cursor moves past it
    frames: list[str] = []
    i = j = 0
    while i < len(inbound) or j < len(replies):
        take_inbound = j >= len(replies) or (
            i < len(inbound) and inbound[i].created_at <= replies[j].created_at
        )
        if take_inbound:
            row, i = inbound[i], i + 1
            cursor = Cursor(row.id, cursor.outbound)
            if row.body is None:
                continue
            client_id = (row.provider_message_id or "").partition(":")[2]
            frames.append(_event(cursor, {"kind": "visitor", "key": f"in:{row.id}", "text": row.body,
                                          "client_message_id": client_id}))  # fmt: skip
        else:
            row, j = replies[j], j + 1
            cursor = Cursor(cursor.inbound, row.id)
            if row.status in NEVER_SHOWN or row.body is None:
                continue
            buttons = [{"title": str(b.get("title", ""))} for b in row.buttons or [] if b.get("title")]
            author = "staff" if row.author_kind == "staff" else "bot"
            frames.append(_event(cursor, {"kind": "reply", "key": f"out:{row.id}", "text": row.body,
                                          "buttons": buttons, "author": author}))  # fmt: skip
    return frames, cursor, identity_id


async def _stream(
    request: Request, *, visitor: Visitor, cursor: Cursor, once: bool, state: WebChatState
) -> AsyncIterator[str]:
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        identity_id: int | None = None
        started = last_sent = time.monotonic()
        while True:
            frames, cursor, identity_id = await run_in_threadpool(
                poll_events, visitor.address, cursor, identity_id
            )
            if frames:
                yield "".join(frames)
                last_sent = time.monotonic()
            now = time.monotonic()
            if once or now - started >= STREAM_SECONDS or await request.is_disconnected():
                return
            if now - last_sent >= KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                last_sent = now
            await asyncio.sleep(POLL_SECONDS)
    finally:
        state.close_stream(visitor.session_id)


@router.get("/api/events")
async def events(
    request: Request,
    settings: SettingsDep,
    once: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> Response:
    """Stream the conversation as Server-Sent Events; `once=1` returns after one read (tests, polling)."""
    state = _state(request, settings)
    try:
        visitor, _ = await _current_visitor(request, state)
    except Refused as refused:
        return refused.response()
    if not state.open_stream(visitor.session_id):
        return _too_many(RETRY_MILLISECONDS // 1000).response()
    response = StreamingResponse(
        _stream(request, visitor=visitor, cursor=Cursor.parse(last_event_id), once=once, state=state),
        media_type="text/event-stream",
        headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
    )
    return _set_cookie(response, visitor, settings)


# -- verification ------------------------------------------------------------------------------


def _say(runtime: Runtime, key: str, lang: str, **values: str) -> str:
    clinic = runtime.clinic
    filled = {"clinic_name": clinic.name, "phone": clinic.phone, **values}
    return runtime.domain.render(key, lang=lang, slots={}, values=filled)


def _start(address: str, phone: str, date_of_birth: date, runtime: Runtime) -> verification.StartOutcome:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel=Channel.WEBCHAT, address=address)
        return verification.do_start_verification(
            session=session,
            identity=identity,
            phone=phone,
            date_of_birth=date_of_birth,
            domain=runtime.domain,
        )


@router.post("/api/verify/start")
async def verify_start(
    request: Request, settings: SettingsDep, runtime: RuntimeDep, workers: WorkersDep
) -> Response:
    """Send a code if the phone and birth date match a patient; the answer is the same either way."""
    try:
        visitor, body = await _admit(request, settings, limiter="verify", model=VerifyStartIn, replace_lapsed=True)
        try:
            phone = normalize_phone(body.phone)
        except InvalidPhoneError:
            raise Refused(422, "phone: must be a phone number like (617) 555-0142", field="phone") from None
    except Refused as refused:
        return refused.response()
    outcome = await run_in_threadpool(_start, visitor.address, phone, body.date_of_birth, runtime)
    if outcome.result is verification.StartResult.TOO_MANY:
        response = Refused(429, "too many codes requested", retry_after=3600).response(
            {"status": "too_many", "message": _say(runtime, "utter_verify_too_many", body.lang)}
        )
    else:
        workers.notify_outbox()
        response = JSONResponse(
            {"status": "sent", "message": _say(runtime, "utter_verify_code_sent", body.lang)},
            status_code=202,
            headers=SECURITY_HEADERS,
        )
    return _set_cookie(response, visitor, settings)


def _check(
    address: str, code: str, lang: str, runtime: Runtime, rotated: Visitor
) -> tuple[verification.CheckOutcome, str | None]:
    with session_scope() as session:
        identity = get_identity(session=session, channel=Channel.WEBCHAT, address=address)
        if identity is None:
            return verification.CheckOutcome(verification.CheckResult.DEAD), None
        outcome = verification.do_check_code(
            session=session, identity=identity, code=code, domain=runtime.domain, lang=lang
        )
        name = None
        if outcome.result is verification.CheckResult.VERIFIED:
            patient = session.get(Patient, outcome.patient_id)
            name = patient.display_name if patient is not None else None
            # A new session id on verification: a session id planted or seen before is worth nothing now.
            identity.address = rotated.address
        return outcome, name


@router.post("/api/verify/code")
async def verify_code(
    request: Request, settings: SettingsDep, runtime: RuntimeDep, workers: WorkersDep
) -> Response:
    """Check a code; a correct one verifies this chat session."""
    try:
        visitor, body = await _admit(request, settings, limiter="verify", model=VerifyCodeIn, replace_lapsed=True)
    except Refused as refused:
        return refused.response()
    rotated = Visitor(secrets.token_hex(16), new=True)
    if visitor.new:
        outcome, name = verification.CheckOutcome(verification.CheckResult.DEAD), None
    else:
        outcome, name = await run_in_threadpool(
            _check, visitor.address, body.code, body.lang, runtime, rotated
        )
    result = verification.CheckResult
    if outcome.result is result.VERIFIED:
        visitor = rotated
        workers.notify_outbox()
        payload: dict[str, Any] = {"status": "verified", "name": name,
                                   "message": _say(runtime, "utter_verify_success", body.lang, name=name or "")}  # fmt: skip
        response: Response = JSONResponse(payload, headers=SECURITY_HEADERS)
    elif outcome.result is result.WRONG:
        response = Refused(400, "wrong code").response(
            {
                "status": "wrong",
                "attempts_left": outcome.attempts_left,
                "message": _say(runtime, "utter_verify_wrong_code", body.lang),
            }  # fmt: skip
        )
    else:
        response = Refused(400, "code expired or used up").response(
            {"status": "dead", "message": _say(runtime, "utter_verify_code_dead", body.lang)}
        )
    return _set_cookie(response, visitor, settings)


def _end(address: str) -> bool:
    with session_scope() as session:
        identity = get_identity(session=session, channel=Channel.WEBCHAT, address=address)
        if identity is None:
            return False
        return verification.do_end_verification(session=session, identity=identity, reason="signed_out")


@router.post("/api/session/end")
async def end_session(request: Request, settings: SettingsDep) -> Response:
    """End this chat: stop sharing personal information with it and forget the session in the browser."""
    try:
        _check_origin(request, settings)
    except Refused as refused:
        return refused.response()
    value = request.cookies.get(COOKIE_NAME, "")
    ended = await run_in_threadpool(_end, address_for(value)) if SESSION_ID.fullmatch(value) else False
    response = JSONResponse({"status": "ended", "was_verified": ended}, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE_NAME, path="/chat", httponly=True, samesite="lax")
    return response
