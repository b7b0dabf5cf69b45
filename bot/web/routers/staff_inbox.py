"""The staff inbox: the queue, live updates, a conversation and its actions, and canned replies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bot.channels.base import MediaError
from bot.clinic_settings import load_clinic
from bot.conversations.domain import Domain
from bot.db import read_scope, session_scope, utcnow
from bot.staff import auth, canned, inbox
from bot.staff.alerts import open_alert_count
from bot.staff.auth import Principal
from bot.staff.inbox import Refused
from bot.staff.models import AlertKind, StaffAlert
from bot.web.deps import RuntimeDep, WorkersDep
from bot.web.staff_deps import COOKIE_NAME, Admin, Staff, is_live_refresh, page, staff_router, templates

router = staff_router()

# The live stream polls this often, re-checks the session this often, and says it is alive this often.
POLL_SECONDS = 1.0
AUTH_RECHECK_SECONDS = 30.0
KEEPALIVE_SECONDS = 15.0
# A stream ends after this long and the browser reconnects: no connection is held forever.
STREAM_SECONDS = 300.0

STATUS_MESSAGES = {
    "claimed": "You claimed this chat. The patient was told you are replying; the bot stays silent.",
    "already_yours": "You already hold this chat.",
    "sent": "Your reply is queued for delivery. Its delivery state appears in the transcript.",
    "claimed_sent": "You claimed this chat and your reply is queued for delivery.",
    "noted": "Note added. Notes are internal and never sent.",
    "transferred": "Chat transferred. The patient was told who continues.",
    "handed_back": "Chat handed back to the bot. The patient was told.",
    "closed": "Conversation closed.",
}
VIEW_LABELS = {"open": "All open", "mine": "Mine", "unassigned": "Unassigned", "closed": "Closed"}
REASON_LABELS = {"emergency": "Emergency", "complaint": "Complaint", "medical": "Medical", "human": "Asked for a person",
                 "unclear": "Not understood"}  # fmt: skip
CHANNEL_LABELS = {"sms": "SMS", "telegram": "Telegram", "webchat": "Web chat", "terminal": "Terminal"}


def _formatter(tz: ZoneInfo) -> Callable[[datetime | None], str]:
    def when(value: datetime | None) -> str:
        return value.astimezone(tz).strftime("%a %d %b %H:%M") if value is not None else ""

    return when


def _common(session: Session) -> dict[str, Any]:
    clinic = load_clinic(session=session)
    return {"when": _formatter(clinic.calendar.tz), "reasons": REASON_LABELS, "channels": CHANNEL_LABELS}


def _refuse(staff: Principal, action: str, conversation_id: int, refused: Refused) -> None:
    with session_scope() as session:
        inbox.record_refusal(session=session, staff=staff, action=action, conversation_id=conversation_id,
                             refused=refused)  # fmt: skip


# -- the queue ---------------------------------------------------------------------------------


def _queue_context(staff: Principal, view: str, q: str, *, live: bool = False) -> dict[str, Any]:
    view = view if view in inbox.VIEWS else "open"
    with session_scope() as session:
        rows = inbox.queue(session=session, staff=staff, view=view, q=q)
        if q.strip():
            inbox.audit_search(session=session, staff=staff, rows=rows, repeated=live)
        return {"rows": rows, "view": view, "q": q, "views": VIEW_LABELS, **_common(session)}


@router.get("", response_class=HTMLResponse)
def inbox_page(
    request: Request, staff: Staff, view: str = "open", q: Annotated[str, Query(max_length=100)] = ""
) -> Response:
    """Show the queue of chats waiting for staff."""
    return page(request, "staff/inbox.html", {**_queue_context(staff, view, q), "nav": "inbox"})


@router.get("/queue", response_class=HTMLResponse)
def queue_rows(
    request: Request, staff: Staff, view: str = "open", q: Annotated[str, Query(max_length=100)] = ""
) -> Response:
    """Return the queue's rows as an HTML fragment, for live refreshes."""
    return page(request, "staff/_queue_rows.html", _queue_context(staff, view, q, live=is_live_refresh(request)))


