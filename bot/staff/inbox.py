"""The staff inbox: the queue, a conversation's transcript and patient panel, and what staff do to a chat."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from bot.channels import outbox
from bot.channels.models import OutboxMessage
from bot.clinic_settings import ClinicContext, load_clinic
from bot.config import get_settings
from bot.conversations.domain import Domain
from bot.conversations.models import (
    Author,
    Conversation,
    ConversationState,
    Direction,
    Handoff,
    HandoffReason,
    Message,
    PatientRequest,
    Priority,
    RequestStatus,
)
from bot.conversations.service import add_open_handoff
from bot.db import utcnow
from bot.labs.models import OPEN_LAB_STATUSES, LabOrder
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import PHONE_CHANNELS, TELEGRAM_CONTACT, patients_on_phones, verified_patient
from bot.promises.flows import do_close_promises
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.staff import audit
from bot.staff.auth import Principal
from bot.staff.models import AuditEvent, ComplaintCase, Role, StaffNote, StaffUser
from bot.staff.outgoing import STAFF_PRIORITY, ClinicalContentError, check_no_test_names, do_tell_patient
from bot.when import render_due

log = logging.getLogger(__name__)

OPEN_STATES = (ConversationState.WAITING, ConversationState.STAFF)
VIEWS = ("open", "mine", "unassigned", "closed")
OUTCOMES = {
    "resolved": "Resolved",
    "no_reply_needed": "No reply needed",
    "referred": "Referred",
    "duplicate": "Duplicate",
}
FOLLOWUPS = {
    "none": "No promise",
    "today": "Later today",
    "next_day": "By end of next working day",
    "date": "By a date",
}
MAX_REPLY_CHARS = 1600
MAX_NOTE_CHARS = 4000
CLOSED_VIEW_LIMIT = 100
# Staff replies go out ahead of routine updates, behind emergency instructions.
MASK = "••••"
# A reply form's one-time submission id (`new_submission_id`): URL-safe base64, as a browser posts it back.
SUBMISSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


class Refused(Exception):
    """A staff action was refused; `status` is the HTTP status and the message says why."""

    def __init__(self, status: int, message: str, *, outcome: str, patient_id: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.outcome = outcome
        self.patient_id = patient_id


# -- access ------------------------------------------------------------------------------------


def can_see(*, role: Role | str, reason: str | None) -> bool:
    """Return whether a role may see and act on a conversation with this hand-off reason."""
    return reason != HandoffReason.MEDICAL or role in (Role.ADMIN, Role.CLINICIAN)


def roles_for(reason: str | None) -> tuple[Role, ...]:
    """Return the roles that may work a conversation with this reason."""
    return tuple(role for role in Role if can_see(role=role, reason=reason))


def load_conversation(
    *, session: Session, conversation_id: int, staff: Principal, lock: bool = False
) -> Conversation:
    """Return a conversation this staff member may see, or raise Refused (404 or 403)."""
    query = select(Conversation).where(Conversation.id == conversation_id)
    if lock:
        # Serialises staff actions with each other and with the engine processing this chat.
        query = query.with_for_update()
    conversation = session.scalars(query).first()
    if conversation is None:
        raise Refused(404, f"There is no conversation {conversation_id}.", outcome="not_found")
    if not can_see(role=staff.role, reason=conversation.reason):
        raise Refused(
            403,
            "This is a medical conversation: only clinicians and admins can open it.",
            outcome="denied",
            patient_id=audit.patient_of(session, conversation),
        )
    return conversation


# -- presentation helpers ----------------------------------------------------------------------


def mask_address(*, channel: str, address: str) -> str:
    """Return an address staff can recognise without reading it in full."""
    if channel == Channel.WEBCHAT:
        return "web chat visitor"
    tail = re.sub(r"\D", "", address)[-4:] or address[-4:]
    return f"{MASK} {tail}"


def mask_birth_date(value: date | None) -> str:
    """Return a date of birth with day and month hidden."""
    return f"••/••/{value.year}" if value is not None else "not on file"


def human_duration(delta: timedelta) -> str:
    """Return a short duration such as '4 min', '2 h 5 min' or '3 d 1 h'."""
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _patient_of(identity: ChannelIdentity, patients: dict[int, Patient]) -> Patient | None:
    return patients.get(identity.patient_id) if identity.is_verified and identity.patient_id else None


# -- the queue ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    """One conversation in the queue, as a row staff scan."""

    conversation_id: int
    state: str
    reason: str
    priority: int
    channel: str
    patient_label: str
    verified: bool
    address: str
    waiting_since: datetime
    waiting: str
    due_at: datetime | None
    due_text: str
    overdue: bool
    responded: bool
    assigned_name: str | None
    closed_at: datetime | None
    outcome: str | None
    patient_id: int | None = None  # shown only when the identity is verified, as the label is


def _search_filter(q: str):  # type: ignore[no-untyped-def]
    text = q.strip().lower()
    digits = re.sub(r"\D", "", q)
    clauses = []
    if text and not digits:
        like = f"%{text}%"
        clauses += [func.lower(Patient.name).like(like), func.lower(Patient.preferred_name).like(like)]
    if len(digits) >= 3:
        # Numbers are stored in E.164: match the end, whatever prefix or punctuation was typed.
        clauses += [
            (ChannelIdentity.channel.in_((Channel.SMS, Channel.TERMINAL)))
            & ChannelIdentity.address.like(f"%{digits}"),
            Patient.phone.like(f"%{digits}"),
        ]
    return or_(*clauses) if clauses else None


def queue(
    *, session: Session, staff: Principal, view: str = "open", q: str = "", now: datetime | None = None
) -> list[QueueRow]:
    """Return the conversations of a view, most urgent first, then longest waiting."""
    now = now or utcnow()
    view = view if view in VIEWS else "open"
    query = (
        select(Conversation, ChannelIdentity, Patient)
        .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
        # Only a verified identity shows or finds a patient's name.
        .outerjoin(
            Patient, (Patient.id == ChannelIdentity.patient_id) & ChannelIdentity.verified_at.is_not(None)
        )
    )
    if view == "closed":
        query = query.where(Conversation.state == ConversationState.CLOSED)
        query = query.order_by(Conversation.closed_at.desc(), Conversation.id.desc()).limit(CLOSED_VIEW_LIMIT)
    else:
        query = query.where(Conversation.state.in_(OPEN_STATES))
        if view == "mine":
            query = query.where(Conversation.assigned_staff_id == staff.staff_id)
        elif view == "unassigned":
            query = query.where(Conversation.assigned_staff_id.is_(None))
    if not can_see(role=staff.role, reason=HandoffReason.MEDICAL):
        query = query.where(or_(Conversation.reason.is_(None), Conversation.reason != HandoffReason.MEDICAL))
    if q.strip():
        condition = _search_filter(q)
        if condition is None:
            return []
        query = query.where(condition)
    found = session.execute(query).tuples().all()
    ids = [conversation.id for conversation, _, _ in found]
    handoffs: dict[int, Handoff] = {}
    if ids:
        # The latest hand-off of each conversation: the open one, or the one closing resolved.
        for handoff in session.scalars(
            select(Handoff).where(Handoff.conversation_id.in_(ids)).order_by(Handoff.id)
        ):
            handoffs[handoff.conversation_id] = handoff
    staff_ids = {c.assigned_staff_id for c, _, _ in found if c.assigned_staff_id}
    names = (
        dict(
            session.execute(select(StaffUser.id, StaffUser.name).where(StaffUser.id.in_(staff_ids)))
            .tuples()
            .all()
        )
        if staff_ids
        else {}
    )
    rows = []
    for conversation, identity, patient in found:
        handoff = handoffs.get(conversation.id)
        since = handoff.created_at if handoff is not None else conversation.created_at
        responded = handoff is not None and handoff.first_response_at is not None
        open_handoff = handoff is not None and handoff.resolved_at is None
        due_at = handoff.due_at if open_handoff else None
        overdue = due_at is not None and not responded and now > due_at
        if due_at is None:
            due_text = ""
        elif responded:
            due_text = "answered"
        elif overdue:
            due_text = f"overdue by {human_duration(now - due_at)}"
        else:
            due_text = f"due in {human_duration(due_at - now)}"
        verified = patient is not None
        rows.append(
            QueueRow(
                conversation_id=conversation.id,
                state=conversation.state,
                reason=(handoff.reason if open_handoff else conversation.reason) or "human",
                priority=handoff.priority if open_handoff else conversation.priority,
                channel=conversation.channel,
                patient_label=patient.display_name if patient is not None else "Unknown sender",
                verified=verified,
                address=mask_address(channel=identity.channel, address=identity.address),
                waiting_since=since,
                waiting=human_duration((conversation.closed_at or now) - since),
                due_at=due_at,
                due_text=due_text,
                overdue=overdue,
                responded=responded,
                assigned_name=names.get(conversation.assigned_staff_id)
                if conversation.assigned_staff_id
                else None,
                closed_at=conversation.closed_at,
                outcome=conversation.outcome,
                patient_id=patient.id if patient is not None else None,
            )
        )
    if view != "closed":
        rows.sort(key=lambda row: (-row.priority, row.waiting_since, row.conversation_id))
    return rows


def live_version(*, session: Session, conversation_id: int | None = None, now: datetime | None = None) -> str:
    """Return a cheap fingerprint that changes whenever the queue (or one conversation) changes."""
    now = now or utcnow()
    parts = [
        session.scalar(select(func.max(Message.id))),
        session.scalar(select(func.max(Conversation.updated_at))),
        session.scalar(select(func.max(Handoff.id))),
        session.scalar(select(func.count()).select_from(Handoff).where(Handoff.resolved_at.is_(None))),
        session.scalar(
            select(func.count()).select_from(Handoff).where(Handoff.first_response_at.is_not(None))
        ),
        session.scalar(select(func.max(StaffNote.id))),
        # Waiting times and SLA states move with the clock: refresh them once a minute.
        int(now.timestamp() // 60),
    ]
    if conversation_id is not None:
        parts.append(
            session.scalar(
                select(func.max(OutboxMessage.updated_at)).where(
                    OutboxMessage.conversation_id == conversation_id
                )
            )
        )
        parts.append(
            session.scalar(
                select(func.max(ComplaintCase.id)).where(ComplaintCase.conversation_id == conversation_id)
            )
        )
    return "|".join("" if part is None else str(part) for part in parts)


# -- a conversation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptItem:
    """One line of the transcript: a message or an internal note."""

    kind: str  # message | note
    at: datetime
    conversation_id: int
    channel: str
    author: str
    author_kind: str
    direction: str
    body: str
    message_id: int | None = None
    intent: str | None = None
    route: str | None = None
    response_key: str | None = None
    delivery: str | None = None
    error_code: str | None = None
    correctable: bool = False
    attachments: tuple[str, ...] = ()  # labels of the files the patient attached, in order


def attachment_label(reference: str) -> str:
    """Return what staff see for an attachment: its kind, never the provider's link or file id."""
    kind = reference.split(":")[1] if reference.startswith("telegram:") and reference.count(":") >= 2 else ""
    return {"photo": "photo", "document": "document", "video": "video", "voice": "voice message", "audio": "audio",
            "video_note": "video message", "animation": "animation"}.get(kind, "attachment")  # fmt: skip


