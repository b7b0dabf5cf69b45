"""Twilio webhooks: inbound texts and delivery status callbacks, both signed by Twilio."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool
from twilio.request_validator import RequestValidator

from bot.channels.inbound import Accepted, InboundText, do_accept_inbound
from bot.channels.outbox import record_status, worth_keeping
from bot.channels.twilio_sms import INBOUND_PATH, STATUS_CALLBACK_PATH, recipient_state
from bot.channels.workers import Workers
from bot.config import get_settings
from bot.conversations.service import MAX_BODY_CHARS
from bot.db import session_scope
from bot.patients.models import Channel
from bot.patients.service import InvalidPhoneError, normalize_phone

log = logging.getLogger(__name__)

router = APIRouter(tags=["twilio"])

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
FORM_TYPE = "application/x-www-form-urlencoded"
# Twilio attaches at most ten media files to one message.
MAX_MEDIA = 10
# Twilio takes at most 1,600 characters in a message; with every field Twilio sends, percent-encoded
# (an emoji is 12 bytes), its webhook is a few kilobytes. The cap leaves room and stops a flood early.
MAX_FORM_BYTES = 64 * 1024
# A Twilio SID ("SM" and 32 hex digits), leniently: printable ASCII that fits the provider id columns.
_SID = re.compile(r"[!-~]{1,128}")
# Every status Twilio documents for a message. `record_status` applies those that move a text on (sent,
# delivered, failed ...); the rest (scheduled, receiving ...) are acknowledged and change nothing.
TWILIO_STATUSES = frozenset({
    "queued", "sending", "sent", "delivered", "undelivered", "failed", "read", "accepted", "scheduled",
    "canceled", "receiving", "received", "partially_delivered",
})  # fmt: skip
# Twilio's error codes are numbers (30003); anything printable that fits the column is kept.
_ERROR_CODE = re.compile(r"[!-~]{1,32}")


class FormParams(dict[str, list[str]]):
    """Form fields with every value of a repeated key; twilio's validator reads them through getlist."""

    def getlist(self, name: str) -> list[str]:
        """Return every value sent for a field."""
        return self[name]

    def one(self, name: str) -> str | None:
        """Return a field's value, or None when it was not sent; answer 400 when it was sent twice."""
        values = self.get(name)
        if not values:
            return None
        if len(values) > 1:
            # Which value was meant would be a guess (the signature covers all of them: they were sent).
            raise HTTPException(status_code=400, detail=f"form field {name}: sent {len(values)} times")
        return values[0]

    def required(self, name: str) -> str:
        """Return a field's value, or answer 400 naming the missing (or repeated) field."""
        value = self.one(name)
        if value is None:
            raise HTTPException(status_code=400, detail=f"missing form field {name}")
        return value

    def sid(self, name: str) -> str:
        """Return a required field that holds a Twilio SID, or answer 400 naming it."""
        value = self.required(name)
        if not _SID.fullmatch(value):
            detail = f"form field {name}: must be 1 to 128 printable ASCII characters"
            raise HTTPException(status_code=400, detail=detail)
        return value