# -- live updates ------------------------------------------------------------------------------


def _snapshot(conversation_id: int | None) -> dict[str, Any]:
    # Every open inbox polls this each second: a read beside SQLite's writer, never in its queue.
    with read_scope() as session:
        alerts = open_alert_count(session=session)
        emergencies = (
            session.scalar(
                select(func.count())
                .select_from(StaffAlert)
                .where(StaffAlert.acknowledged_at.is_(None), StaffAlert.kind == AlertKind.EMERGENCY)
            )
            or 0
        )
        version = inbox.live_version(session=session, conversation_id=conversation_id)
    text = f"{emergencies} emergency alert{'s' if emergencies != 1 else ''} waiting" if emergencies else ""
    return {"version": version, "alerts": alerts, "alert_text": text}


def _signed_in(token: str) -> bool:
    with session_scope() as session:
        return auth.authenticate(session=session, token=token, touch=False) is not None


def _check_scope(staff: Principal, conversation_id: int) -> None:
    with session_scope() as session:
        inbox.load_conversation(session=session, conversation_id=conversation_id, staff=staff)


@router.get("/events")
async def events(
    request: Request,
    staff: Staff,
    conversation: int | None = None,
    max_seconds: Annotated[float, Query(gt=0)] = STREAM_SECONDS,
) -> Response:
    """Stream `changed` events whenever the queue (or one conversation) or the alerts change."""
    if conversation is not None:
        try:
            await run_in_threadpool(_check_scope, staff, conversation)
        except Refused as refused:
            raise HTTPException(status_code=refused.status, detail=refused.message) from None
    token = request.cookies.get(COOKIE_NAME, "")
    limit = min(max_seconds, STREAM_SECONDS)

    async def stream() -> AsyncIterator[str]:
        yield "retry: 3000\n\n"
        started = last_auth = last_sent = time.monotonic()
        last: tuple[str, int] | None = None
        while True:
            now = time.monotonic()
            if now - started >= limit or await request.is_disconnected():
                return
            if now - last_auth >= AUTH_RECHECK_SECONDS:
                last_auth = now
                if not await run_in_threadpool(_signed_in, token):
                    yield "event: signed-out\ndata: {}\n\n"
                    return
            snapshot = await run_in_threadpool(_snapshot, conversation)
            if (snapshot["version"], snapshot["alerts"]) != last:
                last, last_sent = (snapshot["version"], snapshot["alerts"]), now
                yield f"event: changed\ndata: {json.dumps(snapshot)}\n\n"
            elif now - last_sent >= KEEPALIVE_SECONDS:
                last_sent = now
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# -- a conversation ----------------------------------------------------------------------------


def _conversation_page(
    request: Request,
    staff: Principal,
    conversation_id: int,
    *,
    status: str = "",
    error: str = "",
    reply: str = "",
    canned_id: int | None = None,
    status_code: int = 200,
) -> Response:
    try:
        with session_scope() as session:
            view = inbox.conversation_view(session=session, conversation_id=conversation_id, staff=staff)
            canned_error = ""
            if canned_id is not None and not reply:
                try:
                    reply = canned.render_canned(session=session, canned_id=canned_id, conversation=view.conversation,
                                                 staff_name=staff.name)  # fmt: skip
                except LookupError as missing:
                    canned_error = str(missing)
            context = {
                "v": view,
                "c": view.conversation,
                "status_message": STATUS_MESSAGES.get(status, ""),
                "error": error or canned_error,
                "reply": reply,
                # Fresh on every render: the reply this form sends is queued once, however often it is posted.
                "submission_id": inbox.new_submission_id(),
                "canned_replies": canned.list_canned(session=session, active_only=True),
                "outcomes": inbox.OUTCOMES,
                "followups": inbox.FOLLOWUPS,
                "max_reply": inbox.MAX_REPLY_CHARS,
                "earliest_followup": (
                    load_clinic(session=session).calendar.local_date(utcnow()) + timedelta(days=1)
                ).isoformat(),
                "nav": "inbox",
                **_common(session),
            }
    except Refused as refused:
        _refuse(staff, "patient.viewed", conversation_id, refused)
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    return page(request, "staff/conversation.html", context, status_code=status_code)


