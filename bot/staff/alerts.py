"""In-app alerts for staff: emergencies and hand-offs past their response time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.channels import outbox
from bot.config import get_settings
from bot.conversations.flows import do_raise_owed_alerts
from bot.conversations.models import Conversation, Handoff, HandoffReason
from bot.db import session_scope, utcnow
from bot.patients.service import get_or_create_identity
from bot.staff import audit
from bot.staff.messages import alert_telegram_text
from bot.staff.models import AlertKind, Role, StaffAlert

log = logging.getLogger(__name__)

SWEEP_SECONDS = 60.0
# Roles that may see conversations handed off for a medical reason.
MEDICAL_ROLES = frozenset({Role.ADMIN, Role.CLINICIAN})


class AlertNotFound(LookupError):
    """No such alert, or not one this role may see."""


def open_alert_count(*, session: Session) -> int:
    """Return how many alerts no one has acknowledged yet."""
    return (
        session.scalar(
            select(func.count()).select_from(StaffAlert).where(StaffAlert.acknowledged_at.is_(None))
        )
        or 0
    )


def _queue_telegram(*, session: Session, alert: StaffAlert) -> bool:
    """Queue the staff group's copy of an alert; return False when no staff group is configured."""
    settings = get_settings()
    if not (settings.telegram_staff_chat_id and settings.telegram_enabled):
        return False
    identity = get_or_create_identity(
        session=session, channel="telegram", address=settings.telegram_staff_chat_id
    )
    link = f"{settings.public_url.rstrip('/')}/staff/conversations/{alert.conversation_id}"
    outbox.enqueue(
        session=session,
        key=f"alert:{alert.id}:telegram",
        identity=identity,
        body=alert_telegram_text(kind=alert.kind, priority=alert.priority, link=link),
        priority=100 if alert.kind == AlertKind.EMERGENCY else 50,
    )
    return True


def _queue_copy_or_owe(*, session: Session, alert: StaffAlert) -> None:
    """Queue an alert's staff group copy in a savepoint; failing, mark the copy owed for the alert sweep.

    The in-app alert is the one the inbox shows: a broken staff group (a bad setting, an identity that
    cannot be written) must never roll it back with its copy.
    """
    try:
        with session.begin_nested():
            _queue_telegram(session=session, alert=alert)
    except Exception:
        log.exception("the staff group copy of alert %s (%s) could not be queued; the alert sweep retries it",
                      alert.id, alert.kind)  # fmt: skip
        alert.copy_owed_at = utcnow()


