"""Read and write promise rows for the sweeps and the staff view."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Row,
    Select,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.channels.models import OutboxMessage, OutboxStatus
from bot.conversations.models import Conversation
from bot.db import among, utcnow
from bot.labs.models import LabOrder, LabStatus
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.promises.models import Promise, PromiseStatus, PromiseUpdate, SchedulerHeartbeat, UpdateKind

# Channels a status update can go out on (the terminal is a developer's console, not a patient's).
DELIVERABLE_CHANNELS = (Channel.SMS, Channel.TELEGRAM, Channel.WEBCHAT)
# Results older than this are no longer announced: the patient has surely heard by other means.
RESULTS_NOTICE_HORIZON = timedelta(days=14)
LAB_SUBJECT = "lab_order"
RESULTS_REASON = "results_ready"


@dataclass(frozen=True)
class IdentityRow:
    """The columns of a channel identity a sweep needs to choose where to write."""

    id: int
    patient_id: int | None
    channel: str
    address: str
    verified_at: datetime | None
    opted_out_at: datetime | None
    last_seen_at: datetime | None
    verification_method: str | None
    linked_phone: str | None


@dataclass(frozen=True)
class PatientRow:
    """The columns of a patient a sweep needs to word a text."""

    id: int
    name: str
    preferred_name: str | None
    phone: str | None
    language: str

    @property
    def display_name(self) -> str:
        """Return the name the patient asked to be called, or their first name."""
        return self.preferred_name or self.name.split()[0]


def _for_update(session: Session, query: Select, *of: object) -> Select:  # type: ignore[type-arg]
    """Claim the rows on PostgreSQL so a second sweeper skips them; SQLite has one writer anyway."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=of)  # type: ignore[arg-type]
    return query


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# -- the sweeps' claims ---------------------------------------------------------------------------


def claim_late(
    *, session: Session, now: datetime, after_id: int, limit: int
) -> Sequence[Row[tuple[int, int | None, int | None, int | None, str, datetime]]]:
    """Claim open promises, after an id, due by now with their next update due, or with a promised update due.

    A written update moves next_update_at to the next working day in the same transaction, so today's
    handled promises drop out here; UNIQUE(promise, day, kind) still guards a racing sweeper. (A NOT EXISTS
    on today's updates was the slow part: the planner keeps the table tiny in its stats all day.) An update
    already told the patient when the next one comes: that stands even when lab intake has since moved the
    due later.
    """
    # A lab promise whose order already resulted is kept by lab intake; never tell that patient "not back yet".
    finished_order = exists().where(
        LabOrder.id == Promise.subject_id,
        LabOrder.status.in_((LabStatus.RESULTED, LabStatus.CANCELLED)),
    )
    query = (
        select(
            Promise.id, Promise.patient_id, Promise.identity_id, Promise.conversation_id, Promise.reason_key,
            Promise.due_at,
        )
        .where(
            Promise.status == PromiseStatus.OPEN,
            or_(and_(Promise.next_update_at.is_(None), Promise.due_at <= now), Promise.next_update_at <= now),
            Promise.id > after_id,
            ~and_(Promise.subject_type == LAB_SUBJECT, finished_order),
        )
        .order_by(Promise.id)
        .limit(limit)
    )
    return session.execute(_for_update(session, query, Promise)).all()


def claim_escalations(
    *, session: Session, due_before: datetime, after_id: int, limit: int
) -> Sequence[Row[tuple[int, int | None]]]:
    """Claim open, not yet escalated promises due before an instant, after an id."""
    query = (
        select(Promise.id, Promise.patient_id)
        .where(
            Promise.status == PromiseStatus.OPEN,
            Promise.escalated_at.is_(None),
            Promise.due_at < due_before,
            Promise.id > after_id,
        )
        .order_by(Promise.id)
        .limit(limit)
    )
    return session.execute(_for_update(session, query, Promise)).all()