@router.get("/conversations/{conversation_id}", response_class=HTMLResponse)
def conversation_page(
    request: Request, staff: Staff, conversation_id: int, status: str = "", canned: int | None = None
) -> Response:
    """Show a conversation: transcript, patient panel and actions (audited as a view of the patient)."""
    return _conversation_page(request, staff, conversation_id, status=status, canned_id=canned)


@router.get("/conversations/{conversation_id}/transcript", response_class=HTMLResponse)
def transcript_fragment(request: Request, staff: Staff, conversation_id: int) -> Response:
    """Return the transcript as an HTML fragment, for live refreshes of an open page."""
    try:
        with session_scope() as session:
            conversation = inbox.load_conversation(
                session=session, conversation_id=conversation_id, staff=staff
            )
            items = inbox.transcript(session=session, conversation=conversation)
            inbox.audit_view(session=session, staff=staff, conversation=conversation, purpose="transcript")
            context = {"items": items, "c": conversation, **_common(session)}
    except Refused as refused:
        _refuse(staff, "patient.viewed", conversation_id, refused)
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    return page(request, "staff/_transcript.html", context)


# A patient's file is shown by the browser only when it is a harmless kind; anything else downloads.
INLINE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "image/heic", "application/pdf",
                          "audio/ogg", "audio/mpeg", "audio/amr", "video/mp4", "video/3gpp", "text/plain"})  # fmt: skip


@router.get("/messages/{message_id}/media/{index}")
def message_attachment(staff: Staff, workers: WorkersDep, message_id: int, index: int) -> Response:
    """Show a file a patient attached, fetched from the provider through this server (audited, never cached)."""
    try:
        with session_scope() as session:
            reference, channel_name, conversation = inbox.attachment_for(
                session=session, message_id=message_id, index=index, staff=staff
            )
            patient_id = conversation.patient_id
    except Refused as refused:
        with session_scope() as session:
            inbox.record_attachment_view(session=session, staff=staff, message_id=message_id,
                                         patient_id=refused.patient_id, outcome=refused.outcome)  # fmt: skip
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    fetch = getattr(workers.channels.get(channel_name), "fetch_media", None)
    error, status = None, 502
    if fetch is None:
        label = CHANNEL_LABELS.get(channel_name, channel_name)
        error, status = f"The {label} channel is off on this server: its attachments cannot be fetched.", 503
    else:
        try:
            media = fetch(reference)
        except MediaError as failure:
            error = f"The attachment could not be fetched: {failure}."
    with session_scope() as session:
        inbox.record_attachment_view(session=session, staff=staff, message_id=message_id, patient_id=patient_id,
                                     outcome="ok" if error is None else "failed")  # fmt: skip
    if error is not None:
        raise HTTPException(status_code=status, detail=error)
    content_type = media.content_type.split(";")[0].strip().lower()
    inline = content_type in INLINE_TYPES
    headers = {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        # Shown alone, never as a page that can run anything.
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'",
        "Content-Disposition": f"{'inline' if inline else 'attachment'}; filename=\"message-{message_id}-{index + 1}\"",
    }
    return Response(media.content, media_type=content_type if inline else "application/octet-stream", headers=headers)


def _act(
    staff: Principal, conversation_id: int, action: str, flow: Callable[[Session], inbox.ActionResult]
) -> inbox.ActionResult:
    try:
        with session_scope() as session:
            return flow(session)
    except Refused as refused:
        _refuse(staff, action, conversation_id, refused)
        raise


def _done(conversation_id: int, result: inbox.ActionResult, workers: Any) -> Response:
    if result.queued:
        workers.notify_outbox()
    return RedirectResponse(f"/staff/conversations/{conversation_id}?status={result.status}", status_code=303)


