"""Privacy operations: retention purge of message bodies, one patient's export, and erasure on request."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from bot.channels.models import OutboxMessage, OutboxStatus
from bot.channels.verification import VerificationCode
from bot.conversations.models import Conversation, Direction, Handoff, Message, PatientRequest
from bot.db import Base, utcnow
from bot.labs.models import LabOrder
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.patients.service import InvalidPhoneError, do_follow_phone_file, normalize_phone
from bot.promises.models import Promise, PromiseStatus, PromiseUpdate
from bot.staff import audit
from bot.staff.models import AuditEvent, ComplaintAction, ComplaintCase, Incident, StaffNote

# Every table, and whether it holds a patient's personal data (and what erasure does with it).
# tests/ops/test_privacy.py fails when a table is added without being placed here.
TABLES: dict[str, str] = {
    "patient": "erased: name, preferred name, date of birth, phone, external id, notes",
    "channel_identity": "erased: the address (phone number, Telegram chat id, web chat session hash) and the number a Telegram chat was linked by",
    "conversation": "erased: form slots (answers being collected)",
    "message": "erased and purged by retention: the body; metadata (time, channel, intent, route) kept",
    "outbox": "erased and purged by retention: the body and buttons; pending texts cancelled",
    "outbox_part": "the provider ids (Twilio SIDs), delivery statuses and error codes of a split text's messages; no patient data",
    "early_status": "status callbacks (Twilio SIDs, statuses, error codes) for messages not recorded yet; deleted when applied or after 7 days; no patient data",
    "request": "erased: details (e.g. the refill's medication, preferred times)",
    "lab_order": "erased: the test name; order id, status and dates kept",
    "promise": "ids and times only; open promises are cancelled by erasure",
    "promise_update": "ids and times only",
    "handoff": "ids and times only",
    "staff_note": "erased: the body",
    "complaint_case": "erased: the summary",
    "complaint_action": "erased: the body",
    "incident": "erased: the staff explanation and review note",
    "verification_code": "deleted by erasure (holds a salted hash of the phone)",
    "telegram_link_token": "a hash of a random token; no personal data",
    "audit_event": "kept: ids and codes only; append-only",
    "staff_alert": "ids and times only",
    "owed_alert": "ids, times and an emergency kind; deleted once the alert is raised",
    "clinic": "the clinic's own settings; no patient data",
    "staff_user": "staff accounts; no patient data",
    "staff_session": "staff sign-ins; no patient data",
    "login_attempt": "staff sign-in attempts; no patient data",
    "canned_reply": "staff reply templates; no patient data",
    "api_key": "lab system keys (hashes); no patient data",
    "lab_message": "lab feed receipts: control ids and error codes; no patient data",
    "scheduler_heartbeat": "the scheduler's liveness; no patient data",
}

ERASED_NAME = "erased"
FINAL_OUTBOX = (
    OutboxStatus.SENT,
    OutboxStatus.DELIVERED,
    OutboxStatus.READ,
    OutboxStatus.UNDELIVERED,
    OutboxStatus.FAILED,
    OutboxStatus.CANCELLED,
)
OPEN_OUTBOX = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.UNKNOWN)


class PrivacyError(ValueError):
    """A privacy operation cannot run as asked; the message says why."""


@dataclass(frozen=True)
class PurgeReport:
    """How many bodies a retention purge cleared, and the cut-off it used."""

    cutoff: datetime
    messages: int
    outbox: int


@dataclass(frozen=True)
class EraseReport:
    """How many rows of each kind erasure touched."""

    patient_id: int
    identities: int
    conversations: int
    messages: int
    outbox: int
    requests: int
    lab_orders: int
    notes: int
    complaints: int
    incidents: int
    promises_cancelled: int


def find_patient(*, session: Session, phone: str | None = None, patient_id: int | None = None) -> Patient:
    """Return the one patient with this phone or id, or raise PrivacyError saying why not."""
    if patient_id is not None:
        patient = session.get(Patient, patient_id)
        if patient is None:
            raise PrivacyError(f"no patient with id {patient_id}")
        return patient
    if not phone:
        raise PrivacyError("give --phone or --id")
    try:
        e164 = normalize_phone(phone)
    except InvalidPhoneError as error:
        raise PrivacyError(f"--phone: {error}") from None
    matches = session.scalars(select(Patient).where(Patient.phone == e164).order_by(Patient.id)).all()
    if not matches:
        raise PrivacyError("no patient has this phone number")
    if len(matches) > 1:
        ids = ", ".join(str(match.id) for match in matches)
        raise PrivacyError(f"{len(matches)} patients share this phone number (ids {ids}); use --id")
    return matches[0]


@dataclass(frozen=True)
class _Scope:
    """The ids of every row that belongs to one patient."""

    identity_ids: list[int]
    conversation_ids: list[int]


def _scope(session: Session, patient_id: int) -> _Scope:
    identity_ids = list(
        session.scalars(select(ChannelIdentity.id).where(ChannelIdentity.patient_id == patient_id))
    )
    conversation_ids = list(
        session.scalars(
            select(Conversation.id).where(
                or_(Conversation.patient_id == patient_id, Conversation.identity_id.in_(identity_ids))
            )
        )
    )
    return _Scope(identity_ids, conversation_ids)


def _value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _row(row: Base, *, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Return every column of a row as JSON-ready values."""
    return {
        column.key: _value(getattr(row, column.key))
        for column in row.__mapper__.column_attrs
        if column.key not in skip
    }