def claim_results(
    *, session: Session, now: datetime, today: date, after_id: int, limit: int
) -> Sequence[Row[tuple[int, int, int | None, int | None, int | None]]]:
    """Claim resulted orders whose patient was not told yet (nor call-listed today for it), after an id.

    Each row: order id, patient id, its lab promise's id, identity id and conversation id (None without a promise).
    """
    # Only a call-list entry for the results: one the late sweep made earlier today ("not back yet") must not
    # hold back the notice to a patient reachable since, nor leave staff calling about the wrong news.
    on_call_list = exists().where(
        PromiseUpdate.promise_id == Promise.id,
        PromiseUpdate.local_date == today,
        PromiseUpdate.kind == UpdateKind.CALL_LIST,
        PromiseUpdate.reason_key == RESULTS_REASON,
    )
    query = (
        select(LabOrder.id, LabOrder.patient_id, Promise.id, Promise.identity_id, Promise.conversation_id)
        .outerjoin(
            Promise,
            and_(
                Promise.subject_type == LAB_SUBJECT,
                Promise.subject_id == LabOrder.id,
                Promise.kind == "lab_result",
            ),
        )
        .where(
            LabOrder.status == LabStatus.RESULTED,
            LabOrder.result_notified_at.is_(None),
            or_(LabOrder.resulted_at.is_(None), LabOrder.resulted_at >= now - RESULTS_NOTICE_HORIZON),
            LabOrder.id > after_id,
            ~on_call_list,
        )
        .order_by(LabOrder.id)
        .limit(limit)
    )
    return session.execute(_for_update(session, query, LabOrder)).all()


# -- what a batch needs to know -------------------------------------------------------------------


def patients_by_id(*, session: Session, ids: Iterable[int]) -> dict[int, PatientRow]:
    """Return the named patients' wording columns by id."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(Patient.id, Patient.name, Patient.preferred_name, Patient.phone, Patient.language).where(
            among(session, Patient.id, wanted)
        )
    )
    return {row.id: PatientRow(*row) for row in rows}


_IDENTITY_COLUMNS = (
    ChannelIdentity.id,
    ChannelIdentity.patient_id,
    ChannelIdentity.channel,
    ChannelIdentity.address,
    ChannelIdentity.verified_at,
    ChannelIdentity.opted_out_at,
    ChannelIdentity.last_seen_at,
    ChannelIdentity.verification_method,
    ChannelIdentity.linked_phone,
)


def identities_of_patients(*, session: Session, patient_ids: Iterable[int]) -> dict[int, list[IdentityRow]]:
    """Return each patient's identities on deliverable channels."""
    wanted = sorted(set(patient_ids))
    grouped: dict[int, list[IdentityRow]] = {}
    if not wanted:
        return grouped
    rows = session.execute(
        select(*_IDENTITY_COLUMNS).where(
            among(session, ChannelIdentity.patient_id, wanted),
            ChannelIdentity.channel.in_(DELIVERABLE_CHANNELS),
        )
    )
    for row in rows:
        grouped.setdefault(row.patient_id, []).append(IdentityRow(*row))
    return grouped


def identities_by_id(*, session: Session, ids: Iterable[int]) -> dict[int, IdentityRow]:
    """Return identities by id."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = session.execute(select(*_IDENTITY_COLUMNS).where(among(session, ChannelIdentity.id, wanted)))
    return {row.id: IdentityRow(*row) for row in rows}


def identities_to_change(*, session: Session, ids: Iterable[int]) -> list[ChannelIdentity]:
    """Return identities as ORM objects, by id, for a flow that changes them."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    return list(session.scalars(select(ChannelIdentity).where(among(session, ChannelIdentity.id, wanted))))


