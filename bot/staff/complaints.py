"""Complaint cases: opened from a complaint hand-off, worked by staff, resolved by telling the patient what was done."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.clinic_settings import load_clinic
from bot.config import get_settings
from bot.conversations.models import (
    Conversation,
    ConversationState,
    Handoff,
    HandoffReason,
    Message,
    Route,
)
from bot.conversations.rendering import clinic_values
from bot.db import utcnow
from bot.promises.flows import do_close_promises
from bot.promises.models import Promise, PromiseKind, PromiseStatus
from bot.staff import audit
from bot.staff.models import ComplaintAction, ComplaintCase, ComplaintStatus, StaffUser
from bot.staff.outgoing import ClinicalContentError, do_tell_patient
from bot.when import render_due

if TYPE_CHECKING:
    from bot.conversations.domain import Domain

log = logging.getLogger(__name__)

CATEGORIES = (
    "care",
    "staff_conduct",
    "waiting_time",
    "billing",
    "communication",
    "facilities",
    "privacy",
    "other",
)
ACTIVE = (ComplaintStatus.OPEN, ComplaintStatus.INVESTIGATING)


class CaseError(ValueError):
    """A complaint action was refused; the message says why and `status` is the HTTP answer."""

    def __init__(self, message: str, *, status: int = 400, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # for the audit trail, where there is a short name for it


def render_patient_text(
    *, session: Session, domain: Domain, key: str, conversation: Conversation, values: dict[str, Any]
) -> str:
    """Render a dialogue response for a conversation's patient with the clinic's placeholders."""
    clinic = load_clinic(session=session)
    lang = conversation.language or "en"
    base = clinic_values(clinic=clinic, lang=lang, patient=None, now=utcnow())
    return domain.render(key, lang=lang, slots={}, values={**base, **values})


def do_queue_staff_text(
    *, session: Session, conversation: Conversation, staff_id: int, body: str, key: str, response_key: str | None = None
) -> Message | None:
    """Store a staff-authored text in the conversation and queue it once under key; None if queued before.

    Raises CaseError (400) when the text would name the patient's tests by SMS or Telegram.
    """
    try:
        return do_tell_patient(session=session, conversation=conversation, staff_id=staff_id, body=body, key=key,
                               response_key=response_key, route=Route.ANSWER)  # fmt: skip
    except ClinicalContentError as named:
        raise CaseError(str(named), reason="names_tests") from None


def _complaint_promise(*, session: Session, case: ComplaintCase) -> Promise | None:
    subject = ("handoff", case.handoff_id) if case.handoff_id is not None else ("complaint", case.id)
    return session.scalars(
        select(Promise).where(
            Promise.kind == PromiseKind.COMPLAINT_FOLLOWUP,
            Promise.subject_type == subject[0],
            Promise.subject_id == subject[1],
        )
    ).first()


def _ensure_promise(*, session: Session, case: ComplaintCase, conversation: Conversation) -> None:
    """Record the follow-up promise the acknowledgement makes, unless the hand-off already did."""
    if case.due_at is None or _complaint_promise(session=session, case=case) is not None:
        return
    subject_type, subject_id = (
        ("handoff", case.handoff_id) if case.handoff_id is not None else ("complaint", case.id)
    )
    if case.handoff_id is not None:
        reply = session.scalars(
            select(Promise)
            .where(
                Promise.kind == PromiseKind.HANDOFF_REPLY,
                Promise.subject_type == "handoff",
                Promise.subject_id == case.handoff_id,
                Promise.status == PromiseStatus.OPEN,
            )
            .with_for_update()
        ).first()
        if reply is not None:
            # The hand-off became a complaint: its reply promise is now the follow-up, one commitment.
            # A second promise beside it sent the patient two late updates a day about one conversation.
            reply.kind, reply.reason_key = PromiseKind.COMPLAINT_FOLLOWUP, "handoff_complaint"
            reply.due_at = case.due_at
            return
    promise = Promise(
        patient_id=conversation.patient_id,
        identity_id=conversation.identity_id,
        conversation_id=conversation.id,
        kind=PromiseKind.COMPLAINT_FOLLOWUP,
        subject_type=subject_type,
        subject_id=subject_id,
        reason_key="handoff_complaint",
        due_at=case.due_at,
        status=PromiseStatus.OPEN,
    )
    try:
        with session.begin_nested():
            session.add(promise)
    except IntegrityError:
        pass  # recorded by a concurrent request


def case_for_handoff(*, session: Session, handoff_id: int) -> ComplaintCase | None:
    """Return the case opened for a hand-off, if any."""
    return session.scalars(select(ComplaintCase).where(ComplaintCase.handoff_id == handoff_id)).first()


def do_open_case(*, session: Session, handoff_id: int, staff_id: int | None = None) -> ComplaintCase:
    """Open the one case of a complaint hand-off (again: return the existing one)."""
    existing = case_for_handoff(session=session, handoff_id=handoff_id)
    if existing is not None:
        return existing
    handoff = session.get(Handoff, handoff_id)
    if handoff is None:
        raise LookupError(f"handoff {handoff_id} not found")
    conversation = session.get(Conversation, handoff.conversation_id)
    assert conversation is not None
    if handoff.reason == HandoffReason.COMPLAINT:
        due_at = handoff.due_at
    else:
        # Staff opened a complaint on a chat handed off for something else: give it the complaint time.
        clinic = load_clinic(session=session)
        due_at = clinic.calendar.add_working_minutes(utcnow(), get_settings().sla_complaint_minutes)
    case = ComplaintCase(
        conversation_id=conversation.id,
        handoff_id=handoff.id,
        patient_id=conversation.patient_id,
        summary="",
        category="other",
        status=ComplaintStatus.OPEN,
        due_at=due_at,
    )
    try:
        with session.begin_nested():
            session.add(case)
    except IntegrityError:
        found = case_for_handoff(session=session, handoff_id=handoff_id)
        assert found is not None
        return found
    _ensure_promise(session=session, case=case, conversation=conversation)
    audit.record(
        session=session,
        actor_kind="bot" if staff_id is None else "staff",
        actor_id=staff_id,
        action="complaint.opened",
        subject_type="complaint_case",
        subject_id=case.id,
        patient_id=audit.patient_of(session, conversation),
        details={"handoff_id": handoff.id, "conversation_id": conversation.id},
    )
    log.info("complaint case %s opened (handoff %s)", case.id, handoff.id)
    return case


@dataclass(frozen=True)
class OpenedCase:
    """The case staff opened or found, and whether the patient was sent an acknowledgement now."""

    case_id: int
    acknowledged: bool


def do_open_case_for_conversation(
    *, session: Session, domain: Domain, conversation_id: int, staff_id: int
) -> OpenedCase:
    """Open a complaint case on a conversation by hand and tell the patient when they will hear back."""
    from bot.conversations import flows  # flows imports this module's caller chain; import late

    # Locked before the check: of two clicks at once, the second waits here and then finds the first's
    # case, instead of opening a second hand-off and case and acknowledging twice (the engine routing
    # this chat locks the same row). Reloaded: the caller may hold it from before the lock.
    conversation = session.scalars(
        select(Conversation).where(Conversation.id == conversation_id).with_for_update().execution_options(
            populate_existing=True)
    ).first()  # fmt: skip
    if conversation is None:
        raise CaseError(f"conversation {conversation_id} not found", status=404)
    open_case = session.scalars(
        select(ComplaintCase).where(
            ComplaintCase.conversation_id == conversation.id, ComplaintCase.status.in_(ACTIVE)
        )
    ).first()
    if open_case is not None:
        return OpenedCase(open_case.id, acknowledged=False)
    if conversation.state == ConversationState.CLOSED:
        raise CaseError(
            "This conversation is closed. Open the patient's current conversation instead.", status=409
        )
    result = flows.do_handoff(
        session=session, conversation_id=conversation.id, reason=HandoffReason.COMPLAINT
    )
    case = do_open_case(session=session, handoff_id=result.handoff_id, staff_id=staff_id)
    handoff = session.get(Handoff, result.handoff_id)
    assert handoff is not None and case.due_at is not None
    clinic = load_clinic(session=session)
    lang = conversation.language or "en"
    # Complaints go to the practice manager, even on a chat first handed to another team.
    team = render_patient_text(
        session=session, domain=domain, key="utter_team_manager", conversation=conversation, values={}
    )
    due = render_due(due=case.due_at, now=utcnow(), tz=clinic.calendar.tz, lang=lang)
    body = render_patient_text(
        session=session, domain=domain, key="utter_handoff_complaint", conversation=conversation,
        values={"team": team, "due": due},
    )  # fmt: skip
    sent = do_queue_staff_text(
        session=session, conversation=conversation, staff_id=staff_id, body=body,
        key=f"complaint-ack:{case.id}", response_key="utter_handoff_complaint",
    )  # fmt: skip
    # The hand-off opened the case as the bot would; this row says which staff member asked for it.
    audit.record(
        session=session,
        actor_kind="staff",
        actor_id=staff_id,
        action="complaint.opened_by_staff",
        subject_type="complaint_case",
        subject_id=case.id,
        patient_id=audit.patient_of(session, conversation),
        details={"message_id": sent.id if sent else None, "handoff_id": handoff.id},
    )
    return OpenedCase(case.id, acknowledged=sent is not None)


def get_case(*, session: Session, case_id: int) -> ComplaintCase:
    """Return a case or refuse with 404."""
    case = session.get(ComplaintCase, case_id)
    if case is None:
        raise CaseError(f"complaint case {case_id} not found", status=404)
    return case


def list_cases(*, session: Session, statuses: tuple[str, ...]) -> list[tuple[ComplaintCase, Conversation]]:
    """Return cases in these statuses with their conversations, oldest first."""
    return [
        (case, conversation)
        for case, conversation in session.execute(
            select(ComplaintCase, Conversation)
            .join(Conversation, Conversation.id == ComplaintCase.conversation_id)
            .where(ComplaintCase.status.in_(statuses))
            .order_by(ComplaintCase.opened_at, ComplaintCase.id)
        ).tuples()
    ]


def actions_for(*, session: Session, case_id: int) -> list[tuple[ComplaintAction, str]]:
    """Return a case's recorded actions with who recorded them, in order."""
    return [
        (action, name)
        for action, name in session.execute(
            select(ComplaintAction, StaffUser.name)
            .join(StaffUser, StaffUser.id == ComplaintAction.staff_id)
            .where(ComplaintAction.case_id == case_id)
            .order_by(ComplaintAction.id)
        ).tuples()
    ]