@dataclass
class PatientPanel:
    """What staff see about the patient beside the transcript."""

    name: str
    full_name: str | None
    language: str
    birth_date: str
    verified: bool
    # Why an unverified sender is not, so staff know what to ask before sharing anything (no names).
    unverified_reason: str | None = None
    channels: list[dict[str, str | bool]] = field(default_factory=list)
    lab_orders: list[LabOrder] = field(default_factory=list)
    requests: list[PatientRequest] = field(default_factory=list)
    notes: list[StaffNote] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)


@dataclass
class ConversationView:
    """Everything the conversation page shows."""

    conversation: Conversation
    identity: ChannelIdentity
    patient: Patient | None
    handoff: Handoff | None
    transcript: list[TranscriptItem]
    panel: PatientPanel
    assigned_name: str | None
    complaint_case_id: int | None
    colleagues: list[StaffUser]


def _related_conversation_ids(
    session: Session, conversation: Conversation, identity: ChannelIdentity
) -> list[int]:
    if identity.patient_id is None:
        clause = Conversation.identity_id == identity.id
    else:
        identity_ids = select(ChannelIdentity.id).where(ChannelIdentity.patient_id == identity.patient_id)
        clause = or_(
            Conversation.patient_id == identity.patient_id, Conversation.identity_id.in_(identity_ids)
        )
    ids = list(session.scalars(select(Conversation.id).where(clause).order_by(Conversation.id)))
    return ids if conversation.id in ids else [*ids, conversation.id]