def do_queue_owed_copies(*, session: Session, now: datetime) -> int:
    """Queue the staff group copies of alerts whose first try failed; return how many were queued.

    Each in a savepoint that also clears the alert's mark, so a copy is queued once (its outbox key is
    the alert's) and one that fails again stays owed without holding back the others. Were the staff
    group since removed from the settings, there is nothing to send and the mark is cleared.
    """
    query = select(StaffAlert).where(StaffAlert.copy_owed_at.is_not(None)).order_by(StaffAlert.id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    queued = 0
    for alert in session.scalars(query).all():
        alert_id, owed_since = alert.id, alert.copy_owed_at
        try:
            with session.begin_nested():
                sent = _queue_telegram(session=session, alert=alert)
                alert.copy_owed_at = None
        except Exception:
            log.exception("the staff group copy of alert %s (owed since %s) failed again; will retry",
                          alert_id, owed_since)  # fmt: skip
            continue
        if sent:
            log.warning("the staff group copy of alert %s is queued, late", alert_id)
            queued += 1
    return queued


def do_raise_alert(
    *, session: Session, kind: AlertKind, handoff_id: int, message_id: int | None = None, priority: int | None = None
) -> StaffAlert | None:
    """Raise an alert for a hand-off; return None when it was raised before.

    With `message_id` the alert is that message's: each emergency message alerts staff once, however
    many alerts its hand-off already has (a new emergency after staff acknowledged the first must page
    them again). Without it, one alert per hand-off and kind (an overdue hand-off). The alert takes the
    hand-off's priority, or `priority` when that is higher.
    """
    same = StaffAlert.message_id == message_id if message_id is not None else StaffAlert.handoff_id == handoff_id
    unkeyed = StaffAlert.message_id.is_(None) if message_id is None else true()
    exists = session.scalars(select(StaffAlert.id).where(StaffAlert.kind == kind, same, unkeyed)).first()
    if exists is not None:
        return None
    handoff = session.get(Handoff, handoff_id)
    if handoff is None:
        raise LookupError(f"handoff {handoff_id} not found")
    alert = StaffAlert(
        kind=kind,
        conversation_id=handoff.conversation_id,
        handoff_id=handoff.id,
        message_id=message_id,
        priority=max(handoff.priority, priority or 0),
    )
    try:
        with session.begin_nested():
            session.add(alert)
    except IntegrityError:
        # Another process raised it between the check and the insert.
        return None
    _queue_copy_or_owe(session=session, alert=alert)
    audit.record(
        session=session,
        actor_kind="system",
        action=f"alert.{kind}",
        subject_type="staff_alert",
        subject_id=alert.id,
        details={"handoff_id": handoff.id, "conversation_id": handoff.conversation_id, "message_id": message_id},
    )
    log.warning("alert %s (%s) for handoff %s (message %s)", alert.id, kind, handoff.id, message_id)
    return alert


def sweep_overdue_handoffs(*, session: Session, now: datetime) -> int:
    """Alert once for every open hand-off past its due time with no staff reply; return how many."""
    query = (
        select(Handoff.id)
        .outerjoin(
            StaffAlert,
            and_(StaffAlert.handoff_id == Handoff.id, StaffAlert.kind == AlertKind.SLA_BREACH),
        )
        .where(
            Handoff.resolved_at.is_(None),
            Handoff.first_response_at.is_(None),
            Handoff.due_at < now,
            StaffAlert.id.is_(None),
        )
        .order_by(Handoff.id)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Handoff)
    raised = 0
    for handoff_id in session.scalars(query).all():
        if do_raise_alert(session=session, kind=AlertKind.SLA_BREACH, handoff_id=handoff_id) is not None:
            raised += 1
    return raised


_SLA_SWEEPS = (
    ("owed alerts", do_raise_owed_alerts),
    ("overdue hand-offs", sweep_overdue_handoffs),
    # Last: it also takes the copies the sweeps above failed to queue.
    ("owed staff group copies", do_queue_owed_copies),
)


def sla_sweep_pass() -> int:
    """Sweep once: alerts messages still owe staff, overdue hand-offs, then the staff group copies alerts
    still owe; and let go of status callbacks kept too long for texts never recorded (the outbox's own
    housekeeping, run wherever a sender runs). Return how many alerts were raised or copies queued.
    """
    done = 0
    for name, sweep in _SLA_SWEEPS:
        # Each in its own transaction: one failing never holds back the others.
        try:
            with session_scope() as session:
                done += sweep(session=session, now=utcnow())
        except Exception:
            log.exception("sla sweep of %s failed; will retry", name)
    if done:
        log.info("sla sweep raised or queued %s alert(s)", done)
    _expire_early_statuses()
    return done


def run_sla_sweeps(
    stop: threading.Event, *, on_queued: Callable[[], None] | None = None, interval: float = SWEEP_SECONDS
) -> None:
    """Sweep every interval until stopped (`sla_sweep_pass`), beside an app's sender.

    Wakes the sender when alerts were raised or copies queued (the copies are queued texts).
    """
    while not stop.is_set():
        if sla_sweep_pass() and on_queued is not None:
            on_queued()
        stop.wait(interval)


def _expire_early_statuses() -> None:
    """Let go of the status callbacks kept for texts never recorded (outbox.EARLY_STATUS_KEPT)."""
    try:
        with session_scope() as session:
            expired = outbox.expire_early_statuses(session=session, now=utcnow())
    except Exception:
        log.exception("sweep of kept status callbacks failed; will retry")
        return
    if expired:
        log.info("let go of %s status callback(s) kept for texts never recorded", expired)


@dataclass(frozen=True)
class AlertRow:
    """An unacknowledged alert as the alerts page lists it."""

    id: int
    kind: str
    priority: int
    conversation_id: int
    reason: str | None
    created_at: datetime


def _visible(role: Role) -> ColumnElement[bool]:
    if role in MEDICAL_ROLES:
        return true()
    return func.coalesce(Conversation.reason, "") != HandoffReason.MEDICAL


def open_alerts(*, session: Session, role: Role) -> list[AlertRow]:
    """Return the unacknowledged alerts this role may see, most urgent and oldest first."""
    rows = session.execute(
        select(StaffAlert, Conversation.reason)
        .join(Conversation, Conversation.id == StaffAlert.conversation_id)
        .where(StaffAlert.acknowledged_at.is_(None), _visible(role))
        .order_by(StaffAlert.priority.desc(), StaffAlert.created_at, StaffAlert.id)
    ).all()
    return [
        AlertRow(alert.id, alert.kind, alert.priority, alert.conversation_id, reason, alert.created_at)
        for alert, reason in rows
    ]


def do_acknowledge_alert(*, session: Session, alert_id: int, staff_id: int, role: Role) -> StaffAlert:
    """Mark an alert seen by a staff member; acknowledging twice keeps the first."""
    found = session.execute(
        select(StaffAlert, Conversation.reason, Conversation.patient_id)
        .join(Conversation, Conversation.id == StaffAlert.conversation_id)
        .where(StaffAlert.id == alert_id)
    ).first()
    if found is None:
        raise AlertNotFound(f"alert {alert_id} not found")
    alert, reason, patient_id = found
    if reason == HandoffReason.MEDICAL and role not in MEDICAL_ROLES:
        raise PermissionError("medical conversations are for clinicians and admins")
    if alert.acknowledged_at is None:
        alert.acknowledged_at, alert.acknowledged_by_id = utcnow(), staff_id
    audit.record(
        session=session,
        actor_kind="staff",
        actor_id=staff_id,
        action="alert.acknowledged",
        subject_type="staff_alert",
        subject_id=alert.id,
        patient_id=patient_id,
        details={"kind": alert.kind, "conversation_id": alert.conversation_id},
    )
    return alert