def _audit(session: Session, case: ComplaintCase, staff_id: int, action: str, **details: Any) -> None:
    audit.record(
        session=session,
        actor_kind="staff",
        actor_id=staff_id,
        action=action,
        subject_type="complaint_case",
        subject_id=case.id,
        patient_id=case.patient_id or audit.patient_of(session, session.get(Conversation, case.conversation_id)),
        details=details,
    )


def _require_active(case: ComplaintCase) -> None:
    if case.status == ComplaintStatus.RESOLVED:
        raise CaseError("This complaint is already resolved.", status=409)


def do_update_case(
    *, session: Session, case_id: int, staff_id: int, summary: str, category: str, owner_id: int | None
) -> ComplaintCase:
    """Change a case's summary, category and owner."""
    case = get_case(session=session, case_id=case_id)
    _require_active(case)
    if category not in CATEGORIES:
        raise CaseError(f"Category must be one of: {', '.join(CATEGORIES)}.")
    if owner_id is not None:
        owner = session.get(StaffUser, owner_id)
        if owner is None or owner.disabled_at is not None:
            raise CaseError("The owner must be an active staff member.")
    case.summary, case.category, case.owner_id = summary.strip(), category, owner_id
    _audit(session, case, staff_id, "complaint.updated", category=category, owner_id=owner_id)
    return case


