"""Refill and appointment requests the bot collected: staff answer each one, and the patient is told.

The bot records a request with the time the patient will hear back (a promise). Answering it, done or
not possible, sends the patient a text staff wrote from a draft, keeps that promise, and closes the
request, in one transaction; the chat stays with the bot. Closing the chat still settles what is open.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.channels.models import OutboxMessage
from bot.conversations.models import Conversation, Message, PatientRequest, RequestKind, RequestStatus, Route
from bot.db import utcnow
from bot.patients.models import ChannelIdentity, Patient
from bot.promises.flows import do_close_promises
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.staff import audit
from bot.staff.auth import Principal
from bot.staff.complaints import render_patient_text
from bot.staff.inbox import MAX_REPLY_CHARS, Refused, can_see, load_conversation
from bot.staff.models import StaffUser
from bot.staff.outgoing import GUARDED_CHANNELS, ClinicalContentError, do_tell_patient

if TYPE_CHECKING:
    from bot.conversations.domain import Domain

log = logging.getLogger(__name__)

OUTCOMES = ("done", "declined")
# Where an appointment's draft leaves the day and time for staff to write; a text still holding it is refused.
BLANKS = ("(day and time)", "(día y hora)")
ANSWERED = (RequestStatus.DONE, RequestStatus.DECLINED, RequestStatus.CANCELLED)
ANSWERED_VIEW_LIMIT = 100


class RequestError(ValueError):
    """An answer was refused; the message says why and `status` is the HTTP answer."""

    def __init__(self, message: str, *, status: int = 400, outcome: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


@dataclass(frozen=True)
class RequestRow:
    """One request as the staff list shows it."""

    id: int
    kind: str
    action: str | None
    details: dict[str, Any]
    status: str
    created_at: datetime
    due_at: datetime
    completed_at: datetime | None
    overdue: bool
    conversation_id: int
    channel: str
    patient_label: str


# Words of a patient's own description of a medicine that say nothing about it.
_PLAIN_WORDS = frozenset({
    "medicine", "medication", "medications", "meds", "pills", "tablets", "tablet", "capsules", "refill", "prescription",
    "please", "the", "one", "ones", "for", "from", "with", "that", "this", "mine", "daily", "usual", "regular",
    "inhaler", "cream", "drops", "your", "need", "some", "more", "again", "same", "when", "have",
})  # fmt: skip


def named_medicine(medication: str, text: str) -> list[str]:
    """Return the words of a request's medication (as the patient wrote it) that a text repeats.

    "lisinopril 10 mg" is named by "your Lisinopril refill"; "my blood pressure pills" by "blood pressure".
    Numbers, units and words such as "pills" or "refill" do not count.
    """
    words = {word for word in re.findall(r"[^\W\d_]{4,}", medication.casefold()) if word not in _PLAIN_WORDS}
    folded = text.casefold()
    return sorted(word for word in words if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", folded))


def answer_key(request_id: int) -> str:
    """Return the outbox key of a request's answer: one text per request, however often the form is sent."""
    return f"request-answer:{request_id}"


def draft_key(request: PatientRequest, outcome: str) -> str:
    """Return the response that drafts a request's answer."""
    if request.kind == RequestKind.REFILL:
        return f"utter_request_refill_{outcome}"
    if outcome == "done" and request.action == "cancel":
        return "utter_request_cancel_done"
    return f"utter_request_appointment_{outcome}"


def _visible(session: Session, staff: Principal, conversation_ids: set[int]) -> dict[int, Conversation]:
    conversations = session.scalars(select(Conversation).where(Conversation.id.in_(conversation_ids))) if conversation_ids else []
    return {c.id: c for c in conversations if can_see(role=staff.role, reason=c.reason)}


def list_requests(*, session: Session, staff: Principal, answered: bool = False, now: datetime | None = None) -> list[RequestRow]:
    """Return the open requests, the soonest due first, or the latest answered ones; only chats staff may see."""
    now = now or utcnow()
    query = select(PatientRequest)
    if answered:
        query = query.where(PatientRequest.status.in_(ANSWERED)).order_by(
            PatientRequest.completed_at.desc(), PatientRequest.id.desc()
        ).limit(ANSWERED_VIEW_LIMIT)
    else:
        query = query.where(PatientRequest.status == RequestStatus.OPEN).order_by(PatientRequest.due_at, PatientRequest.id)
    requests = list(session.scalars(query))
    conversations = _visible(session, staff, {request.conversation_id for request in requests})
    identities = {request.identity_id for request in requests}
    # Only a verified identity shows a patient's name (as in the queue).
    verified = {identity_id: patient.display_name for identity_id, patient in session.execute(
        select(ChannelIdentity.id, Patient)
        .join(Patient, Patient.id == ChannelIdentity.patient_id)
        .where(ChannelIdentity.id.in_(identities), ChannelIdentity.verified_at.is_not(None))
    ).tuples()} if identities else {}  # fmt: skip
    return [
        RequestRow(
            id=request.id, kind=request.kind, action=request.action, details=dict(request.details or {}),
            status=request.status, created_at=request.created_at, due_at=request.due_at,
            completed_at=request.completed_at, overdue=request.status == RequestStatus.OPEN and request.due_at < now,
            conversation_id=request.conversation_id, channel=conversations[request.conversation_id].channel,
            patient_label=verified.get(request.identity_id, "Unverified sender"),
        )  # fmt: skip
        for request in requests
        if request.conversation_id in conversations
    ]