def conversation_languages(*, session: Session, ids: Iterable[int]) -> dict[int, str]:
    """Return conversations' languages by id."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    # .all(), not the result itself: dict() takes anything with keys() for a mapping, and a Result has keys().
    return dict(
        session.execute(
            select(Conversation.id, Conversation.language).where(among(session, Conversation.id, wanted))
        )
        .tuples()
        .all()
    )


# -- writes ---------------------------------------------------------------------------------------


_PG_INSERT_TEXTS = text(
    """
    INSERT INTO outbox (key, channel, identity_id, conversation_id, body, buttons, priority, bypass_opt_out,
                        status, attempts, next_attempt_at, created_at, updated_at)
    SELECT t.key, t.channel, t.identity_id, t.conversation_id, t.body, CAST('[]' AS json), 0, false,
           'pending', 0, :at, :at, :at
    FROM unnest(CAST(:keys AS text[]), CAST(:channels AS text[]), CAST(:identities AS integer[]),
                CAST(:conversations AS integer[]), CAST(:bodies AS text[]))
         AS t(key, channel, identity_id, conversation_id, body)
    RETURNING id, key
    """
)
_PG_INSERT_UPDATES = text(
    """
    INSERT INTO promise_update (promise_id, local_date, kind, outbox_id, channel, reason_key, next_update_at,
                                created_at)
    SELECT t.promise_id, t.local_date, t.kind, t.outbox_id, t.channel, t.reason_key, t.next_update_at, t.created_at
    FROM unnest(CAST(:promises AS integer[]), CAST(:days AS date[]), CAST(:kinds AS text[]),
                CAST(:outboxes AS integer[]), CAST(:channels AS text[]), CAST(:reasons AS text[]),
                CAST(:nexts AS timestamptz[]), CAST(:created AS timestamptz[]))
         AS t(promise_id, local_date, kind, outbox_id, channel, reason_key, next_update_at, created_at)
    """
)


def insert_texts(*, session: Session, rows: list[dict[str, object]]) -> dict[str, int]:
    """Insert pending outbox rows in one statement; return their ids by key."""
    if not rows:
        return {}
    if _postgres(session):
        # One array per column: a multi-row VALUES with thousands of parameters costs more to build than to run.
        result = session.execute(
            _PG_INSERT_TEXTS,
            {
                "keys": [r["key"] for r in rows],
                "channels": [r["channel"] for r in rows],
                "identities": [r["identity_id"] for r in rows],
                "conversations": [r["conversation_id"] for r in rows],
                "bodies": [r["body"] for r in rows],
                "at": utcnow(),
            },
        )
        return {key: outbox_id for outbox_id, key in result.tuples()}
    result = session.execute(insert(OutboxMessage).returning(OutboxMessage.id, OutboxMessage.key), rows)
    return {key: outbox_id for outbox_id, key in result.tuples()}


def insert_updates(*, session: Session, rows: list[dict[str, object]]) -> None:
    """Insert promise updates in one statement."""
    if not rows:
        return
    if _postgres(session):
        columns = {"promises": "promise_id", "days": "local_date", "kinds": "kind", "outboxes": "outbox_id",
                   "channels": "channel", "reasons": "reason_key", "nexts": "next_update_at", "created": "created_at"}  # fmt: skip
        session.execute(
            _PG_INSERT_UPDATES, {param: [r[column] for r in rows] for param, column in columns.items()}
        )
        return
    session.execute(insert(PromiseUpdate), rows)


def retag_call_list(*, session: Session, promise_ids: Sequence[int], day: date, reason: str) -> set[int]:
    """Give the promises' call-list entries of a day a new reason; return the promises that had one."""
    if not promise_ids:
        return set()
    result = session.execute(
        update(PromiseUpdate)
        .where(
            among(session, PromiseUpdate.promise_id, promise_ids),
            PromiseUpdate.local_date == day,
            PromiseUpdate.kind == UpdateKind.CALL_LIST,
            or_(PromiseUpdate.reason_key.is_(None), PromiseUpdate.reason_key != reason),
        )
        .values(reason_key=reason)
        .returning(PromiseUpdate.promise_id),
        execution_options={"synchronize_session": False},
    )
    return set(result.scalars())


def set_next_update(*, session: Session, promise_ids: Sequence[int], at: datetime) -> None:
    """Record when the next update is due on promises."""
    if promise_ids:
        session.execute(
            update(Promise).where(among(session, Promise.id, promise_ids)).values(next_update_at=at),
            execution_options={"synchronize_session": False},
        )