def do_set_investigating(*, session: Session, case_id: int, staff_id: int) -> ComplaintCase:
    """Move an open case to investigating."""
    case = get_case(session=session, case_id=case_id)
    _require_active(case)
    case.status = ComplaintStatus.INVESTIGATING
    _audit(session, case, staff_id, "complaint.investigating")
    return case


def do_record_action(*, session: Session, case_id: int, staff_id: int, body: str) -> ComplaintAction:
    """Record one thing staff did about a complaint."""
    case = get_case(session=session, case_id=case_id)
    _require_active(case)
    text = body.strip()
    if not text:
        raise CaseError("Describe the action taken.")
    action = ComplaintAction(case_id=case.id, staff_id=staff_id, body=text)
    session.add(action)
    session.flush()
    _audit(session, case, staff_id, "complaint.action_recorded", action_id=action.id)
    return action


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def resolution_draft(*, session: Session, domain: Domain, case_id: int, staff_id: int) -> str:
    """Return the resolution message prefilled from the recorded actions, for staff to edit."""
    case = get_case(session=session, case_id=case_id)
    conversation = session.get(Conversation, case.conversation_id)
    staff = session.get(StaffUser, staff_id)
    assert conversation is not None and staff is not None
    actions = " ".join(_sentence(action.body) for action, _ in actions_for(session=session, case_id=case.id))
    return render_patient_text(
        session=session, domain=domain, key="utter_complaint_resolved", conversation=conversation,
        values={"actions": actions, "staff_name": staff.name},
    )  # fmt: skip


def do_resolve_case(*, session: Session, case_id: int, staff_id: int, message: str) -> ComplaintCase:
    """Resolve a case: send the patient what was done, keep the follow-up promise, close the case."""
    case = session.scalars(select(ComplaintCase).where(ComplaintCase.id == case_id).with_for_update()).first()
    if case is None:
        raise CaseError(f"complaint case {case_id} not found", status=404)
    _require_active(case)
    if not actions_for(session=session, case_id=case.id):
        raise CaseError("Record at least one action taken before resolving.")
    body = message.strip()
    if not body:
        raise CaseError("Write the message the patient will receive.")
    conversation = session.get(Conversation, case.conversation_id)
    assert conversation is not None
    sent = do_queue_staff_text(
        session=session, conversation=conversation, staff_id=staff_id, body=body,
        key=f"complaint-resolved:{case.id}", response_key="utter_complaint_resolved",
    )  # fmt: skip
    if sent is None:
        raise CaseError("This complaint is already resolved.", status=409)
    now = utcnow()
    case.status, case.resolved_at, case.resolved_by_id = ComplaintStatus.RESOLVED, now, staff_id
    case.resolution_message_id = sent.id
    promise = _complaint_promise(session=session, case=case)
    if promise is not None:
        do_close_promises(session=session, promises=[promise], status=PromiseStatus.KEPT, at=now)
    _audit(session, case, staff_id, "complaint.resolved", message_id=sent.id,
           promise_id=promise.id if promise else None)  # fmt: skip
    log.info("complaint case %s resolved (message %s)", case.id, sent.id)
    return case


def is_overdue(case: ComplaintCase, *, now: datetime) -> bool:
    """Return whether a case is past its promised follow-up time and not resolved."""
    return case.status != ComplaintStatus.RESOLVED and case.due_at is not None and case.due_at < now
