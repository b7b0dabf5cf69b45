"""Side effects of a conversation: hand-offs, emergencies, requests, complaints."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from bot.clinic_settings import ClinicContext, load_clinic
from bot.config import get_settings
from bot.conversations import service
from bot.conversations.models import (
    Conversation,
    ConversationState,
    Handoff,
    HandoffReason,
    PatientRequest,
    Priority,
    RequestKind,
    RequestStatus,
)
from bot.db import insert_or_ignore, utcnow
from bot.labs.service import orders_to_report
from bot.patients.models import ChannelIdentity, Patient
from bot.patients.service import verified_patient
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.staff import audit
from bot.staff.models import OwedAlert, OwedAlertKind

log = logging.getLogger(__name__)

PRIORITY = {
    HandoffReason.EMERGENCY: Priority.EMERGENCY,
    HandoffReason.COMPLAINT: Priority.COMPLAINT,
    HandoffReason.MEDICAL: Priority.MEDICAL,
    HandoffReason.HUMAN: Priority.NORMAL,
    HandoffReason.UNCLEAR: Priority.NORMAL,
}
TEAM = {
    HandoffReason.EMERGENCY: "nurse",
    HandoffReason.COMPLAINT: "manager",
    HandoffReason.MEDICAL: "nurse",
    HandoffReason.HUMAN: "front_desk",
    HandoffReason.UNCLEAR: "front_desk",
}


def _sla_minutes(reason: HandoffReason) -> int:
    settings = get_settings()
    return {
        HandoffReason.EMERGENCY: settings.sla_emergency_minutes,
        HandoffReason.COMPLAINT: settings.sla_complaint_minutes,
        HandoffReason.MEDICAL: settings.sla_medical_minutes,
        HandoffReason.HUMAN: settings.sla_human_minutes,
        HandoffReason.UNCLEAR: settings.sla_unclear_minutes,
    }[reason]


@dataclass(frozen=True)
class HandoffResult:
    """What the patient is told after a hand-off: which team, by when."""

    handoff_id: int
    team: str
    due_at: datetime
    already_open: bool


def _conversation(session: Session, conversation_id: int) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise LookupError(f"conversation {conversation_id} not found")
    return conversation


def _promise(
    *,
    session: Session,
    conversation: Conversation,
    kind: PromiseKind,
    subject_type: str,
    subject_id: int,
    reason_key: str,
    due_at: datetime,
) -> Promise:
    promise = Promise(
        patient_id=conversation.patient_id,
        identity_id=conversation.identity_id,
        conversation_id=conversation.id,
        kind=kind,
        subject_type=subject_type,
        subject_id=subject_id,
        reason_key=reason_key,
        due_at=due_at,
        status=PromiseStatus.OPEN,
    )
    session.add(promise)
    return promise


def do_handoff(*, session: Session, conversation_id: int, reason: HandoffReason) -> HandoffResult:
    """Pass a conversation to staff and record the reply time promised to the patient."""
    conversation = _conversation(session, conversation_id)
    clinic = load_clinic(session=session)
    now = utcnow()
    open_handoff = service.open_handoff(session=session, conversation_id=conversation.id)
    priority = PRIORITY[reason]
    if open_handoff is not None and open_handoff.priority >= priority:
        return HandoffResult(open_handoff.id, open_handoff.team, open_handoff.due_at, already_open=True)
    if reason is HandoffReason.EMERGENCY:
        # Emergencies are alerted around the clock, not in working time.
        due_at = now + timedelta(minutes=_sla_minutes(reason))
    else:
        due_at = clinic.calendar.add_working_minutes(now, _sla_minutes(reason))
    if open_handoff is None:
        new = Handoff(
            conversation_id=conversation.id, reason=reason, priority=priority, team=TEAM[reason], due_at=due_at
        )
        handoff = service.add_open_handoff(session=session, handoff=new)
        if handoff is not new:
            # Another writer opened the chat's hand-off since we looked: it is this one's, as if found above.
            open_handoff = handoff
            if open_handoff.priority >= priority:
                return HandoffResult(open_handoff.id, open_handoff.team, open_handoff.due_at, already_open=True)
    if open_handoff is not None:
        # Escalate the existing hand-off rather than queueing the chat twice.
        open_handoff.priority, open_handoff.reason, open_handoff.team = priority, reason, TEAM[reason]
        open_handoff.due_at = min(open_handoff.due_at, due_at)
        handoff = open_handoff
    if conversation.state == ConversationState.BOT:
        conversation.state = ConversationState.WAITING
    conversation.priority = max(conversation.priority, priority)
    conversation.reason = reason
    conversation.active_form = None
    conversation.clarify_streak = 0
    if reason is not HandoffReason.EMERGENCY and open_handoff is None:
        kind = PromiseKind.COMPLAINT_FOLLOWUP if reason is HandoffReason.COMPLAINT else PromiseKind.HANDOFF_REPLY
        _promise(
            session=session,
            conversation=conversation,
            kind=kind,
            subject_type="handoff",
            subject_id=handoff.id,
            reason_key=f"handoff_{reason}",
            due_at=due_at,
        )
    audit.record(
        session=session,
        actor_kind="bot",
        action="handoff.opened" if open_handoff is None else "handoff.escalated",
        subject_type="conversation",
        subject_id=conversation.id,
        details={"handoff_id": handoff.id, "reason": str(reason), "priority": int(priority)},
    )
    log.info("conversation %s handed off (%s, handoff %s)", conversation.id, reason, handoff.id)
    if reason is HandoffReason.COMPLAINT:
        # Imported late: bot.staff.complaints calls back into this module, so neither loads the other at import.
        from bot.staff.complaints import do_open_case

        do_open_case(session=session, handoff_id=handoff.id)
    return HandoffResult(handoff.id, handoff.team, handoff.due_at, already_open=False)


def emergency_response(kind: str | None) -> str:
    """Name the dialogue response with the instructions for an emergency of this kind."""
    # Self-harm adds the crisis line; every other kind gets the emergency number.
    return "utter_emergency_self_harm" if kind == "self_harm" else "utter_emergency"


def do_emergency(
    *, session: Session, conversation_id: int, kind: str | None, message_id: int | None = None
) -> HandoffResult:
    """Raise an urgent alert for staff; the caller sends the emergency instructions.

    `message_id` is the patient message that raised it: each emergency message alerts staff once.
    """
    result = do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.EMERGENCY)
    audit.record(
        session=session,
        actor_kind="bot",
        action="emergency.detected",
        subject_type="conversation",
        subject_id=conversation_id,
        details={"kind": kind, "handoff_id": result.handoff_id, "message_id": message_id},
    )
    # An alert staff tooling can page on; ids only.
    log.warning("EMERGENCY in conversation %s (kind %s, handoff %s)", conversation_id, kind, result.handoff_id)
    from bot.staff.alerts import do_raise_alert  # late, like do_open_case above
    from bot.staff.models import AlertKind

    do_raise_alert(session=session, kind=AlertKind.EMERGENCY, handoff_id=result.handoff_id, message_id=message_id)
    return result


def do_emergency_or_log(
    *, session: Session, conversation_id: int, kind: str | None, message_id: int | None = None
) -> HandoffResult | None:
    """Open the emergency hand-off and alert in a savepoint; on failure log it loudly and return None.

    The patient's instructions are queued in the same transaction: a failure here (a database error, an
    alert that cannot be written) must roll back only this bookkeeping, never cost the patient them.
    """
    try:
        with session.begin_nested():
            return do_emergency(session=session, conversation_id=conversation_id, kind=kind, message_id=message_id)
    except Exception:
        log.exception(
            "EMERGENCY ALERT FAILED in conversation %s (message %s, kind %s): instructions still sent; "
            "the alert sweep retries the alert",
            conversation_id,
            message_id,
            kind,
        )
        _owe_alert(session=session, conversation_id=conversation_id, message_id=message_id,
                   kind=OwedAlertKind.EMERGENCY, emergency_kind=kind)  # fmt: skip
        return None


def _owe_alert(
    *, session: Session, conversation_id: int, message_id: int | None, kind: OwedAlertKind, emergency_kind: str | None
) -> None:
    """Record, beside the patient's reply, the alert a message failed to raise, for the alert sweep.

    Never raises: the patient's reply in this transaction comes first. Should even this row fail to be
    written, the database is failing too and the alert is lost: logged at ERROR, as before.
    """
    try:
        with session.begin_nested():
            insert_or_ignore(
                session=session,
                model=OwedAlert,
                values={"message_id": message_id, "conversation_id": conversation_id, "kind": kind,
                        "emergency_kind": emergency_kind, "attempts": 0, "created_at": utcnow()},
                conflict=["message_id"],
            )  # fmt: skip
    except Exception:
        log.exception("the alert owed for message %s (conversation %s) could not be recorded", message_id, conversation_id)


def _open_handoff(session: Session, conversation_id: int) -> Handoff | None:
    return session.scalars(
        select(Handoff)
        .where(Handoff.conversation_id == conversation_id, Handoff.resolved_at.is_(None))
        .order_by(Handoff.id)
    ).first()


def _staff_handoff(*, session: Session, conversation_id: int) -> HandoffResult:
    """Return the open hand-off of a chat staff own, opening one for a nurse should it have none.

    Claiming a chat opens a hand-off, so a chat staff own has one; where it has none (a bot chat with a
    number that opted out, or a missing one), the message goes to a nurse, as a possible emergency does
    in a bot chat.
    """
    handoff = _open_handoff(session, conversation_id)
    if handoff is None:
        return do_handoff(session=session, conversation_id=conversation_id, reason=HandoffReason.MEDICAL)
    return HandoffResult(handoff.id, handoff.team, handoff.due_at, already_open=True)


def do_possible_emergency(*, session: Session, conversation_id: int, handoff_id: int, message_id: int | None) -> None:
    """Raise an urgent alert for a message the classifier read as an emergency (a chat staff own, an opt-out).

    The rules saw no emergency, so the hand-off is left as it is (its holder keeps the chat, and its
    team still sees it); the alert calls staff to the message, once per message.
    """
    audit.record(
        session=session,
        actor_kind="bot",
        action="emergency.possible",
        subject_type="conversation",
        subject_id=conversation_id,
        details={"handoff_id": handoff_id, "message_id": message_id},
    )
    log.warning("POSSIBLE EMERGENCY in conversation %s (handoff %s, message %s)", conversation_id, handoff_id, message_id)
    from bot.staff.alerts import do_raise_alert  # late, like do_open_case above
    from bot.staff.models import AlertKind

    do_raise_alert(session=session, kind=AlertKind.EMERGENCY, handoff_id=handoff_id, message_id=message_id,
                   priority=Priority.EMERGENCY)  # fmt: skip


def do_possible_emergency_or_log(
    *, session: Session, conversation_id: int, message_id: int | None
) -> HandoffResult | None:
    """Alert staff to a possible emergency in a chat they own (or from an opted-out number); return the
    hand-off the patient is told of, or None when it could not be read or opened.

    The hand-off and the alert are written in a savepoint: failing, they are logged loudly and owed to the
    alert sweep (which opens the hand-off and raises the alert later), and the patient's reply still goes.
    """
    try:
        with session.begin_nested():
            result = _staff_handoff(session=session, conversation_id=conversation_id)
            do_possible_emergency(
                session=session, conversation_id=conversation_id, handoff_id=result.handoff_id, message_id=message_id
            )
            return result
    except Exception:
        log.exception(
            "POSSIBLE EMERGENCY ALERT FAILED in conversation %s (message %s): reply still sent; "
            "the alert sweep retries the alert",
            conversation_id,
            message_id,
        )
        _owe_alert(session=session, conversation_id=conversation_id, message_id=message_id,
                   kind=OwedAlertKind.POSSIBLE_EMERGENCY, emergency_kind=None)  # fmt: skip
        return None


def do_raise_owed_alerts(*, session: Session, now: datetime) -> int:
    """Raise the alerts patient messages owe staff (their first try failed); return how many were raised.

    Each in a savepoint that also deletes its owed row: one that fails again is counted and retried on
    the next sweep, and never holds back the others.
    """
    query = select(OwedAlert).order_by(OwedAlert.id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    raised = 0
    for owed in session.scalars(query).all():
        owed_id, conversation_id, message_id = owed.id, owed.conversation_id, owed.message_id
        try:
            with session.begin_nested():
                if owed.kind == OwedAlertKind.POSSIBLE_EMERGENCY:
                    result = _staff_handoff(session=session, conversation_id=conversation_id)
                    do_possible_emergency(session=session, conversation_id=conversation_id,
                                          handoff_id=result.handoff_id, message_id=message_id)  # fmt: skip
                else:
                    do_emergency(session=session, conversation_id=conversation_id, kind=owed.emergency_kind,
                                 message_id=message_id)  # fmt: skip
                session.delete(owed)
        except Exception:
            owed.attempts += 1
            owed.last_attempt_at = now
            log.exception("the alert owed for message %s (conversation %s, owed %s) failed again (%s tries); "
                          "will retry", message_id, conversation_id, owed_id, owed.attempts)  # fmt: skip
            continue
        log.warning("the alert owed for message %s (conversation %s) is raised, late", message_id, conversation_id)
        raised += 1
    return raised


def do_log_complaint(*, session: Session, conversation_id: int) -> None:
    """Record that the patient complained; the hand-off that follows carries it to a manager."""
    conversation = _conversation(session, conversation_id)
    audit.record(
        session=session,
        actor_kind="bot",
        action="complaint.received",
        subject_type="conversation",
        subject_id=conversation.id,
    )


@dataclass(frozen=True)
class RequestResult:
    """A recorded request and when the patient will hear back."""

    request_id: int
    due_at: datetime


_INSERT_REQUEST = insert(PatientRequest.__table__).returning(PatientRequest.__table__.c.id)


def do_record_request(
    *, session: Session, conversation_id: int, kind: RequestKind, action: str | None, details: dict[str, Any]
) -> RequestResult:
    """Record a refill or appointment request for staff, with a promised answer time."""
    conversation = _conversation(session, conversation_id)
    clinic = load_clinic(session=session)
    settings = get_settings()
    minutes = settings.sla_refill_minutes if kind is RequestKind.REFILL else settings.sla_appointment_minutes
    due_at = clinic.calendar.add_working_minutes(utcnow(), minutes)
    # Written at once for its id, without flushing the session: a flush here, in the middle of a routing
    # batch, wrote the batch's other changes in a flush of their own (a sixth of routing's CPU). Only a
    # conversation not yet written needs one.
    if conversation.id is None:
        session.flush()
    request_id = session.connection().execute(_INSERT_REQUEST, {
        "kind": kind, "action": action, "details": {k: str(v)[:500] for k, v in details.items() if v is not None},
        "status": RequestStatus.OPEN, "due_at": due_at, "conversation_id": conversation.id,
        "identity_id": conversation.identity_id, "patient_id": conversation.patient_id, "created_at": utcnow(),
    }).scalar_one()  # fmt: skip
    _promise(
        session=session,
        conversation=conversation,
        kind=PromiseKind.REQUEST_ANSWER,
        subject_type="request",
        subject_id=request_id,
        reason_key=f"request_{kind}",
        due_at=due_at,
    )
    audit.record(
        session=session,
        actor_kind="bot",
        action="request.created",
        subject_type="request",
        subject_id=request_id,
        details={"kind": str(kind), "action": action, "conversation_id": conversation.id},
    )
    return RequestResult(request_id, due_at)


def do_clarify(*, session: Session, conversation_id: int) -> int:
    """Count a clarification; return how many in a row this conversation has had."""
    conversation = _conversation(session, conversation_id)
    conversation.clarify_streak += 1
    return conversation.clarify_streak


@dataclass(frozen=True)
class LabStatusLine:
    """One order's status as a patient may see it: no test name, no value."""

    order_id: int
    status: str  # pending | late | resulted
    ordered_at: datetime
    expected_by: datetime