def export_patient(
    *, session: Session, patient: Patient, actor_kind: str, actor_id: str | None = None
) -> dict[str, Any]:
    """Return everything stored about one patient as a JSON-ready dict; the export is audited."""
    scope = _scope(session, patient.id)
    conv_ids, identity_ids = scope.conversation_ids, scope.identity_ids
    conversations = session.scalars(
        select(Conversation).where(Conversation.id.in_(conv_ids)).order_by(Conversation.id)
    )
    messages: dict[int, list[dict[str, Any]]] = {}
    for message in session.scalars(
        select(Message).where(Message.conversation_id.in_(conv_ids)).order_by(Message.id)
    ):
        messages.setdefault(message.conversation_id, []).append(
            _row(message, skip=frozenset({"conversation_id"}))
        )
    promises = list(
        session.scalars(
            select(Promise)
            .where(or_(Promise.patient_id == patient.id, Promise.conversation_id.in_(conv_ids)))
            .order_by(Promise.id)
        )
    )
    promise_ids = [promise.id for promise in promises]
    cases = list(
        session.scalars(
            select(ComplaintCase)
            .where(or_(ComplaintCase.patient_id == patient.id, ComplaintCase.conversation_id.in_(conv_ids)))
            .order_by(ComplaintCase.id)
        )
    )
    actions: dict[int, list[dict[str, Any]]] = {}
    for action in session.scalars(
        select(ComplaintAction)
        .where(ComplaintAction.case_id.in_([c.id for c in cases]))
        .order_by(ComplaintAction.id)
    ):
        actions.setdefault(action.case_id, []).append(_row(action, skip=frozenset({"case_id"})))

    def rows(model: type[Base], *where: Any) -> list[dict[str, Any]]:
        return [_row(row) for row in session.scalars(select(model).where(or_(*where)).order_by(model.id))]  # type: ignore[attr-defined]

    data = {
        "exported_at": utcnow().isoformat(),
        "patient": _row(patient),
        "identities": rows(ChannelIdentity, ChannelIdentity.patient_id == patient.id),
        "conversations": [
            {**_row(conversation), "messages": messages.get(conversation.id, [])}
            for conversation in conversations
        ],
        "outbox": rows(
            OutboxMessage,
            OutboxMessage.identity_id.in_(identity_ids),
            OutboxMessage.conversation_id.in_(conv_ids),
        ),
        "handoffs": rows(Handoff, Handoff.conversation_id.in_(conv_ids)),
        "requests": rows(
            PatientRequest,
            PatientRequest.patient_id == patient.id,
            PatientRequest.conversation_id.in_(conv_ids),
        ),
        "lab_orders": rows(LabOrder, LabOrder.patient_id == patient.id),
        "promises": [_row(promise) for promise in promises],
        "promise_updates": rows(PromiseUpdate, PromiseUpdate.promise_id.in_(promise_ids)),
        "notes": rows(StaffNote, StaffNote.patient_id == patient.id, StaffNote.conversation_id.in_(conv_ids)),
        "complaints": [{**_row(case), "actions": actions.get(case.id, [])} for case in cases],
        "incidents": rows(Incident, Incident.conversation_id.in_(conv_ids)),
        "audit": rows(AuditEvent, AuditEvent.patient_id == patient.id),
    }
    counts = {key: len(value) for key, value in data.items() if isinstance(value, list)}
    audit.record(
        session=session,
        actor_kind=actor_kind,
        actor_id=actor_id,
        action="patient.export",
        subject_type="patient",
        subject_id=patient.id,
        patient_id=patient.id,
        details=counts,
    )
    return data