def get_request(*, session: Session, request_id: int, staff: Principal, lock: bool = False) -> tuple[PatientRequest, Conversation]:
    """Return a request and its conversation, which this staff member may see; raise RequestError (404, 403)."""
    query = select(PatientRequest).where(PatientRequest.id == request_id)
    request = session.scalars(query).first()
    if request is None:
        raise RequestError(f"There is no request {request_id}.", status=404, outcome="not_found")
    try:
        # The chat's lock first, as closing it takes it before settling its requests: never the other order.
        conversation = load_conversation(session=session, conversation_id=request.conversation_id, staff=staff, lock=lock)
    except Refused as refused:
        raise RequestError(refused.message, status=refused.status, outcome=refused.outcome) from None
    if lock:
        # Read again under the lock: a close or another answer that committed meanwhile is seen.
        request = session.scalars(query.with_for_update().execution_options(populate_existing=True)).one()
    return request, conversation


def answer_draft(*, session: Session, domain: Domain, request: PatientRequest, conversation: Conversation,
                 staff: Principal, outcome: str) -> str:  # fmt: skip
    """Return the answer's draft in the patient's language, for staff to edit."""
    pharmacy = (request.details or {}).get("pharmacy") or render_patient_text(
        session=session, domain=domain, key="utter_request_any_pharmacy", conversation=conversation, values={}
    )
    values = {"staff_name": staff.name, "pharmacy": pharmacy}
    return render_patient_text(session=session, domain=domain, key=draft_key(request, outcome),
                               conversation=conversation, values=values)  # fmt: skip


def answered_by(*, session: Session, request_id: int) -> tuple[str, str] | None:
    """Return who answered a request and what the patient was sent, or None (closed with its chat)."""
    row = session.execute(
        select(Message.author_id, Message.body)
        .join(OutboxMessage, OutboxMessage.message_id == Message.id)
        .where(OutboxMessage.key == answer_key(request_id))
    ).first()
    if row is None:
        return None
    name = session.scalar(select(StaffUser.name).where(StaffUser.id == row.author_id)) if row.author_id else None
    return name or "staff", row.body or ""


def do_answer_request(*, session: Session, request_id: int, staff: Principal, outcome: str, message: str) -> PatientRequest:
    """Answer a request: send the patient `message`, keep the promised answer time, close the request.

    Refused (RequestError) when the outcome is unknown, the text is empty, too long, still holds an
    appointment's blank, or names the patient's tests by SMS or Telegram, or when the request was
    answered (or closed with its chat) already: a second submission of the form sends nothing.
    """
    if outcome not in OUTCOMES:
        raise RequestError("Choose whether the request was done or could not be done.")
    body = message.strip()
    if not body:
        raise RequestError("Write the message the patient will receive.")
    if len(body) > MAX_REPLY_CHARS:
        raise RequestError(f"Messages are limited to {MAX_REPLY_CHARS} characters; this one has {len(body)}.")
    blank = next((blank for blank in BLANKS if blank in body.casefold()), None)
    if blank is not None:
        raise RequestError(f"Replace {blank} with the appointment's day and time before sending.")
    request, conversation = get_request(session=session, request_id=request_id, staff=staff, lock=True)
    if request.status != RequestStatus.OPEN:
        raise RequestError("This request was answered already; nothing was sent.", status=409, outcome="conflict")
    named = named_medicine(str((request.details or {}).get("medication") or ""), body)
    if conversation.channel in GUARDED_CHANNELS and named:
        # The bot never repeats it either: on a lock screen or a shared phone a medicine can tell a diagnosis.
        channel = "SMS" if conversation.channel == "sms" else "Telegram"
        raise RequestError(f"Texts by {channel} must not name the medicine ({', '.join(named)}): say the refill was "
                           "sent to the pharmacy.", outcome="names_medicine")  # fmt: skip
    try:
        sent = do_tell_patient(session=session, conversation=conversation, staff_id=staff.staff_id, body=body,
                               key=answer_key(request.id), route=Route.ANSWER)  # fmt: skip
    except ClinicalContentError as named:
        raise RequestError(str(named), outcome="names_tests") from None
    if sent is None:
        raise RequestError("This request was answered already; nothing was sent.", status=409, outcome="conflict")
    now = utcnow()
    request.status = RequestStatus.DONE if outcome == "done" else RequestStatus.DECLINED
    request.completed_at = now
    # The patient was told they would hear back by a time: they have, either way.
    kept = do_close_promises(
        session=session,
        promises=session.scalars(select(Promise).where(
            Promise.kind == PromiseKind.REQUEST_ANSWER, Promise.subject_type == "request",
            Promise.subject_id == request.id, Promise.status == PromiseStatus.OPEN,
        )),  # fmt: skip
        status=PromiseStatus.KEPT,
        at=now,
    )
    audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="request.answered",
                 subject_type="request", subject_id=request.id, patient_id=audit.patient_of(session, conversation),
                 details={"outcome": outcome, "message_id": sent.id, "promises_kept": kept,
                          "conversation_id": conversation.id})  # fmt: skip
    log.info("staff %s answered request %s (%s; message %s)", staff.staff_id, request.id, outcome, sent.id)
    return request