def lab_status(*, session: Session, conversation_id: int) -> list[LabStatusLine] | None:
    """Return the verified patient's order statuses, or None when the sender is not verified."""
    conversation = _conversation(session, conversation_id)
    identity = session.get(ChannelIdentity, conversation.identity_id)
    # Checked again here, not only when the message was routed: this is the disclosure itself.
    patient = verified_patient(session=session, identity=identity) if identity is not None else None
    if patient is None:
        return None
    now = utcnow()
    lines = []
    for order in orders_to_report(session=session, patient_id=patient.id, now=now):
        status = "resulted" if order.status == "resulted" else ("late" if order.expected_by <= now else "pending")
        lines.append(LabStatusLine(order.id, status, order.ordered_at, order.expected_by))
    audit.record(
        session=session,
        actor_kind="bot",
        action="lab_status.disclosed",
        subject_type="patient",
        subject_id=patient.id,
        details={"conversation_id": conversation.id, "orders": [line.order_id for line in lines]},
    )
    return lines


def clinic_for(*, session: Session) -> ClinicContext:
    """Return the validated clinic."""
    return load_clinic(session=session)


def patient_for(*, session: Session, conversation_id: int) -> Patient | None:
    """Return the verified patient behind a conversation, if any."""
    conversation = _conversation(session, conversation_id)
    identity = session.get(ChannelIdentity, conversation.identity_id)
    return verified_patient(session=session, identity=identity) if identity is not None else None