def transcript(*, session: Session, conversation: Conversation) -> list[TranscriptItem]:
    """Return the patient's messages across all their conversations and channels, with notes, oldest first."""
    identity = session.get(ChannelIdentity, conversation.identity_id)
    assert identity is not None
    ids = _related_conversation_ids(session, conversation, identity)
    messages = list(
        session.scalars(select(Message).where(Message.conversation_id.in_(ids)).order_by(Message.id))
    )
    deliveries = (
        {
            row.message_id: row
            for row in session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.message_id.in_([m.id for m in messages if m.direction == Direction.OUT])
                )
            )
        }
        if messages
        else {}
    )
    notes = list(
        session.scalars(select(StaffNote).where(StaffNote.conversation_id.in_(ids)).order_by(StaffNote.id))
    )
    author_ids = {
        m.author_id for m in messages if m.author_kind in (Author.STAFF, Author.SYSTEM) and m.author_id
    }
    author_ids |= {note.author_id for note in notes}
    names = (
        dict(
            session.execute(select(StaffUser.id, StaffUser.name).where(StaffUser.id.in_(author_ids)))
            .tuples()
            .all()
        )
        if author_ids
        else {}
    )
    items: list[TranscriptItem] = []
    last_inbound: dict[int, Message] = {}
    for message in messages:
        if message.direction == Direction.IN:
            last_inbound[message.conversation_id] = message
            items.append(TranscriptItem(kind="message", at=message.created_at, conversation_id=message.conversation_id,
                                        channel=message.channel, author="Patient", author_kind=message.author_kind,
                                        direction=message.direction, body=message.body or "", message_id=message.id,
                                        intent=message.intent, route=message.route,
                                        attachments=tuple(attachment_label(m) for m in message.media or ())))  # fmt: skip
            continue
        answered = last_inbound.get(message.conversation_id)
        delivery = deliveries.get(message.id)
        if message.author_kind == Author.STAFF:
            author = names.get(message.author_id or 0, "Staff")
        elif message.author_kind == Author.SYSTEM:
            author = "System"
        else:
            author = "Bot"
        items.append(
            TranscriptItem(
                kind="message",
                at=message.created_at,
                conversation_id=message.conversation_id,
                channel=message.channel,
                author=author,
                author_kind=message.author_kind,
                direction=message.direction,
                body=message.body or "",
                message_id=message.id,
                intent=answered.intent
                if message.author_kind == Author.BOT and answered is not None
                else None,
                route=(answered.route if answered is not None else message.route)
                if message.author_kind == Author.BOT
                else None,
                response_key=message.response_key,
                delivery=delivery.status if delivery is not None else None,
                error_code=delivery.error_code if delivery is not None else None,
                correctable=message.author_kind in (Author.BOT, Author.STAFF),
            )
        )
    for note in notes:
        items.append(TranscriptItem(kind="note", at=note.created_at, conversation_id=note.conversation_id,
                                    channel="note", author=names.get(note.author_id, "Staff"), author_kind="note",
                                    direction="note", body=note.body))  # fmt: skip
    items.sort(key=lambda item: (item.at, 0 if item.kind == "message" else 1, item.message_id or 0))
    return items


def _why_unverified(session: Session, identity: ChannelIdentity) -> str:
    """Say why a sender is not verified, without naming anyone the number is on file for."""
    if identity.channel in PHONE_CHANNELS:
        on_file = len(patients_on_phones(session=session, phones=[identity.address]).get(identity.address, []))
        if on_file > 1:
            return (f"This number is on file for {on_file} patients (a shared line): "
                    "ask who is writing and check their date of birth before sharing anything.")  # fmt: skip
        return "This number is not on file for any patient."
    if identity.channel == Channel.TELEGRAM:
        if identity.patient_id is not None and identity.verification_method == TELEGRAM_CONTACT:
            return ("This chat was linked by its phone number, which is no longer on file for exactly one patient: "
                    "the patient must share their number again, or be sent a link.")  # fmt: skip
        return "This chat is not linked to a patient: they can share their phone number, or be sent a link."
    if identity.channel == Channel.WEBCHAT and identity.patient_id is not None:
        return "The web chat verification has ended: the visitor must enter a new code."
    return "The visitor has not entered a code sent to a phone on file."