async def _read_form(request: Request) -> bytes:
    """Return the body, or answer 413 as soon as it is longer than any Twilio webhook."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            detail = f"a Twilio webhook is at most {MAX_FORM_BYTES:,} bytes"
            raise HTTPException(status_code=413, detail=detail)
        chunks.append(chunk)
    return b"".join(chunks)


async def _signed_form(request: Request) -> FormParams:
    """Return the form fields of a request Twilio signed; 404 when SMS is off, 403 when unsigned."""
    settings = get_settings()
    token = settings.twilio_auth_token.get_secret_value()
    if not token:
        # Without a token nothing can be verified: the endpoint is off, never open.
        raise HTTPException(status_code=404)
    # Twilio posts application/x-www-form-urlencoded. Reading it here, every repeated key kept, is a
    # third of the cost of Starlette's streaming form parser, which also takes uploads Twilio never sends.
    if request.headers.get("content-type", "").partition(";")[0].strip().lower() != FORM_TYPE:
        raise HTTPException(status_code=415, detail=f"a Twilio webhook is {FORM_TYPE}")
    body = await _read_form(request)
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise HTTPException(status_code=400, detail="the form is not valid UTF-8") from None
    params = FormParams()
    for name, value in pairs:
        params.setdefault(name, []).append(value)
    # Twilio signs the URL it called: the public one, which a TLS-terminating proxy rewrites on the way in.
    url = settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not _validator(token).validate(url, params, signature):
        log.warning("twilio webhook %s refused: %s signature", request.url.path, "bad" if signature else "no")
        raise HTTPException(status_code=403, detail="invalid Twilio signature")
    return params


@lru_cache(maxsize=4)
def _validator(token: str) -> RequestValidator:
    return RequestValidator(token)


def _inbound_from(params: FormParams) -> InboundText:
    """Read an inbound text from Twilio's fields; answer 400 naming the field that is wrong."""
    sid = params.sid("MessageSid")
    raw_from = params.required("From")
    body = params.required("Body")
    if len(body) > MAX_BODY_CHARS:
        # Twilio's own limit is 1,600 characters; a longer text would be stored cut short.
        raise HTTPException(status_code=413, detail=f"form field Body: at most {MAX_BODY_CHARS:,} characters")
    try:
        address = normalize_phone(raw_from)
    except InvalidPhoneError as error:
        raise HTTPException(status_code=400, detail=f"form field From: {error}") from None
    raw_count = params.one("NumMedia") or "0"
    try:
        count = int(raw_count)
    except ValueError:
        raise HTTPException(status_code=400, detail="form field NumMedia: not a number") from None
    if not 0 <= count <= MAX_MEDIA:
        raise HTTPException(status_code=400, detail=f"form field NumMedia: must be 0 to {MAX_MEDIA}")
    media = tuple(params.required(f"MediaUrl{index}") for index in range(count))
    return InboundText(
        channel=Channel.SMS, address=address, text=body, provider_message_id=sid, media_urls=media
    )


def _store(inbound: InboundText) -> Accepted:
    # Twilio is waiting for the answer, and it comes only after the message is stored.
    with session_scope(urgent=True) as session:
        return do_accept_inbound(session=session, inbound=inbound)


async def twilio_sms(request: Request) -> Response:
    """Store an inbound text once, wake the processor, and answer empty TwiML (replies go out via the API)."""
    workers: Workers = request.app.state.workers
    params = await _signed_form(request)
    inbound = _inbound_from(params)
    accepted = await workers.intake.run(_store, inbound)
    if accepted.stored:
        workers.notify_inbound()
    else:
        log.info("twilio inbound %s is a duplicate; acknowledged", inbound.provider_message_id)
    return Response(content=EMPTY_TWIML, media_type="text/xml")


def _apply_status(*, sid: str, status: str, error_code: str | None) -> bool | None:
    """Record a status callback; return whether it moved the text (or its part) on, None if it is not ours."""
    with session_scope() as session:
        return record_status(session=session, provider_message_id=sid, status=status, error_code=error_code,
                             recipient_state=recipient_state(error_code))  # fmt: skip


async def twilio_status(request: Request) -> Response:
    """Apply a delivery status callback; a status only moves forward, error codes are kept."""
    params = await _signed_form(request)
    sid = params.sid("MessageSid")
    status = params.one("MessageStatus") or params.one("SmsStatus")
    if not status:
        raise HTTPException(status_code=400, detail="missing form field MessageStatus")
    if status not in TWILIO_STATUSES:
        raise HTTPException(status_code=400, detail="form field MessageStatus: not a status Twilio documents")
    error_code = params.one("ErrorCode") or None
    if error_code is not None and not _ERROR_CODE.fullmatch(error_code):
        detail = "form field ErrorCode: must be 1 to 32 printable ASCII characters"
        raise HTTPException(status_code=400, detail=detail)
    applied = await run_in_threadpool(_apply_status, sid=sid, status=status, error_code=error_code)
    if applied is None and worth_keeping(status):
        # Most likely a text of ours whose send the sender has not recorded yet: applied when it does. Else a
        # text of another system on this number, or a split text's part sent before migration 0015 stored its
        # id: let go after outbox.EARLY_STATUS_KEPT.
        log.info("twilio status %s for unknown message %s kept until its text is recorded", status, sid)
    elif applied is None:
        log.info("twilio status for unknown message %s ignored", sid)
    else:
        log.info("twilio status %s for %s (%s)", status, sid, "applied" if applied else "not newer")
    return Response(status_code=204)


# Plain Starlette routes, no FastAPI dependency solving: on the busiest endpoint, solving even an empty
# set (it parses the cookies) cost more than checking the signature. Errors are the same HTTPExceptions.
router.add_route(INBOUND_PATH, twilio_sms, methods=["POST"])
router.add_route(STATUS_CALLBACK_PATH, twilio_status, methods=["POST"])
