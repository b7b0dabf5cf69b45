"""Open disclosure: a wrong message is corrected to the patient, recorded as an incident, and reviewed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from bot.conversations.models import Author, Conversation, Direction, Message
from bot.db import utcnow
from bot.staff import audit
from bot.staff.complaints import CaseError, do_queue_staff_text, render_patient_text
from bot.staff.models import Incident, ReviewStatus, StaffUser

if TYPE_CHECKING:
    from bot.conversations.domain import Domain

log = logging.getLogger(__name__)

CORRECTABLE_AUTHORS = (Author.BOT, Author.STAFF)
# Stands in for the staff member's sentence while the template is split for the form.
_SLOT = "\x00correction\x00"


class CorrectionError(ValueError):
    """A correction was refused; the message says why and `status` is the HTTP answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def correctable_message(*, session: Session, message_id: int) -> tuple[Message, Conversation]:
    """Return an outbound bot or staff message and its conversation, or refuse."""
    message = session.get(Message, message_id)
    if message is None:
        raise CorrectionError(f"message {message_id} not found", status=404)
    if message.direction != Direction.OUT or message.author_kind not in CORRECTABLE_AUTHORS:
        raise CorrectionError("Only a message the bot or staff sent to the patient can be marked wrong.")
    conversation = session.get(Conversation, message.conversation_id)
    assert conversation is not None
    return message, conversation


def incident_for(*, session: Session, message_id: int) -> Incident | None:
    """Return the incident recorded for a message, if it was corrected already."""
    return session.scalars(select(Incident).where(Incident.message_id == message_id)).first()


def correction_frame(*, session: Session, domain: Domain, conversation: Conversation) -> tuple[str, str]:
    """Return the apology before and the contact after the staff member's correction sentence."""
    text = render_patient_text(
        session=session, domain=domain, key="utter_correction", conversation=conversation,
        values={"correction": _SLOT},
    )  # fmt: skip
    before, _, after = text.partition(_SLOT)
    return before.rstrip(), after.lstrip()


def correction_text(*, session: Session, domain: Domain, conversation: Conversation, correction: str) -> str:
    """Return the full correction the patient receives."""
    return render_patient_text(
        session=session, domain=domain, key="utter_correction", conversation=conversation,
        values={"correction": correction.strip()},
    )  # fmt: skip


def _answered_intent(*, session: Session, message: Message) -> str | None:
    """Return the intent of the patient message a bot reply answered."""
    if message.author_kind != Author.BOT:
        return None
    return session.scalars(
        select(Message.intent)
        .where(
            Message.conversation_id == message.conversation_id,
            Message.direction == Direction.IN,
            Message.id < message.id,
        )
        .order_by(Message.id.desc())
        .limit(1)
    ).first()


def do_send_correction(
    *, session: Session, domain: Domain, message_id: int, staff_id: int, explanation: str, correction: str
) -> Incident:
    """Record the incident for a wrong message and send the patient one correction."""
    message, conversation = correctable_message(session=session, message_id=message_id)
    if not correction.strip():
        raise CorrectionError("Write the correction the patient will receive.")
    if incident_for(session=session, message_id=message.id) is not None:
        raise CorrectionError("This message was already corrected.", status=409)
    incident = Incident(
        message_id=message.id,
        conversation_id=conversation.id,
        reported_by_id=staff_id,
        explanation=explanation.strip(),
        author_kind=message.author_kind,
        intent=_answered_intent(session=session, message=message),
        response_key=message.response_key,
        review_status=ReviewStatus.PENDING,
    )
    try:
        with session.begin_nested():
            session.add(incident)
    except IntegrityError:
        raise CorrectionError("This message was already corrected.", status=409) from None
    body = correction_text(session=session, domain=domain, conversation=conversation, correction=correction)
    try:
        sent = do_queue_staff_text(
            session=session, conversation=conversation, staff_id=staff_id, body=body,
            key=f"correction:{incident.id}", response_key="utter_correction",
        )  # fmt: skip
    except CaseError as refused:  # the correction names the patient's tests
        raise CorrectionError(str(refused)) from None
    if sent is None:
        raise CorrectionError("This message was already corrected.", status=409)
    incident.correction_message_id = sent.id
    audit.record(
        session=session,
        actor_kind="staff",
        actor_id=staff_id,
        action="correction.sent",
        subject_type="incident",
        subject_id=incident.id,
        patient_id=audit.patient_of(session, conversation),
        details={
            "message_id": message.id,
            "correction_message_id": sent.id,
            "conversation_id": conversation.id,
        },
    )
    log.info("incident %s: message %s corrected by message %s", incident.id, message.id, sent.id)
    return incident


@dataclass(frozen=True)
class ReviewItem:
    """An incident as the content review page lists it."""

    id: int
    conversation_id: int
    author_kind: str
    intent: str | None
    response_key: str | None
    wrong_text: str | None
    explanation: str
    correction_text: str | None
    reported_by: str
    created_at: datetime


def pending_reviews(*, session: Session) -> list[ReviewItem]:
    """Return incidents waiting for content review, oldest first."""
    wrong = aliased(Message)
    fixed = aliased(Message)
    rows = session.execute(
        select(Incident, wrong.body, fixed.body, StaffUser.name)
        .join(wrong, wrong.id == Incident.message_id)
        .outerjoin(fixed, fixed.id == Incident.correction_message_id)
        .join(StaffUser, StaffUser.id == Incident.reported_by_id)
        .where(Incident.review_status == ReviewStatus.PENDING)
        .order_by(Incident.created_at, Incident.id)
    ).all()
    return [
        ReviewItem(i.id, i.conversation_id, i.author_kind, i.intent, i.response_key, wrong_body, i.explanation,
                   fixed_body, reporter, i.created_at)
        for i, wrong_body, fixed_body, reporter in rows
    ]  # fmt: skip


def do_mark_reviewed(*, session: Session, incident_id: int, staff_id: int, note: str) -> Incident:
    """Mark an incident's wording reviewed, with an optional note."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise CorrectionError(f"incident {incident_id} not found", status=404)
    if incident.review_status == ReviewStatus.REVIEWED:
        raise CorrectionError("This incident was already reviewed.", status=409)
    incident.review_status = ReviewStatus.REVIEWED
    incident.reviewed_by_id, incident.reviewed_at = staff_id, utcnow()
    incident.review_note = note.strip() or None
    conversation = session.get(Conversation, incident.conversation_id)
    audit.record(
        session=session,
        actor_kind="staff",
        actor_id=staff_id,
        action="incident.reviewed",
        subject_type="incident",
        subject_id=incident.id,
        patient_id=audit.patient_of(session, conversation),
        details={"message_id": incident.message_id},
    )
    return incident