def _panel(
    session: Session, conversation: Conversation, identity: ChannelIdentity, patient: Patient | None
) -> PatientPanel:
    ids = _related_conversation_ids(session, conversation, identity)
    conversations = list(
        session.scalars(select(Conversation).where(Conversation.id.in_(ids)).order_by(Conversation.id.desc()))
    )
    notes = list(
        session.scalars(
            select(StaffNote).where(StaffNote.conversation_id.in_(ids)).order_by(StaffNote.id.desc())
        )
    )
    requests_query = select(PatientRequest).where(PatientRequest.status == RequestStatus.OPEN)
    if patient is not None:
        identities = list(
            session.scalars(
                select(ChannelIdentity)
                .where(ChannelIdentity.patient_id == patient.id)
                .order_by(ChannelIdentity.id)
            )
        )
        labs = list(
            session.scalars(
                select(LabOrder)
                .where(LabOrder.patient_id == patient.id, LabOrder.status.in_(OPEN_LAB_STATUSES))
                .order_by(LabOrder.expected_by)
            )
        )
        requests_query = requests_query.where(
            or_(PatientRequest.patient_id == patient.id, PatientRequest.conversation_id.in_(ids))
        )
    else:
        identities, labs = [identity], []
        requests_query = requests_query.where(PatientRequest.conversation_id.in_(ids))
    channels: list[dict[str, str | bool]] = [
        {"channel": item.channel, "address": mask_address(channel=item.channel, address=item.address),
         "opted_out": item.opted_out_at is not None, "verified": item.is_verified}
        for item in identities
    ]  # fmt: skip
    return PatientPanel(
        name=patient.display_name if patient is not None else "Unknown sender",
        full_name=patient.name if patient is not None else None,
        language=(patient.language if patient is not None else conversation.language) or "en",
        birth_date=mask_birth_date(patient.date_of_birth if patient is not None else None),
        verified=patient is not None,
        unverified_reason=_why_unverified(session, identity) if patient is None else None,
        channels=channels,
        lab_orders=labs,
        requests=list(session.scalars(requests_query.order_by(PatientRequest.id))),
        notes=notes,
        conversations=conversations,
    )


def _open_handoff(session: Session, conversation_id: int) -> Handoff | None:
    return session.scalars(
        select(Handoff)
        .where(Handoff.conversation_id == conversation_id, Handoff.resolved_at.is_(None))
        .order_by(Handoff.id.desc())
    ).first()


def _identity_and_patient(
    session: Session, conversation: Conversation
) -> tuple[ChannelIdentity, Patient | None]:
    identity = session.get(ChannelIdentity, conversation.identity_id)
    assert identity is not None
    return identity, verified_patient(session=session, identity=identity)


def colleagues_for(*, session: Session, conversation: Conversation, staff: Principal) -> list[StaffUser]:
    """Return the active colleagues a conversation may be transferred to."""
    return list(
        session.scalars(
            select(StaffUser)
            .where(
                StaffUser.disabled_at.is_(None),
                StaffUser.id != staff.staff_id,
                StaffUser.role.in_([str(role) for role in roles_for(conversation.reason)]),
            )
            .order_by(StaffUser.name)
        )
    )


def conversation_view(*, session: Session, conversation_id: int, staff: Principal) -> ConversationView:
    """Return a conversation page's content and audit the view; raise Refused when not allowed."""
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff)
    identity, patient = _identity_and_patient(session, conversation)
    audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="patient.viewed",
                 subject_type="conversation", subject_id=conversation.id,
                 patient_id=conversation.patient_id or identity.patient_id)  # fmt: skip
    handoff = _open_handoff(session, conversation.id)
    assigned = (
        session.get(StaffUser, conversation.assigned_staff_id) if conversation.assigned_staff_id else None
    )
    case_id = session.scalars(
        select(ComplaintCase.id)
        .where(ComplaintCase.conversation_id == conversation.id)
        .order_by(ComplaintCase.id.desc())
    ).first()
    return ConversationView(
        conversation=conversation,
        identity=identity,
        patient=patient,
        handoff=handoff,
        transcript=transcript(session=session, conversation=conversation),
        panel=_panel(session, conversation, identity, patient),
        assigned_name=assigned.name if assigned is not None else None,
        complaint_case_id=case_id,
        colleagues=colleagues_for(session=session, conversation=conversation, staff=staff),
    )


# Live refreshes repeat a view every minute or so: the trail records each staff member's view of a
# conversation (and their searches) once in this window, not once a minute.
VIEW_AUDIT_WINDOW = timedelta(minutes=30)


def _recorded_since(session: Session, *, staff: Principal, action: str, subject: tuple[str, str | None]) -> bool:
    return session.scalar(
        select(AuditEvent.id)
        .where(
            AuditEvent.at >= utcnow() - VIEW_AUDIT_WINDOW,
            AuditEvent.actor_kind == "staff",
            AuditEvent.actor_id == str(staff.staff_id),
            AuditEvent.action == action,
            AuditEvent.subject_type == subject[0],
            AuditEvent.subject_id.is_(None) if subject[1] is None else AuditEvent.subject_id == subject[1],
        )
        .limit(1)
    ) is not None


def audit_view(*, session: Session, staff: Principal, conversation: Conversation, purpose: str) -> None:
    """Audit a view of a conversation's patient data outside its page (a fragment, a filled-in reply)."""
    if _recorded_since(session, staff=staff, action="patient.viewed", subject=("conversation", str(conversation.id))):
        return
    audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="patient.viewed",
                 subject_type="conversation", subject_id=conversation.id,
                 patient_id=audit.patient_of(session, conversation), details={"purpose": purpose})  # fmt: skip


