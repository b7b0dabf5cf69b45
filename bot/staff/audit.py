"""Append to the audit trail."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from bot.staff.models import AuditEvent


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