def do_erase_patient(
    *,
    session: Session,
    patient_id: int,
    actor_kind: str,
    actor_id: str | None = None,
    now: datetime | None = None,
) -> EraseReport:
    """Erase one patient's personal data, keeping ids, times and the audit trail; the erasure is audited."""
    now = now or utcnow()
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise PrivacyError(f"no patient with id {patient_id}")
    scope = _scope(session, patient_id)
    conv_ids, identity_ids = scope.conversation_ids, scope.identity_ids

    phone = patient.phone
    patient.name, patient.preferred_name, patient.date_of_birth = ERASED_NAME, None, None
    patient.phone, patient.external_id, patient.notes = None, None, ""
    identities = session.scalars(select(ChannelIdentity).where(ChannelIdentity.id.in_(identity_ids))).all()
    for identity in identities:
        # UNIQUE(channel, address): a per-row placeholder; a later text from the same number is a stranger.
        identity.address, identity.linked_phone = f"erased-{identity.id}", None
    # A family line that was theirs and another patient's is now the other patient's alone.
    do_follow_phone_file(session=session, phones=[phone])
    conversations = session.execute(
        update(Conversation).where(Conversation.id.in_(conv_ids)).values(slots={}, active_form=None)
    ).rowcount
    # Unprocessed texts are closed too: there is nobody left to answer.
    session.execute(
        update(Message)
        .where(
            Message.conversation_id.in_(conv_ids),
            Message.direction == Direction.IN,
            Message.processed_at.is_(None),
        )
        .values(processed_at=now, route="silent")
    )
    messages = session.execute(
        update(Message)
        .where(Message.conversation_id.in_(conv_ids), or_(Message.body.is_not(None), Message.media.is_not(None)))
        .values(body=None, media=None)
    ).rowcount
    outbox_scope = or_(
        OutboxMessage.identity_id.in_(identity_ids), OutboxMessage.conversation_id.in_(conv_ids)
    )
    session.execute(
        update(OutboxMessage)
        .where(outbox_scope, OutboxMessage.status.in_(OPEN_OUTBOX))
        .values(status=OutboxStatus.CANCELLED, error_code="erased", updated_at=now)
    )
    outbox = session.execute(update(OutboxMessage).where(outbox_scope).values(body=None, buttons=[])).rowcount
    # Telegram texts sent before its provider id became the message id alone hold "chat_id:message_id":
    # the chat id is the patient's address.
    session.execute(
        update(OutboxMessage)
        .where(outbox_scope, OutboxMessage.channel == Channel.TELEGRAM, OutboxMessage.provider_message_id.contains(":"))
        .values(provider_message_id=None)
    )
    requests = session.execute(
        update(PatientRequest)
        .where(or_(PatientRequest.patient_id == patient_id, PatientRequest.conversation_id.in_(conv_ids)))
        .values(details={})
    ).rowcount
    lab_orders = session.execute(
        update(LabOrder).where(LabOrder.patient_id == patient_id).values(test_name="")
    ).rowcount
    notes = session.execute(
        update(StaffNote)
        .where(or_(StaffNote.patient_id == patient_id, StaffNote.conversation_id.in_(conv_ids)))
        .values(body="")
    ).rowcount
    case_ids = list(
        session.scalars(
            select(ComplaintCase.id).where(
                or_(ComplaintCase.patient_id == patient_id, ComplaintCase.conversation_id.in_(conv_ids))
            )
        )
    )
    session.execute(update(ComplaintCase).where(ComplaintCase.id.in_(case_ids)).values(summary=""))
    session.execute(update(ComplaintAction).where(ComplaintAction.case_id.in_(case_ids)).values(body=""))
    incidents = session.execute(
        update(Incident)
        .where(Incident.conversation_id.in_(conv_ids))
        .values(explanation="", review_note=None)
    ).rowcount
    promises = session.execute(
        update(Promise)
        .where(
            or_(Promise.patient_id == patient_id, Promise.conversation_id.in_(conv_ids)),
            Promise.status == PromiseStatus.OPEN,
        )
        .values(status=PromiseStatus.CANCELLED)
    ).rowcount
    session.execute(
        delete(VerificationCode).where(
            or_(VerificationCode.patient_id == patient_id, VerificationCode.identity_id.in_(identity_ids))
        )
    )
    report = EraseReport(
        patient_id=patient_id,
        identities=len(identities),
        conversations=conversations,
        messages=messages,
        outbox=outbox,
        requests=requests,
        lab_orders=lab_orders,
        notes=notes,
        complaints=len(case_ids),
        incidents=incidents,
        promises_cancelled=promises,
    )
    audit.record(
        session=session,
        actor_kind=actor_kind,
        actor_id=actor_id,
        action="patient.erase",
        subject_type="patient",
        subject_id=patient_id,
        patient_id=patient_id,
        details={key: value for key, value in asdict(report).items() if key != "patient_id"},
    )
    return report


def do_purge_bodies(
    *, session: Session, days: int, actor_kind: str, actor_id: str | None = None, now: datetime | None = None
) -> PurgeReport:
    """Clear message and outbox bodies older than `days`, keeping every row's metadata; the purge is audited."""
    if days < 1:
        raise PrivacyError("retention must be at least 1 day")
    cutoff = (now or utcnow()) - timedelta(days=days)
    # Only settled rows: an unprocessed inbound text still needs its body, a pending text still needs sending.
    settled = or_(Message.direction == Direction.OUT, Message.processed_at.is_not(None))
    messages = session.execute(
        update(Message)
        .where(Message.created_at < cutoff, or_(Message.body.is_not(None), Message.media.is_not(None)), settled)
        .values(body=None, media=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    outbox = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.created_at < cutoff,
            OutboxMessage.body.is_not(None),
            OutboxMessage.status.in_(FINAL_OUTBOX),
        )
        .values(body=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    report = PurgeReport(cutoff=cutoff, messages=messages, outbox=outbox)
    audit.record(
        session=session,
        actor_kind=actor_kind,
        actor_id=actor_id,
        action="retention.purge",
        details={"days": days, "cutoff": cutoff.isoformat(), "messages": messages, "outbox": outbox},
    )
    return report