def audit_search(*, session: Session, staff: Principal, rows: list[QueueRow], repeated: bool) -> None:
    """Audit a search of the queue by name or number: which patients it showed (never what was typed).

    `repeated`: a live refresh of a search already on screen, recorded again only after the window.
    """
    if repeated and _recorded_since(session, staff=staff, action="patient.searched", subject=("search", None)):
        return
    patients = sorted({row.patient_id for row in rows if row.patient_id is not None})
    audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="patient.searched",
                 subject_type="search", patient_id=patients[0] if len(patients) == 1 else None,
                 details={"results": len(rows), "patient_ids": patients[:50]})  # fmt: skip


def record_refusal(
    *, session: Session, staff: Principal, action: str, conversation_id: int, refused: Refused
) -> None:
    """Audit a refused view or action (in its own transaction: the refused one was rolled back)."""
    audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action=action,
                 subject_type="conversation", subject_id=conversation_id, patient_id=refused.patient_id,
                 outcome=refused.outcome)  # fmt: skip


def attachment_for(*, session: Session, message_id: int, index: int, staff: Principal) -> tuple[str, str, Conversation]:
    """Return (reference, channel, conversation) of a patient's attachment this staff member may open; raise Refused."""
    message = session.get(Message, message_id)
    media = (message.media or []) if message is not None and message.direction == Direction.IN else []
    if message is None or not 0 <= index < len(media):
        raise Refused(404, "There is no such attachment.", outcome="not_found")
    conversation = load_conversation(session=session, conversation_id=message.conversation_id, staff=staff)
    return media[index], message.channel, conversation


def record_attachment_view(
    *, session: Session, staff: Principal, message_id: int, patient_id: int | None, outcome: str = "ok"
) -> None:
    """Audit a staff member opening (or failing to open) a patient's attachment."""
    audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="patient.attachment_viewed",
                 subject_type="message", subject_id=message_id, patient_id=patient_id, outcome=outcome)  # fmt: skip


# -- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionResult:
    """What an action did: the status shown to staff, and whether texts were queued for the patient."""

    status: str
    queued: bool = False


def _audit(session: Session, staff: Principal, action: str, conversation: Conversation, **details: object):  # type: ignore[no-untyped-def]
    return audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action=action,
                        subject_type="conversation", subject_id=conversation.id,
                        patient_id=audit.patient_of(session, conversation), details=dict(details))  # fmt: skip


def _claimed_handoff(
    *, session: Session, conversation: Conversation, clinic: ClinicContext, staff_id: int, now: datetime
) -> Handoff:
    """Return the chat's open hand-off, claimed; staff stepping into a bot chat open one claimed at once."""
    handoff = _open_handoff(session, conversation.id)
    if handoff is None:
        due_at = clinic.calendar.add_working_minutes(now, get_settings().sla_human_minutes)
        new = Handoff(conversation_id=conversation.id, reason=HandoffReason.HUMAN, priority=Priority.NORMAL,
                      team="front_desk", due_at=due_at, created_at=now)  # fmt: skip
        # Through add_open_handoff, as every hand-off opens: had another writer opened one since, it is the one.
        handoff = add_open_handoff(session=session, handoff=new)
        if handoff is new:
            conversation.reason = conversation.reason or HandoffReason.HUMAN
            conversation.active_form = None
    if handoff.claimed_at is None:
        handoff.claimed_at, handoff.claimed_by_id = now, staff_id
    return handoff


def _render(
    domain: Domain, clinic: ClinicContext, conversation: Conversation, key: str, **values: str
) -> str:
    return domain.render(
        key, lang=conversation.language, slots={}, values={"clinic_name": clinic.name, **values}
    )


def _staff_name(session: Session, staff_id: int) -> str:
    user = session.get(StaffUser, staff_id)
    return user.name if user is not None else ""


def _holder_check(conversation: Conversation, staff: Principal, session: Session, *, verb: str) -> None:
    if conversation.state == ConversationState.CLOSED:
        raise Refused(409, "This conversation is closed. A new message from the patient opens a new one.",
                      outcome="closed", patient_id=conversation.patient_id)  # fmt: skip
    holder = conversation.assigned_staff_id
    if holder is not None and holder != staff.staff_id and staff.role != Role.ADMIN:
        raise Refused(409, f"{_staff_name(session, holder)} is handling this chat, so you cannot {verb} it. "
                      "Ask them to transfer it to you.", outcome="held", patient_id=conversation.patient_id)  # fmt: skip