def _run(
    staff: Principal,
    conversation_id: int,
    action: str,
    workers: Any,
    flow: Callable[[Session], inbox.ActionResult],
) -> Response:
    try:
        result = _act(staff, conversation_id, action, flow)
    except Refused as refused:
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    return _done(conversation_id, result, workers)


@router.post("/conversations/{conversation_id}/claim")
def claim(staff: Staff, conversation_id: int, runtime: RuntimeDep, workers: WorkersDep) -> Response:
    """Claim the chat: the bot goes silent and the patient is told who is replying."""
    domain: Domain = runtime.domain
    return _run(staff, conversation_id, "conversation.claimed", workers,
                lambda s: inbox.do_claim(session=s, conversation_id=conversation_id, staff=staff, domain=domain))  # fmt: skip


@router.post("/conversations/{conversation_id}/reply")
def reply(
    request: Request,
    staff: Staff,
    conversation_id: int,
    runtime: RuntimeDep,
    workers: WorkersDep,
    body: Annotated[str, Form(max_length=20_000)] = "",
    submission: Annotated[str, Form(max_length=128)] = "",
    followup: Annotated[str, Form(max_length=16)] = "none",
    followup_date: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    """Send a reply on the patient's channel, optionally promising a follow-up; a repeated form sends nothing."""
    domain: Domain = runtime.domain
    try:
        result = _act(staff, conversation_id, "conversation.replied", lambda s: inbox.do_send(
            session=s, conversation_id=conversation_id, staff=staff, domain=domain, body=body,
            submission_id=submission, followup=followup, followup_date=followup_date))  # fmt: skip
    except Refused as refused:
        if refused.status == 400:
            # Keep what was typed: show the page again with the reason.
            return _conversation_page(request, staff, conversation_id, error=refused.message, reply=body,
                                      status_code=400)  # fmt: skip
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    return _done(conversation_id, result, workers)


@router.post("/conversations/{conversation_id}/note")
def add_note(
    request: Request,
    staff: Staff,
    conversation_id: int,
    workers: WorkersDep,
    note: Annotated[str, Form(max_length=20_000)] = "",
) -> Response:
    """Add an internal note; it is never sent."""
    try:
        result = _act(staff, conversation_id, "note.added",
                      lambda s: inbox.do_add_note(session=s, conversation_id=conversation_id, staff=staff, body=note))  # fmt: skip
    except Refused as refused:
        if refused.status == 400:
            return _conversation_page(request, staff, conversation_id, error=refused.message, status_code=400)
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    return _done(conversation_id, result, workers)


@router.post("/conversations/{conversation_id}/transfer")
def transfer(
    staff: Staff,
    conversation_id: int,
    runtime: RuntimeDep,
    workers: WorkersDep,
    to_staff_id: Annotated[int, Form()],
) -> Response:
    """Pass the chat to a colleague; the patient is told who continues."""
    domain: Domain = runtime.domain
    return _run(staff, conversation_id, "conversation.transferred", workers, lambda s: inbox.do_transfer(
        session=s, conversation_id=conversation_id, staff=staff, domain=domain, to_staff_id=to_staff_id))  # fmt: skip


@router.post("/conversations/{conversation_id}/handback")
def hand_back(staff: Staff, conversation_id: int, runtime: RuntimeDep, workers: WorkersDep) -> Response:
    """Give the chat back to the bot."""
    domain: Domain = runtime.domain
    return _run(staff, conversation_id, "conversation.handed_back", workers,
                lambda s: inbox.do_hand_back(session=s, conversation_id=conversation_id, staff=staff, domain=domain))  # fmt: skip


@router.post("/conversations/{conversation_id}/close")
def close(
    staff: Staff, conversation_id: int, workers: WorkersDep, outcome: Annotated[str, Form(max_length=32)] = ""
) -> Response:
    """Close the conversation with an outcome; nothing is sent."""
    return _run(staff, conversation_id, "conversation.closed", workers,
                lambda s: inbox.do_close(session=s, conversation_id=conversation_id, staff=staff, outcome=outcome))  # fmt: skip


# -- canned replies ----------------------------------------------------------------------------


@router.get("/canned/{canned_id}/render")
def render_canned(staff: Staff, canned_id: int, conversation: int) -> Response:
    """Return a canned reply filled in for a conversation, as JSON {"text": ...}."""
    try:
        with session_scope() as session:
            target = inbox.load_conversation(session=session, conversation_id=conversation, staff=staff)
            text = canned.render_canned(
                session=session, canned_id=canned_id, conversation=target, staff_name=staff.name
            )
            inbox.audit_view(session=session, staff=staff, conversation=target, purpose="canned_reply")
    except Refused as refused:
        raise HTTPException(status_code=refused.status, detail=refused.message) from None
    except LookupError as missing:
        raise HTTPException(status_code=404, detail=str(missing)) from None
    return JSONResponse({"text": text})


def _canned_page(request: Request, *, error: str = "", status: str = "", form: dict[str, str] | None = None,
                 status_code: int = 200) -> Response:  # fmt: skip
    with session_scope() as session:
        replies = canned.list_canned(session=session)
    context = {"replies": replies, "error": error, "status_message": status, "form": form or {}, "nav": "canned",
               "placeholders": canned.PLACEHOLDERS}  # fmt: skip
    return page(request, "staff/canned.html", context, status_code=status_code)


CANNED_STATUS = {"created": "Canned reply added.", "updated": "Canned reply saved.",
                 "deactivated": "Canned reply withdrawn from use.", "activated": "Canned reply back in use."}  # fmt: skip


@router.get("/admin/canned", response_class=HTMLResponse)
def canned_admin(request: Request, staff: Admin, status: str = "") -> Response:
    """List canned replies with forms to add, edit and withdraw them."""
    return _canned_page(request, status=CANNED_STATUS.get(status, ""))


TitleField = Annotated[str, Form(max_length=500)]
BodyField = Annotated[str, Form(max_length=20_000)]


@router.post("/admin/canned")
def canned_create(request: Request, staff: Admin, title: TitleField = "", body_en: BodyField = "",
                  body_es: BodyField = "") -> Response:  # fmt: skip
    """Add a canned reply."""
    try:
        with session_scope() as session:
            canned.do_create_canned(session=session, staff_id=staff.staff_id, title=title, body_en=body_en,
                                    body_es=body_es)  # fmt: skip
    except canned.CannedError as error:
        form = {"title": title, "body_en": body_en, "body_es": body_es}
        return _canned_page(request, error=str(error), form=form, status_code=400)
    return RedirectResponse("/staff/admin/canned?status=created", status_code=303)


@router.post("/admin/canned/{canned_id}")
def canned_update(request: Request, staff: Admin, canned_id: int, title: TitleField = "", body_en: BodyField = "",
                  body_es: BodyField = "") -> Response:  # fmt: skip
    """Change a canned reply's wording."""
    try:
        with session_scope() as session:
            canned.do_update_canned(session=session, staff_id=staff.staff_id, canned_id=canned_id, title=title,
                                    body_en=body_en, body_es=body_es)  # fmt: skip
    except canned.CannedError as error:
        return _canned_page(request, error=str(error), status_code=400)
    except LookupError as missing:
        raise HTTPException(status_code=404, detail=str(missing)) from None
    return RedirectResponse("/staff/admin/canned?status=updated", status_code=303)


@router.post("/admin/canned/{canned_id}/active")
def canned_set_active(
    staff: Admin, canned_id: int, active: Annotated[str, Form(max_length=8)] = "false"
) -> Response:
    """Withdraw a canned reply from use, or bring it back."""
    on = active == "true"
    try:
        with session_scope() as session:
            canned.do_set_canned_active(
                session=session, staff_id=staff.staff_id, canned_id=canned_id, active=on
            )
    except LookupError as missing:
        raise HTTPException(status_code=404, detail=str(missing)) from None
    return RedirectResponse(
        f"/staff/admin/canned?status={'activated' if on else 'deactivated'}", status_code=303
    )


__all__ = ["router", "templates"]
