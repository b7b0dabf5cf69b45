"""Append to the audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from bot.staff.models import AuditEvent


def patient_of(session: Session, conversation: Any) -> int | None:
    """Return the patient a conversation's data is about, for the trail's patient_id.

    The conversation's own patient, else its sender's: an SMS chat whose patient is known only through
    the sender's phone still belongs in that patient's trail.
    """
    if conversation is None:
        return None
    if conversation.patient_id is not None:
        return conversation.patient_id
    from bot.patients.models import ChannelIdentity

    identity = session.get(ChannelIdentity, conversation.identity_id)
    return identity.patient_id if identity is not None else None


def record(
    *,
    session: Session,
    actor_kind: str,
    action: str,
    actor_id: str | int | None = None,
    subject_type: str | None = None,
    subject_id: str | int | None = None,
    details: dict[str, Any] | None = None,
    patient_id: int | None = None,
    outcome: str = "ok",
) -> AuditEvent:
    """Add an audit event in the caller's transaction."""
    event = AuditEvent(
        actor_kind=actor_kind,
        actor_id=None if actor_id is None else str(actor_id),
        action=action,
        subject_type=subject_type,
        subject_id=None if subject_id is None else str(subject_id),
        details=details or {},
        patient_id=patient_id,
        outcome=outcome,
    )
    session.add(event)
    return event