def _do_claim(
    *, session: Session, conversation: Conversation, staff: Principal, domain: Domain, now: datetime
) -> bool:
    """Claim a locked conversation; return False when this staff member already held it."""
    if conversation.state == ConversationState.CLOSED:
        raise Refused(409, "This conversation is closed. A new message from the patient opens a new one.",
                      outcome="closed", patient_id=conversation.patient_id)  # fmt: skip
    if conversation.assigned_staff_id == staff.staff_id and conversation.state == ConversationState.STAFF:
        return False
    # Conditional update: of two staff clicking Claim at once, exactly one changes the row.
    won = session.execute(
        update(Conversation)
        .where(
            Conversation.id == conversation.id,
            Conversation.state != ConversationState.CLOSED,
            or_(Conversation.assigned_staff_id.is_(None), Conversation.assigned_staff_id == staff.staff_id),
        )
        .values(state=ConversationState.STAFF, assigned_staff_id=staff.staff_id, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if not won:
        session.refresh(conversation)
        holder = (
            _staff_name(session, conversation.assigned_staff_id)
            if conversation.assigned_staff_id
            else "Someone"
        )
        raise Refused(409, f"{holder} already claimed this chat.", outcome="conflict",
                      patient_id=conversation.patient_id)  # fmt: skip
    session.refresh(conversation)
    clinic = load_clinic(session=session)
    handoff = _claimed_handoff(session=session, conversation=conversation, clinic=clinic, staff_id=staff.staff_id, now=now)
    session.flush()
    identity, _ = _identity_and_patient(session, conversation)
    body = _render(
        domain, clinic, conversation, "utter_staff_claimed", staff_name=_staff_name(session, staff.staff_id)
    )
    do_tell_patient(session=session, conversation=conversation, key=f"claim:{handoff.id}:{staff.staff_id}",
                  body=body, author_kind=Author.SYSTEM, staff_id=staff.staff_id, response_key="utter_staff_claimed")  # fmt: skip
    _audit(session, staff, "conversation.claimed", conversation, handoff_id=handoff.id)
    log.info("conversation %s claimed by staff %s (handoff %s)", conversation.id, staff.staff_id, handoff.id)
    return True


def do_claim(*, session: Session, conversation_id: int, staff: Principal, domain: Domain) -> ActionResult:
    """Take a chat over: the bot goes silent and the patient is told who is replying."""
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff, lock=True)
    claimed = _do_claim(session=session, conversation=conversation, staff=staff, domain=domain, now=utcnow())
    return ActionResult("claimed" if claimed else "already_yours", queued=claimed)


def closing_time(calendar, day: date) -> datetime | None:  # type: ignore[no-untyped-def]
    """Return when the clinic closes on a local day, or None when it does not open."""
    intervals = calendar.opening_intervals(day)
    return intervals[-1][1] if intervals else None


def followup_due(*, clinic: ClinicContext, choice: str, on: str, now: datetime) -> datetime | None:
    """Return the due time of a staff promise, in working hours; raise Refused(400) for a bad choice."""
    calendar = clinic.calendar
    today = calendar.local_date(now)
    if choice in ("", "none"):
        return None
    if choice == "today":
        close = closing_time(calendar, today)
        if close is not None and close > now:
            return close
        return closing_time(calendar, calendar.next_working_day(today))
    if choice == "next_day":
        return closing_time(calendar, calendar.next_working_day(today))
    if choice == "date":
        try:
            day = date.fromisoformat(on.strip())
        except ValueError:
            raise Refused(400, "Pick the follow-up date (YYYY-MM-DD).", outcome="invalid") from None
        if day <= today:
            raise Refused(
                400, f"The follow-up date {day.isoformat()} is not in the future.", outcome="invalid"
            )
        if not calendar.is_working_day(day):
            raise Refused(
                400, f"The clinic is closed on {day.isoformat()}: pick a working day.", outcome="invalid"
            )
        return closing_time(calendar, day)
    raise Refused(400, f"Unknown follow-up choice {choice!r}.", outcome="invalid")


def new_submission_id() -> str:
    """Return a one-time id for a rendered reply form, so submitting that form twice sends one text."""
    return secrets.token_urlsafe(16)


def reply_key(*, conversation_id: int, submission_id: str) -> str:
    """Return the outbox key of the reply a form submission sends: one text per rendered form."""
    return f"staff-reply:{conversation_id}:{submission_id}"


def _repeated_reply(session: Session, conversation: Conversation, key: str) -> ActionResult | None:
    """Return what the first submission of a form answered, when this one repeats it; None when it is new.

    A double click, a browser retry or a resubmitted form carries the same submission id: the repeat must
    create no message, no promise and no text, and answer with the first one's status.
    """
    queued = session.execute(select(OutboxMessage.id, OutboxMessage.message_id).where(OutboxMessage.key == key)).first()
    if queued is None:
        return None
    claimed = False
    for details in session.scalars(
        select(AuditEvent.details).where(
            AuditEvent.action == "conversation.replied",
            AuditEvent.subject_type == "conversation",
            AuditEvent.subject_id == str(conversation.id),
            AuditEvent.outcome == "ok",
        )
    ):
        if details.get("message_id") == queued.message_id:
            claimed = bool(details.get("claimed"))
            break
    log.info("outbox %s: reply form submitted again in conversation %s; nothing sent", queued.id, conversation.id)
    return ActionResult("sent" if not claimed else "claimed_sent", queued=True)


def do_send(
    *,
    session: Session,
    conversation_id: int,
    staff: Principal,
    domain: Domain,
    body: str,
    submission_id: str,
    followup: str = "none",
    followup_date: str = "",
) -> ActionResult:
    """Send a staff reply on the patient's channel once per submitted form, optionally with a follow-up promise."""
    if not SUBMISSION_ID.fullmatch(submission_id):
        raise Refused(400, "The reply form's submission id is missing or malformed: reload the page and send again.",
                      outcome="invalid")  # fmt: skip
    text = body.strip()
    if not text:
        raise Refused(400, "Write a reply before pressing Send.", outcome="invalid")
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff, lock=True)
    # Checked under the conversation's lock, before anything is written: a concurrent repeat waits here.
    key = reply_key(conversation_id=conversation.id, submission_id=submission_id)
    repeated = _repeated_reply(session, conversation, key)
    if repeated is not None:
        return repeated
    _holder_check(conversation, staff, session, verb="reply to")
    now = utcnow()
    clinic = load_clinic(session=session)
    due_at = followup_due(clinic=clinic, choice=followup, on=followup_date, now=now)
    if due_at is not None:
        due = render_due(due=due_at, now=now, tz=clinic.calendar.tz, lang=conversation.language)
        text = f"{text} {_render(domain, clinic, conversation, 'utter_staff_promise', due=due)}"
    if len(text) > MAX_REPLY_CHARS:
        raise Refused(400, f"Replies are limited to {MAX_REPLY_CHARS} characters, including any promise "
                      f"sentence; this one has {len(text)}.", outcome="invalid")  # fmt: skip
    try:
        check_no_test_names(session=session, conversation=conversation, text=text)
    except ClinicalContentError as named:
        raise Refused(400, str(named), outcome="invalid") from None
    claimed = False
    if conversation.assigned_staff_id is None or conversation.state != ConversationState.STAFF:
        claimed = _do_claim(session=session, conversation=conversation, staff=staff, domain=domain, now=now)
    handoff = _open_handoff(session, conversation.id)
    identity, _ = _identity_and_patient(session, conversation)
    message = Message(conversation_id=conversation.id, channel=conversation.channel, direction=Direction.OUT,
                      author_kind=Author.STAFF, author_id=staff.staff_id, body=text, lang=conversation.language)  # fmt: skip
    session.add(message)
    session.flush()
    if outbox.enqueue(session=session, key=key, identity=identity, body=text, conversation_id=conversation.id,
                      message_id=message.id, priority=STAFF_PRIORITY) is None:  # fmt: skip
        # A concurrent repeat the lock above did not serialise (SQLite across processes): keep nothing of this one.
        raise Refused(409, "This reply was already sent.", outcome="conflict", patient_id=conversation.patient_id)
    conversation.last_message_at = now
    # Staff getting back to the patient here keeps what an earlier reply promised ("we'll get back to you
    # by 6 pm tomorrow"), before this reply promises anything new.
    kept = do_close_promises(
        session=session, promises=_open_followups(session, conversation.id), status=PromiseStatus.KEPT, at=now
    )
    if handoff is not None:
        if handoff.first_response_at is None:
            handoff.first_response_at = now
        kept += do_close_promises(
            session=session,
            promises=session.scalars(
                select(Promise).where(
                    Promise.subject_type == "handoff",
                    Promise.subject_id == handoff.id,
                    Promise.kind.in_((PromiseKind.HANDOFF_REPLY, PromiseKind.COMPLAINT_FOLLOWUP)),
                    Promise.status == PromiseStatus.OPEN,
                )
            ),
            status=PromiseStatus.KEPT,
            at=now,
        )
    promise_id = None
    if due_at is not None:
        promise = Promise(patient_id=conversation.patient_id, identity_id=identity.id, conversation_id=conversation.id,
                          kind=PromiseKind.CALLBACK, subject_type="message", subject_id=message.id,
                          reason_key="staff_followup", due_at=due_at, status=PromiseStatus.OPEN)  # fmt: skip
        session.add(promise)
        session.flush()
        promise_id = promise.id
    _audit(session, staff, "conversation.replied", conversation, message_id=message.id, claimed=claimed,
           handoff_id=handoff.id if handoff else None, promises_kept=kept, promise_id=promise_id)  # fmt: skip
    log.info("staff %s replied in conversation %s (message %s)", staff.staff_id, conversation.id, message.id)
    return ActionResult("sent" if not claimed else "claimed_sent", queued=True)