def cancel_unsent_updates(*, session: Session, promise_ids: Sequence[int], reason: str) -> int:
    """Cancel the promises' late-update texts still waiting to be sent; return how many."""
    if not promise_ids:
        return 0
    texts = select(PromiseUpdate.outbox_id).where(
        among(session, PromiseUpdate.promise_id, promise_ids),
        PromiseUpdate.kind == UpdateKind.LATE_UPDATE,
        PromiseUpdate.outbox_id.is_not(None),
    )
    # Only PENDING: a text being sent (or reconciled after a crash) may already be on the patient's phone.
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(texts), OutboxMessage.status == OutboxStatus.PENDING)
        .values(status=OutboxStatus.CANCELLED, error_code=reason, updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount or 0


def set_escalated(*, session: Session, promise_ids: Sequence[int], at: datetime, reason: str) -> None:
    """Mark promises as passed to staff."""
    if promise_ids:
        session.execute(
            update(Promise)
            .where(among(session, Promise.id, promise_ids))
            .values(escalated_at=at, escalation_reason=reason),
            execution_options={"synchronize_session": False},
        )


def set_result_notified(*, session: Session, order_ids: Sequence[int], at: datetime) -> None:
    """Record that the patients were told their results are in."""
    if order_ids:
        session.execute(
            update(LabOrder).where(among(session, LabOrder.id, order_ids)).values(result_notified_at=at),
            execution_options={"synchronize_session": False},
        )


def is_unique_violation(error: IntegrityError) -> bool:
    """Return whether an integrity error is a duplicate key (another sweeper got there first)."""
    text = str(error.orig).lower()
    return "unique" in text or "duplicate" in text


def beat(*, session: Session, name: str, holder: str, at: datetime) -> None:
    """Record the scheduler's sign of life."""
    row = session.get(SchedulerHeartbeat, name)
    if row is None:
        session.add(SchedulerHeartbeat(name=name, holder=holder, beat_at=at))
    else:
        row.holder, row.beat_at = holder, at


def last_beat(*, session: Session, name: str) -> SchedulerHeartbeat | None:
    """Return a scheduler's last heartbeat."""
    return session.get(SchedulerHeartbeat, name)


# -- the staff view -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromiseListing:
    """One promise in a staff list."""

    id: int
    kind: str
    reason_key: str
    due_at: datetime
    next_update_at: datetime | None
    escalated_at: datetime | None
    escalation_reason: str | None
    patient_id: int | None
    patient_name: str | None
    subject_type: str
    subject_id: int


def _listing_query(
    *, hide_reasons: Sequence[str], reason: Any = Promise.reason_key
) -> Select:  # type: ignore[type-arg]
    query = select(
        Promise.id,
        Promise.kind,
        reason,
        Promise.due_at,
        Promise.next_update_at,
        Promise.escalated_at,
        Promise.escalation_reason,
        Promise.patient_id,
        Patient.name,
        Promise.subject_type,
        Promise.subject_id,
    ).outerjoin(Patient, Patient.id == Promise.patient_id)
    if hide_reasons:
        query = query.where(Promise.reason_key.not_in(hide_reasons))
    return query


def _count(session: Session, query: Select) -> int:  # type: ignore[type-arg]
    return session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0


@dataclass(frozen=True)
class Section:
    """A staff list: its first rows and how many there are in all."""

    rows: list[PromiseListing]
    total: int


def staff_sections(
    *, session: Session, now: datetime, day_start: datetime, day_end: datetime, today: date,
    hide_reasons: Sequence[str] = (), limit: int = 200,
) -> dict[str, Section]:  # fmt: skip
    """Return the open promises due later today, late, escalated, and today's call list."""
    base = _listing_query(hide_reasons=hide_reasons).where(Promise.status == PromiseStatus.OPEN)
    queries = {
        "due_today": base.where(Promise.due_at > now, Promise.due_at < day_end).order_by(
            Promise.due_at, Promise.id
        ),
        "late": base.where(Promise.due_at <= now, Promise.escalated_at.is_(None)).order_by(
            Promise.due_at, Promise.id
        ),
        "escalated": base.where(Promise.escalated_at.is_not(None)).order_by(Promise.escalated_at, Promise.id),
        # Why to call is the entry's reason (results in), which is not always the promise's (not back yet).
        "call_list": _listing_query(
            hide_reasons=hide_reasons, reason=func.coalesce(PromiseUpdate.reason_key, Promise.reason_key)
        )
        .join(PromiseUpdate, PromiseUpdate.promise_id == Promise.id)
        .where(PromiseUpdate.kind == UpdateKind.CALL_LIST, PromiseUpdate.local_date == today)
        .order_by(Promise.due_at, Promise.id),
    }
    del day_start
    return {
        name: Section(
            rows=[PromiseListing(*row) for row in session.execute(query.limit(limit))],
            total=_count(session, query),
        )
        for name, query in queries.items()
    }


@dataclass(frozen=True)
class TimelineEntry:
    """One sweep effect on a promise, with the delivery state of its text."""

    local_date: date
    kind: str
    created_at: datetime
    channel: str | None
    next_update_at: datetime | None
    body: str | None
    delivery: str | None
    sent_at: datetime | None


def get_promise(*, session: Session, promise_id: int) -> Promise | None:
    """Return a promise by id."""
    return session.get(Promise, promise_id)


def lab_promise_id(*, session: Session, order_id: str) -> int | None:
    """Return the promise id of a lab order, by the lab's order id."""
    return session.scalar(
        select(Promise.id)
        .join(LabOrder, and_(Promise.subject_type == LAB_SUBJECT, Promise.subject_id == LabOrder.id))
        .where(LabOrder.order_id == order_id)
    )


def timeline(*, session: Session, promise_id: int) -> list[TimelineEntry]:
    """Return a promise's updates, oldest first."""
    rows = session.execute(
        select(
            PromiseUpdate.local_date,
            PromiseUpdate.kind,
            PromiseUpdate.created_at,
            PromiseUpdate.channel,
            PromiseUpdate.next_update_at,
            OutboxMessage.body,
            OutboxMessage.status,
            OutboxMessage.sent_at,
        )
        .outerjoin(OutboxMessage, OutboxMessage.id == PromiseUpdate.outbox_id)
        .where(PromiseUpdate.promise_id == promise_id)
        .order_by(PromiseUpdate.local_date, PromiseUpdate.id)
    )
    return [TimelineEntry(*row) for row in rows]