def do_add_note(*, session: Session, conversation_id: int, staff: Principal, body: str) -> ActionResult:
    """Add an internal note to a conversation; it is never sent."""
    text = body.strip()
    if not text:
        raise Refused(400, "Write the note before pressing Add note.", outcome="invalid")
    if len(text) > MAX_NOTE_CHARS:
        raise Refused(400, f"Notes are limited to {MAX_NOTE_CHARS} characters; this one has {len(text)}.",
                      outcome="invalid")  # fmt: skip
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff)
    identity, _ = _identity_and_patient(session, conversation)
    note = StaffNote(conversation_id=conversation.id, patient_id=conversation.patient_id or identity.patient_id,
                     author_id=staff.staff_id, body=text)  # fmt: skip
    session.add(note)
    session.flush()
    _audit(session, staff, "note.added", conversation, note_id=note.id)
    return ActionResult("noted")


def do_transfer(
    *, session: Session, conversation_id: int, staff: Principal, domain: Domain, to_staff_id: int
) -> ActionResult:
    """Pass a chat to a colleague; the patient is told who continues."""
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff, lock=True)
    _holder_check(conversation, staff, session, verb="transfer")
    target = session.get(StaffUser, to_staff_id)
    if target is None or target.disabled_at is not None:
        raise Refused(400, "Pick an active colleague to transfer to.", outcome="invalid",
                      patient_id=conversation.patient_id)  # fmt: skip
    if target.id == conversation.assigned_staff_id:
        raise Refused(409, f"{target.name} already holds this chat.", outcome="conflict",
                      patient_id=conversation.patient_id)  # fmt: skip
    if not can_see(role=target.role, reason=conversation.reason):
        raise Refused(400, f"{target.name} cannot take a medical conversation: pick a clinician.",
                      outcome="invalid", patient_id=conversation.patient_id)  # fmt: skip
    now = utcnow()
    clinic = load_clinic(session=session)
    handoff = _claimed_handoff(session=session, conversation=conversation, clinic=clinic, staff_id=target.id, now=now)
    previous = conversation.assigned_staff_id
    conversation.state, conversation.assigned_staff_id = ConversationState.STAFF, target.id
    session.flush()
    event = _audit(session, staff, "conversation.transferred", conversation, handoff_id=handoff.id,
                   from_staff_id=previous, to_staff_id=target.id)  # fmt: skip
    session.flush()
    identity, _ = _identity_and_patient(session, conversation)
    body = _render(domain, clinic, conversation, "utter_staff_transferred", staff_name=target.name)
    do_tell_patient(session=session, conversation=conversation,
                  key=f"transfer:{handoff.id}:{target.id}:{event.id}", body=body, author_kind=Author.SYSTEM,
                  staff_id=staff.staff_id, response_key="utter_staff_transferred")  # fmt: skip
    return ActionResult("transferred", queued=True)


def _open_followups(session: Session, conversation_id: int) -> list[Promise]:
    """Return the open follow-up promises staff replies made in a conversation."""
    return list(
        session.scalars(
            select(Promise).where(
                Promise.conversation_id == conversation_id,
                Promise.kind == PromiseKind.CALLBACK,
                Promise.status == PromiseStatus.OPEN,
            )
        )
    )


def _settle_requests(session: Session, conversation_id: int, *, done: bool, now: datetime) -> list[int]:
    """Settle a closing conversation's open requests, done when resolved, else cancelled; return their ids.

    Closing is where staff say a request is handled: without it the answer promised for a refill or an
    appointment stayed open for good, and the patient was told "your request is still being worked on"
    every working day after staff had answered it.
    """
    requests = list(
        session.scalars(
            select(PatientRequest).where(
                PatientRequest.conversation_id == conversation_id, PatientRequest.status == RequestStatus.OPEN
            )
        )
    )
    if not requests:
        return []
    for request in requests:
        request.status = RequestStatus.DONE if done else RequestStatus.CANCELLED
        request.completed_at = now
    promises = session.scalars(
        select(Promise).where(
            Promise.kind == PromiseKind.REQUEST_ANSWER,
            Promise.subject_type == "request",
            Promise.subject_id.in_([request.id for request in requests]),
            Promise.status == PromiseStatus.OPEN,
        )
    )
    status = PromiseStatus.KEPT if done else PromiseStatus.CANCELLED
    do_close_promises(session=session, promises=promises, status=status, at=now)
    return [request.id for request in requests]


def _settle_handoff(session: Session, handoff: Handoff | None, now: datetime) -> list[int]:
    """Resolve a hand-off; a reply promise still open was never kept by a staff reply: cancel it."""
    if handoff is None:
        return []
    handoff.resolved_at = now
    return do_close_promises(
        session=session,
        promises=session.scalars(
            select(Promise).where(
                Promise.subject_type == "handoff",
                Promise.subject_id == handoff.id,
                Promise.kind == PromiseKind.HANDOFF_REPLY,
                Promise.status == PromiseStatus.OPEN,
            )
        ),
        status=PromiseStatus.CANCELLED,
        at=now,
    )


def do_hand_back(*, session: Session, conversation_id: int, staff: Principal, domain: Domain) -> ActionResult:
    """Give the chat back to the bot; the patient is told the assistant can help again."""
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff, lock=True)
    _holder_check(conversation, staff, session, verb="hand back")
    if conversation.state not in OPEN_STATES:
        raise Refused(409, "The bot is already handling this chat.", outcome="conflict",
                      patient_id=conversation.patient_id)  # fmt: skip
    now = utcnow()
    handoff = _open_handoff(session, conversation.id)
    cancelled = _settle_handoff(session, handoff, now)
    conversation.state, conversation.assigned_staff_id = ConversationState.BOT, None
    conversation.clarify_streak, conversation.active_form = 0, None
    clinic = load_clinic(session=session)
    identity, _ = _identity_and_patient(session, conversation)
    key = (
        f"handback:{handoff.id}"
        if handoff is not None
        else f"handback:conversation:{conversation.id}:{int(now.timestamp())}"
    )
    do_tell_patient(session=session, conversation=conversation, key=key,
                  body=_render(domain, clinic, conversation, "utter_staff_handback"), author_kind=Author.SYSTEM,
                  staff_id=staff.staff_id, response_key="utter_staff_handback")  # fmt: skip
    _audit(session, staff, "conversation.handed_back", conversation,
           handoff_id=handoff.id if handoff else None, promises_cancelled=cancelled)  # fmt: skip
    return ActionResult("handed_back", queued=True)


def do_close(*, session: Session, conversation_id: int, staff: Principal, outcome: str) -> ActionResult:
    """Close a conversation with an outcome; the patient is not messaged."""
    if outcome not in OUTCOMES:
        raise Refused(400, f"Pick an outcome: {', '.join(OUTCOMES.values())}.", outcome="invalid")
    conversation = load_conversation(session=session, conversation_id=conversation_id, staff=staff, lock=True)
    _holder_check(conversation, staff, session, verb="close")
    now = utcnow()
    handoff = _open_handoff(session, conversation.id)
    cancelled = _settle_handoff(session, handoff, now)
    # Closed by staff: a follow-up promised in it will not come here, so it must not keep sending
    # "we haven't been able to get back to you yet" about a conversation that is over.
    followups = _open_followups(session, conversation.id)
    cancelled += do_close_promises(
        session=session, promises=followups, status=PromiseStatus.CANCELLED, at=now
    )
    settled = _settle_requests(session, conversation.id, done=outcome == "resolved", now=now)
    conversation.state, conversation.outcome = ConversationState.CLOSED, outcome
    conversation.closed_at, conversation.closed_by_id = now, staff.staff_id
    _audit(session, staff, "conversation.closed", conversation, outcome=outcome,
           handoff_id=handoff.id if handoff else None, promises_cancelled=cancelled,
           **({"requests_settled": settled} if settled else {}))  # fmt: skip
    return ActionResult("closed")
