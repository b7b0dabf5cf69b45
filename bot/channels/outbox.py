"""Queue texts for patients and deliver them exactly once, with retries, pacing and reconciliation."""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Integer, Row, bindparam, case, delete, func, literal_column, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Session, aliased

from bot import metrics
from bot.channels.base import Channel, Delivery, LooksUp, OutgoingText, SendResult
from bot.channels.models import (
    FAILURES,
    STATUS_RANK,
    EarlyStatus,
    OutboxMessage,
    OutboxPart,
    OutboxStatus,
    moves_forward,
)
from bot.db import get_engine, insert_or_ignore_id, insert_or_ignore_many, session_scope, utcnow
from bot.db.leader import Leadership, lock_key
from bot.patients.models import ChannelIdentity
from bot.staff import audit

log = logging.getLogger(__name__)

BASE_BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 15 * 60
# A row left in SENDING this long was claimed by a process that died mid-send: its outcome is unknown.
DEFAULT_STALE_SENDING = timedelta(minutes=2)
# A live sender refreshes the rows it still holds this many times per stale period (`_heartbeat`), so
# only a dead sender's rows ever go stale, however long its batch takes.
HEARTBEATS_PER_STALE = 3
# One sender per deployment (see OutboxSender.run_forever); the leader checks its lock this often.
SENDER_LEADERSHIP = "outbox-sender"
LEADER_CHECK_SECONDS = 5.0
# On PostgreSQL a queued text NOTIFYs this channel (the outbox_queued trigger, migration 0011); the sender
# LISTENs, whichever replica queued it.
NOTIFY_CHANNEL = "clinicbot_outbox"


def text_values(
    *,
    key: str,
    identity: ChannelIdentity,
    body: str,
    conversation_id: int | None = None,
    message_id: int | None = None,
    buttons: tuple[dict[str, str], ...] | list[dict[str, str]] = (),
    priority: int = 0,
    bypass_opt_out: bool = False,
) -> dict[str, Any]:
    """Return the outbox row of one text to queue under a unique key."""
    return {
        "key": key,
        "channel": identity.channel,
        "identity_id": identity.id,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "body": body,
        "buttons": list(buttons),
        "priority": priority,
        "bypass_opt_out": bypass_opt_out,
    }


def enqueue(*, session: Session, **text: Any) -> int | None:
    """Queue one text under a unique key (see `text_values`); return its outbox id, or None when queued before."""
    # On PostgreSQL the insert itself wakes the deployment's sender (the outbox_queued trigger, migration 0011).
    return insert_or_ignore_id(session=session, table=OutboxMessage.__table__, values=text_values(**text), conflict=["key"])


def enqueue_many(*, session: Session, texts: list[dict[str, Any]]) -> None:
    """Queue several texts (rows from `text_values`) in one statement; a key queued before is skipped."""
    if texts:
        insert_or_ignore_many(session=session, table=OutboxMessage.__table__, rows=texts, conflict=["key"])


def cancel_pending(*, session: Session, identity_id: int, reason: str) -> int:
    """Cancel every undelivered text to an identity (it opted out); return how many."""
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.identity_id == identity_id,
            OutboxMessage.status == OutboxStatus.PENDING,
            OutboxMessage.bypass_opt_out.is_(False),
        )
        .values(status=OutboxStatus.CANCELLED, error_code=reason, updated_at=utcnow())
    )
    return result.rowcount or 0


# What a provider may say of a recipient for good that stops every text to them but emergency instructions
# (SendResult.recipient_state): opted out (Twilio's 21610), or the bot blocked (Telegram).
STOPPED_STATES = frozenset({"opted_out", "blocked"})


def do_stop_texting(*, session: Session, row: OutboxMessage, state: str, error_code: str | None) -> None:
    """Mark the recipient of a text opted out (audited once) and cancel their pending texts."""
    identity = session.get(ChannelIdentity, row.identity_id)
    if identity is not None and identity.opted_out_at is None:
        identity.opted_out_at = utcnow()
        audit.record(
            session=session,
            actor_kind="system",
            action=f"identity.{state}",
            subject_type="channel_identity",
            subject_id=identity.id,
            details={"outbox_id": row.id, "error_code": error_code},
        )
    cancel_pending(session=session, identity_id=row.identity_id, reason=state)


# Provider statuses outside OutboxStatus, as the outbox reads them.
_CALLBACK_STATUS = {"queued": OutboxStatus.SENT, "accepted": OutboxStatus.SENT, "sending": OutboxStatus.SENT,
                    "canceled": OutboxStatus.FAILED}  # fmt: skip
# A callback for a provider id no text of ours has recorded yet is kept this long (EarlyStatus): the sender
# records a send within seconds, and a reconcile within hours; one still unmatched after this was for a
# message of another system on the number, or of a text never recorded, and is let go (expire_early_statuses).
EARLY_STATUS_KEPT = timedelta(days=7)
# Holds a provider id's advisory lock on PostgreSQL (see _lock_provider_ids); the keys come sorted.
_LOCK_PROVIDER_IDS = sql_text(
    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)"
)
_EARLY = EarlyStatus.__table__
# Which of a wave's provider ids have callbacks kept: nearly always none, so this plain statement (built and
# compiled once) is all a wave costs; the kept rows themselves are loaded only when there are some.
_KEPT_AMONG = (
    select(_EARLY.c.id)
    .where(_EARLY.c.provider_message_id.in_(bindparam("b_ids", expanding=True)))
    .order_by(_EARLY.c.id)
)
_KEPT_BY_ID = select(EarlyStatus).where(EarlyStatus.id.in_(bindparam("b_ids", expanding=True))).order_by(EarlyStatus.id)


def _callback_status(status: str) -> OutboxStatus | None:
    """Return the outbox status a provider's status names, or None for one the outbox does not follow."""
    try:
        return OutboxStatus(status)
    except ValueError:
        return _CALLBACK_STATUS.get(status)


def worth_keeping(status: str) -> bool:
    """Return whether a callback with this status, for a provider id not recorded yet, is kept for it.

    Only a status that would move a text just recorded as sent: the others would change nothing.
    """
    new = _callback_status(status)
    return new is not None and moves_forward(OutboxStatus.SENT, new)


def _lock_provider_ids(session: Session, provider_ids: Iterable[str]) -> None:
    """On PostgreSQL, hold provider ids' advisory locks to the end of the transaction.

    A callback that finds no text for its id keeps it, and the sender that records the id applies what
    is kept; each does its reading under the id's lock, so neither reads before the other has committed.
    On SQLite one transaction writes at a time (bot.db.session_scope) and nothing is needed.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    keys = sorted({lock_key(f"provider-message:{provider_id}") for provider_id in provider_ids})
    if keys:
        session.execute(_LOCK_PROVIDER_IDS, {"keys": keys})


def _text_of(session: Session, provider_message_id: str) -> OutboxMessage | None:
    """Return the text a provider id belongs to, locked, or None."""
    row = session.scalars(
        select(OutboxMessage).where(OutboxMessage.provider_message_id == provider_message_id).with_for_update()
    ).first()
    if row is not None:
        return row
    # A split text's later part: its id is stored with the row's parts (outbox_part), not on the row.
    outbox_id = session.scalar(
        select(OutboxPart.outbox_id).where(OutboxPart.provider_message_id == provider_message_id)
    )
    if outbox_id is None:
        return None
    return session.scalars(select(OutboxMessage).where(OutboxMessage.id == outbox_id).with_for_update()).one()


def record_status(
    *,
    session: Session,
    provider_message_id: str,
    status: str,
    error_code: str | None,
    recipient_state: str | None = None,
) -> bool | None:
    """Apply a provider's status callback to a text, or to one part of a split text; statuses only move on.

    A failure that says the recipient opted out (`recipient_state`, as at send time) stops texting them,
    whichever part it came for. A callback for a provider id no text has recorded yet may have come
    before the sender recorded the send: if `worth_keeping`, it is kept (EarlyStatus) and applied when
    the sender records that id. Return whether it moved the text (or its part) on, or None when no text
    of ours has that provider id (yet).
    """
    row = _text_of(session, provider_message_id)
    new = _callback_status(status)
    if row is None:
        if new is None or not moves_forward(OutboxStatus.SENT, new):
            return None  # it would change nothing (see worth_keeping)
        _lock_provider_ids(session, [provider_message_id])
        # Under the lock: a sender that recorded the id meanwhile has committed it.
        row = _text_of(session, provider_message_id)
        if row is None:
            kept = {"provider_message_id": provider_message_id, "status": new.value, "error_code": error_code,
                    "recipient_state": recipient_state, "received_at": utcnow()}  # fmt: skip
            insert_or_ignore_many(session=session, table=EarlyStatus.__table__, rows=[kept],
                                  conflict=["provider_message_id", "status"])  # fmt: skip
            return None
    if new is None:
        return False
    return _apply_status(session, row, provider_message_id, new, error_code, recipient_state)


def _apply_status(
    session: Session,
    row: OutboxMessage,
    provider_message_id: str,
    new: OutboxStatus,
    error_code: str | None,
    recipient_state: str | None,
) -> bool:
    """Apply one callback to its locked text; return whether it moved the text (or its part) on."""
    if new in FAILURES and recipient_state in STOPPED_STATES:
        # A fact about the recipient, whatever the order the text's callbacks came in.
        do_stop_texting(session=session, row=row, state=recipient_state, error_code=error_code)
    # Locked with the row: a text's callbacks, part by part, are applied one at a time.
    parts = session.scalars(
        select(OutboxPart).where(OutboxPart.outbox_id == row.id).order_by(OutboxPart.part)
    ).all()
    part = next((p for p in parts if p.provider_message_id == provider_message_id), None)
    if part is None:
        # A text sent as one message (or split before its parts' ids were stored): the callback is the row's.
        return _advance(row, new, error_code)
    moved = _advance(part, new, error_code)
    if STATUS_RANK[OutboxStatus(row.status)] < STATUS_RANK[OutboxStatus.SENT]:
        # Cut short and not yet resumed: the parts still to go have no status, so the row waits for them.
        return moved
    derived, derived_error = _status_of_parts(parts)
    if moves_forward(row.status, derived):
        row.status = derived
        if derived in FAILURES:
            row.error_code = derived_error or row.error_code
    elif derived == row.status and derived in FAILURES and not row.error_code:
        # The failure stands and its part has just told its code: the text takes it. A code on record stays:
        # another part may have failed the same way, and the text keeps the failure it was given first.
        row.error_code = derived_error
    return moved


def _apply_early(session: Session, provider_ids: Iterable[str]) -> None:
    """Apply the callbacks kept for provider ids just recorded, in the order they came, and let them go."""
    ids = sorted(set(provider_ids))
    if not ids:
        return
    _lock_provider_ids(session, ids)
    kept_ids = session.connection().execute(_KEPT_AMONG, {"b_ids": ids}).scalars().all()
    if not kept_ids:
        return
    for kept in session.scalars(_KEPT_BY_ID, {"b_ids": kept_ids}).all():
        row = _text_of(session, kept.provider_message_id)
        if row is None:
            # Not among the ids this transaction recorded after all: left for its text, or to expire.
            continue
        sid, status = kept.provider_message_id, OutboxStatus(kept.status)
        moved = _apply_status(session, row, sid, status, kept.error_code, kept.recipient_state)
        log.info("outbox %s: status %s kept for %s applied (%s)", row.id, kept.status, sid,
                 "moved on" if moved else "not newer")  # fmt: skip
        session.delete(kept)


def expire_early_statuses(*, session: Session, now: datetime) -> int:
    """Let go of callbacks kept longer than EARLY_STATUS_KEPT for ids no text took; return how many."""
    result = session.execute(delete(EarlyStatus).where(EarlyStatus.received_at < now - EARLY_STATUS_KEPT))
    return result.rowcount or 0


def _advance(target: OutboxMessage | OutboxPart, new: OutboxStatus, error_code: str | None) -> bool:
    """Move a text's or a part's status on to `new` if that is forward, with the callback's error code.

    A code belongs to the status it came with: it is kept when that status is applied, or when the callback
    repeats the failure that stands (Twilio tries a callback again, and the retry may carry the code). A
    late or contradictory callback's code says nothing of the text, and a callback without a code never
    erases the one on record.
    """
    if not moves_forward(target.status, new):
        if error_code and new in FAILURES and new == target.status:
            target.error_code = error_code
        return False
    target.status = new
    target.error_code = error_code or target.error_code
    return True


def _status_of_parts(parts: Sequence[OutboxPart]) -> tuple[OutboxStatus, str | None]:
    """Return a split text's status from its parts' (with the error code that decided it).

    A patient holding parts 1 and 3 of a text does not have it: any part failed or undelivered makes the
    text so (the first such part, in order, names the code), and it is delivered (or read) only when every
    part is; otherwise it is sent.
    """
    statuses = [OutboxStatus(part.status) for part in parts]
    failed = next((part for part in parts if part.status in FAILURES), None)
    if failed is not None:
        return OutboxStatus(failed.status), failed.error_code
    if statuses and all(status is OutboxStatus.READ for status in statuses):
        return OutboxStatus.READ, None
    if statuses and all(status in (OutboxStatus.DELIVERED, OutboxStatus.READ) for status in statuses):
        return OutboxStatus.DELIVERED, None
    return OutboxStatus.SENT, None


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter, never sooner than the provider asked."""
    ceiling = min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


@dataclass
class _Pacer:
    """Keep within a channel's limits: per address and overall, in this process, across send threads."""

    per_address: float
    per_second: float | None

    def __post_init__(self) -> None:
        self.last_by_address: dict[str, float] = defaultdict(float)
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def reserve(self, address: str, now: float) -> float:
        """Book the next slot for an address and return how long to wait for it."""
        with self.lock:
            wait = max(0.0, self.last_by_address[address] + self.per_address - now)
            if self.per_second:
                wait = max(wait, self.next_slot - now)
            at = now + wait
            self.last_by_address[address] = at
            if self.per_second:
                self.next_slot = max(self.next_slot, at) + 1.0 / self.per_second
            return wait


@dataclass
class _Outcome:
    """One claimed text and how its attempt ended (cancelled: opted out before it was sent)."""

    text: OutgoingText
    result: SendResult
    cancelled: bool = False


_OUTBOX = OutboxMessage.__table__
_IDENTITY = ChannelIdentity.__table__
# Which of a wave's recipients opted out since the claim: read before every wave, as a plain statement.
_OPTED_OUT_AMONG = select(_IDENTITY.c.id).where(
    _IDENTITY.c.id.in_(bindparam("b_ids", expanding=True)), _IDENTITY.c.opted_out_at.is_not(None)
)
# A text no attempt has settled yet: only such a row takes an attempt's outcome as its status (but for a
# cancelled text the provider accepted: see _RECORD_CANCELLED_SENT). A sender whose rows looked stale (its
# heartbeat could not reach the database) may record an attempt after another sender's reconcile found and
# recorded the same message, and status callbacks moved it on (delivered): its late "sent", "unknown" or
# "retry" must not set the text back.
_UNSETTLED = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.UNKNOWN)
# Literals: an expanding IN cannot run as one executemany.
_unsettled = _OUTBOX.c.status.in_([literal_column(f"'{status.value}'") for status in _UNSETTLED])
_cancelled = _OUTBOX.c.status == literal_column(f"'{OutboxStatus.CANCELLED.value}'")
# How a wave's sent texts are recorded, as one statement for the whole wave (built once, compiled once). A
# settled row keeps its status, time sent, error code and provider id (one it lacks is recorded). A
# cancelled row is left to _RECORD_CANCELLED_SENT (see _record_sent): the statement skips it, and its count
# of rows says whether there was one, so a wave with none costs nothing more.
_RECORD_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("b_id"), ~_cancelled)
    .values(
        status=case((_unsettled, OutboxStatus.SENT.value), else_=_OUTBOX.c.status),
        sent_at=case(
            (_unsettled, bindparam("b_now")), else_=func.coalesce(_OUTBOX.c.sent_at, bindparam("b_now"))
        ),
        updated_at=bindparam("b_now"),
        # A settled row keeps the id its status callbacks are counted by: a late attempt's message (Twilio's
        # list lagged behind a create, so a reconcile sent again) is recorded only where there is none.
        provider_message_id=case(
            (_unsettled, func.coalesce(bindparam("b_provider_id"), _OUTBOX.c.provider_message_id)),
            else_=func.coalesce(_OUTBOX.c.provider_message_id, bindparam("b_provider_id")),
        ),
        # An earlier attempt's code (a timeout, a 500) no longer describes a text that went out: it goes.
        error_code=case((_unsettled, bindparam("b_error")), else_=_OUTBOX.c.error_code),
    )
)
# A text cancelled while an attempt was in flight (the patient opted out, another sender took the row for a
# dead sender's and cancelled it, the patient was erased) that the provider then accepted reached the patient:
# it is sent, whatever the cancellation said. Its status callbacks then count as any sent text's.
# Locked: of two senders that both had such a text in flight, the second finds it sent already.
_CANCELLED_AMONG = (
    select(_OUTBOX.c.id)
    .where(_OUTBOX.c.id.in_(bindparam("b_ids", expanding=True)), _cancelled)
    .order_by(_OUTBOX.c.id)
    .with_for_update()
)
_RECORD_CANCELLED_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("b_id"), _cancelled)
    .values(
        status=OutboxStatus.SENT.value,
        sent_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
        provider_message_id=func.coalesce(bindparam("b_provider_id"), _OUTBOX.c.provider_message_id),
        # The cancellation's reason ("opted_out") does not describe a text that went out.
        error_code=bindparam("b_error"),
    )
)


def _record_sent(session: Session, sent: list[dict[str, Any]]) -> None:
    """Record a wave's sent texts (`_RECORD_SENT` parameters), a text cancelled meanwhile as sent too."""
    if session.execute(_RECORD_SENT, sent).rowcount == len(sent):
        return
    by_id = {params["b_id"]: params for params in sent}
    cancelled = session.scalars(_CANCELLED_AMONG, {"b_ids": list(by_id)}).all()
    if not cancelled:
        return
    session.execute(_RECORD_CANCELLED_SENT, [by_id[outbox_id] for outbox_id in cancelled])
    for outbox_id in cancelled:
        log.warning("outbox %s was cancelled but the provider accepted it: recorded as sent", outbox_id)


def _report(outbox_id: int, status: str, channel: str, attempts: int, provider_id: str | None = None) -> None:
    """Log and count one recorded outcome (ids only: ours, and the provider's for support)."""
    if provider_id and channel == "telegram":
        # Telegram rows written before the message id stood alone hold "chat_id:message_id", and a chat id
        # is the patient's address: only the message id is logged.
        provider_id = provider_id.rpartition(":")[2]
    if provider_id:
        log.info("outbox %s %s via %s (attempt %s) as %s", outbox_id, status, channel, attempts, provider_id)
    else:
        log.info("outbox %s %s via %s (attempt %s)", outbox_id, status, channel, attempts)
    metrics.outbox_outcome(channel, status)


# A sender that crashed mid-send left these SENDING: after `stale_after` they are reconciled, never resent.
# A live sender's rows never match: its heartbeat keeps their updated_at fresh (OutboxSender._heartbeat).
_STALE_SENDING = (
    update(OutboxMessage)
    .where(OutboxMessage.status == OutboxStatus.SENDING, OutboxMessage.updated_at < bindparam("b_stale"))
    .values(status=OutboxStatus.UNKNOWN, updated_at=bindparam("b_now"))
)
_CLAIMS: dict[bool, Any] = {}


# Due texts to the claimed texts' addresses that this claim passed over (see `_without_overtaking`).
_PASSED_OVER = select(OutboxMessage.identity_id, OutboxMessage.id, OutboxMessage.priority).where(
    OutboxMessage.identity_id.in_(bindparam("b_identities", expanding=True)),
    OutboxMessage.status.in_((OutboxStatus.PENDING, OutboxStatus.UNKNOWN)),
    OutboxMessage.next_attempt_at <= bindparam("b_now"),
    OutboxMessage.id.not_in(bindparam("b_claimed", expanding=True)),
    OutboxMessage.id < bindparam("b_last", type_=Integer),
)


# What a claim reads of each text and its recipient: plain rows, updated with the two statements below.
# (Loaded and flushed as ORM objects, the claim cost as much CPU as the send it prepared.)
_CLAIM_COLUMNS = (
    OutboxMessage.id, OutboxMessage.key, OutboxMessage.channel, OutboxMessage.identity_id, OutboxMessage.body,
    OutboxMessage.buttons, OutboxMessage.priority, OutboxMessage.bypass_opt_out, OutboxMessage.status,
    OutboxMessage.attempts, OutboxMessage.first_attempt_at, OutboxMessage.parts_sent,
    ChannelIdentity.address, ChannelIdentity.opted_out_at,
)  # fmt: skip
_MARK_SENDING = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("b_id"))
    .values(status=OutboxStatus.SENDING, attempts=bindparam("b_attempts"), first_attempt_at=bindparam("b_first"),
            updated_at=bindparam("b_now"))  # fmt: skip
)
_CANCEL_OPTED_OUT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("b_id"))
    .values(status=OutboxStatus.CANCELLED, error_code="opted_out", updated_at=bindparam("b_now"))
)


def _claim_query(*, postgres: bool) -> Any:
    """Return the sender's claim query, built once per backend (the time, channels and limit are bound).

    Building it (an aliased subquery) on every claim cost ~2 ms of CPU, and the sender claims after
    every routed batch.
    """
    query = _CLAIMS.get(postgres)
    if query is not None:
        return query
    # A patient's texts go out in order even when several senders run (app replicas): a text
    # waits while an earlier one to the same address is in flight with another sender. (Within
    # one claim, texts to one address keep their order on one thread.) Higher priority jumps
    # the queue: emergency instructions never wait behind a routine text.
    earlier = aliased(OutboxMessage)
    waits_for_earlier = (
        select(earlier.id)
        .where(
            earlier.identity_id == OutboxMessage.identity_id,
            earlier.id < OutboxMessage.id,
            earlier.priority >= OutboxMessage.priority,
            # A literal, as ix_outbox_in_flight's predicate says it: a bound parameter hides the match
            # from SQLite's planner and PostgreSQL's generic plans (see bot.conversations.models).
            earlier.status == literal_column(f"'{OutboxStatus.SENDING.value}'"),
        )
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(*_CLAIM_COLUMNS)
        .join(ChannelIdentity, ChannelIdentity.id == OutboxMessage.identity_id)
        .where(
            OutboxMessage.status.in_((OutboxStatus.PENDING, OutboxStatus.UNKNOWN)),
            OutboxMessage.next_attempt_at <= bindparam("b_now"),
            OutboxMessage.channel.in_(bindparam("b_channels", expanding=True)),
            # A scalar subquery, not NOT EXISTS: PostgreSQL made that an anti-join that scanned the whole
            # in-flight index (every text passes through it, and its dead entries stay until vacuumed) for
            # each candidate; as a subquery it is one lookup by the candidate's identity.
            waits_for_earlier.is_(None),
        )
        .order_by(OutboxMessage.priority.desc(), OutboxMessage.id)
        .limit(bindparam("b_limit", type_=Integer))
    )
    if postgres:
        query = query.with_for_update(skip_locked=True, of=OutboxMessage)
    _CLAIMS[postgres] = query
    return query


def _heartbeat(sender_ref: weakref.ReferenceType[OutboxSender], stop: threading.Event) -> None:
    """Refresh a sender's claimed rows not yet recorded, HEARTBEATS_PER_STALE times per stale period.

    Another sender's claim reconciles rows left SENDING longer than `stale_after`, taking them for a dead
    sender's; a live sender working through a long batch (pacing, slow or timed-out sends) would otherwise
    see its last texts reconciled and sent by the other while it still sends them itself. A beat on its
    own thread keeps them fresh whatever one send or one pacing wait lasts, where a bounded batch would
    have to guess a duration; only a process that stopped lets its rows go stale. The thread holds the
    sender weakly and ends with it (or at `close`).
    """
    while True:
        sender = sender_ref()
        if sender is None:
            return
        interval = max(sender.stale_after.total_seconds() / HEARTBEATS_PER_STALE, 0.01)
        del sender
        if stop.wait(interval):
            return
        sender = sender_ref()
        if sender is None:
            return
        sender._refresh_held()
        del sender


class OutboxSender:
    """Claim due texts and hand them to their channel; safe to run in several processes."""

    def __init__(
        self,
        *,
        channels: Mapping[str, Channel],
        max_attempts: int = 8,
        pacing: bool = True,
        stale_after: timedelta = DEFAULT_STALE_SENDING,
    ) -> None:
        self.channels = dict(channels)
        self.stale_after = stale_after
        self.max_attempts = max_attempts
        self.pacing = pacing
        self.pacers = {
            name: _Pacer(channel.min_interval_per_address, channel.max_per_second)
            for name, channel in self.channels.items()
        }
        self.wake = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        # Whether run_forever is the deployment's one sender now (None until it has tried).
        self.leading: bool | None = None
        self._lead_checked_at = 0.0
        # Held while recording a wave or refreshing held rows: the two never write the same rows at once
        # (on PostgreSQL two transactions updating one set of rows in different orders can deadlock).
        self._rows_lock = threading.Lock()
        # The claimed rows not yet recorded, which the heartbeat keeps fresh (`_heartbeat`).
        self._held: set[int] = set()
        self._beat: threading.Thread | None = None
        self._beat_stop = threading.Event()

    def claim(self, *, limit: int = 50) -> list[OutgoingText]:
        """Mark a batch of due texts as being sent by this process and return them."""
        if not self.channels:
            return []
        now = utcnow()
        claimed: list[OutgoingText] = []
        with session_scope() as session:
            session.execute(_STALE_SENDING, {"b_stale": now - self.stale_after, "b_now": now})
            postgres = session.get_bind().dialect.name == "postgresql"
            params = {"b_now": now, "b_channels": list(self.channels), "b_limit": limit}
            rows = list(session.execute(_claim_query(postgres=postgres), params))
            if postgres:
                rows = self._without_overtaking(session, rows, now=now)
            sending, cancelled = [], []
            for row in rows:
                # A text whose last outcome is unknown is reconciled: that is not a new attempt.
                was_unknown = row.status == OutboxStatus.UNKNOWN
                look_up_only = False
                if row.opted_out_at is not None and not row.bypass_opt_out:
                    if not (was_unknown and self._can_look_up(row.channel)):
                        cancelled.append({"b_id": row.id, "b_now": now})
                        continue
                    # The last attempt may have reached them before they opted out: ask, send nothing.
                    look_up_only = True
                attempts = row.attempts if was_unknown else row.attempts + 1
                first_attempt_at = row.first_attempt_at if was_unknown else row.first_attempt_at or now
                sending.append({"b_id": row.id, "b_attempts": attempts, "b_first": first_attempt_at, "b_now": now})
                claimed.append(
                    OutgoingText(
                        outbox_id=row.id,
                        key=row.key,
                        channel=row.channel,
                        address=row.address,
                        text=row.body or "",
                        buttons=tuple(row.buttons or ()),
                        attempt=attempts,
                        first_attempt_at=first_attempt_at,
                        reconcile=was_unknown,
                        identity_id=row.identity_id,
                        bypass_opt_out=row.bypass_opt_out,
                        parts_sent=row.parts_sent,
                        look_up_only=look_up_only,
                    )
                )
            if sending:
                session.execute(_MARK_SENDING, sending)
            if cancelled:
                session.execute(_CANCEL_OPTED_OUT, cancelled)
        return claimed

    @staticmethod
    def _without_overtaking(session: Session, rows: list[Row[Any]], *, now: datetime) -> list[Row[Any]]:
        """Drop claimed texts that would overtake an earlier due text to the same address.

        SKIP LOCKED passes over rows another sender is claiming at this moment; a later text to the
        same patient must not go out ahead of them. The dropped rows stay pending for the next claim.
        """
        if not rows:
            return rows
        claimed = [row.id for row in rows]
        params = {"b_identities": list({row.identity_id for row in rows}), "b_now": now, "b_claimed": claimed,
                  "b_last": max(claimed)}  # fmt: skip
        unclaimed = session.execute(_PASSED_OVER, params).all()
        if not unclaimed:
            return rows
        return [
            row
            for row in rows
            if not any(
                other.identity_id == row.identity_id and other.id < row.id and other.priority >= row.priority
                for other in unclaimed
            )
        ]

    def deliver(self, text: OutgoingText) -> SendResult:
        """Send or reconcile one claimed text and record the outcome."""
        return self.deliver_all([text])[0].result

    def deliver_all(self, texts: list[OutgoingText], *, just_claimed: bool = False) -> list[_Outcome]:
        """Send or reconcile claimed texts and record their outcomes, in waves of parallel sends.

        Texts to one address stay in claim order on one thread, so a patient's replies arrive in
        order. Each wave checks opt-outs just before it sends and records its outcomes in one
        transaction; a crash before that leaves the rows SENDING, which are reconciled, never resent.
        `just_claimed` says the claim that returned these texts has just checked the first wave's
        opt-outs (it cancels opted-out rows), so that wave is not read again.
        """
        waves: list[list[list[OutgoingText]]] = []
        for channel_name in dict.fromkeys(text.channel for text in texts):
            width = self._width(channel_name)
            ordered = [text for text in texts if text.channel == channel_name]
            if width == 1:
                # One at a time, in claim order (priority first).
                waves += [[ordered[start : start + 25]] for start in range(0, len(ordered), 25)]
                continue
            groups: dict[str, list[OutgoingText]] = {}
            for text in ordered:
                groups.setdefault(text.address, []).append(text)
            same = list(groups.values())
            waves += [same[start : start + width] for start in range(0, len(same), width)]
        outcomes: list[_Outcome] = []
        ids = {text.outbox_id for text in texts}
        with self._rows_lock:
            self._held |= ids
        self._start_heartbeat()
        try:
            opted_out = self._opted_out(waves[0]) if waves and not just_claimed else set()
            for number, wave in enumerate(waves):
                done = self._send_wave(wave, opted_out)
                outcomes += done
                following = waves[number + 1] if number + 1 < len(waves) else []
                opted_out = self._record(done, check_next=following)
        finally:
            with self._rows_lock:
                self._held -= ids
        return outcomes

    def _start_heartbeat(self) -> None:
        """Start this sender's heartbeat thread once (a thread per delivery round cost the hot path)."""
        if self._beat is not None and self._beat.is_alive():
            return
        self._beat_stop.clear()
        self._beat = threading.Thread(target=_heartbeat, args=(weakref.ref(self), self._beat_stop),
                                      name="clinicbot-outbox-beat", daemon=True)  # fmt: skip
        self._beat.start()

    def _refresh_held(self) -> None:
        """Refresh `updated_at` of the claimed rows not yet recorded (one heartbeat)."""
        with self._rows_lock:
            if not self._held:
                return
            try:
                with session_scope() as session:
                    session.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id.in_(sorted(self._held)), OutboxMessage.status == OutboxStatus.SENDING)
                        .values(updated_at=utcnow())
                    )
            except Exception:
                log.exception("outbox sender could not refresh its %s texts in flight", len(self._held))

    def _calls_back(self, channel_name: str) -> bool:
        """Return whether a channel's provider reports delivery statuses by callback (record_status)."""
        return bool(getattr(self.channels.get(channel_name), "status_callbacks", False))

    def _width(self, channel_name: str) -> int:
        """Return how many addresses of a channel may be sent to at once (the channel says; default one)."""
        return max(1, int(getattr(self.channels[channel_name], "parallel_sends", 1)))

    @staticmethod
    def _check_ids(wave: Iterable[list[OutgoingText]]) -> set[int]:
        return {
            text.identity_id
            for group in wave
            for text in group
            # Reconciles too: one may still send what the provider lacks (a split text's missing parts).
            if text.identity_id is not None and not text.bypass_opt_out
        }

    def _opted_out(self, wave: list[list[OutgoingText]]) -> set[int]:
        """Return which identities of a wave opted out, read just before it is sent."""
        ids = self._check_ids(wave)
        if not ids:
            return set()
        with session_scope() as session:
            return self._opted_out_in(session, ids)

    @staticmethod
    def _opted_out_in(session: Session, ids: set[int]) -> set[int]:
        # A STOP or a 21610 may have arrived after the batch was claimed.
        return set(session.connection().execute(_OPTED_OUT_AMONG, {"b_ids": sorted(ids)}).scalars())

    def _send_wave(self, wave: list[list[OutgoingText]], opted_out: set[int]) -> list[_Outcome]:
        if len(wave) == 1:
            return self._send_group(wave[0], opted_out)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=max(self._width(name) for name in self.channels),
                thread_name_prefix="clinicbot-send",
            )
        futures = [self._pool.submit(self._send_group, group, opted_out) for group in wave]
        return [outcome for future in futures for outcome in future.result()]

    def _send_group(self, group: list[OutgoingText], opted_out: set[int]) -> list[_Outcome]:
        """Attempt texts in order; after an address opts out for good only its emergencies still go."""
        outcomes = []
        stopped: set[str] = set()
        for text in group:
            halted = not text.bypass_opt_out and (text.address in stopped or text.identity_id in opted_out)
            # An unknown outcome to a patient who opted out since the claim is asked about, as the claim
            # would have: a reconcile may send what the provider lacks (a split text's missing parts).
            if text.look_up_only or halted and text.reconcile and self._can_look_up(text.channel):
                result = self._look_up(text)
                # What the provider does not have never left: the opt-out cancels it, as any unsent text.
                outcomes.append(_Outcome(text, result, cancelled=result.outcome is Delivery.FAILED))
                continue
            if halted:
                outcomes.append(_Outcome(text, SendResult(Delivery.FAILED, error_code="opted_out",
                                                          recipient_state="opted_out"), cancelled=True))  # fmt: skip
                continue
            result = self._attempt(text)
            outcomes.append(_Outcome(text, result))
            if result.outcome is Delivery.FAILED and result.recipient_state in STOPPED_STATES:
                stopped.add(text.address)
        return outcomes

    def _attempt(self, text: OutgoingText) -> SendResult:
        channel_name = text.channel
        channel = self.channels[channel_name]
        if not text.reconcile:
            return self._send(channel, channel_name, text)
        # An earlier attempt may have reached the provider: ask before sending again.
        try:
            result = channel.reconcile(text)
        except Exception:
            log.exception("channel %s raised reconciling outbox %s", channel_name, text.outbox_id)
            result = None
        if result is None:
            return SendResult(Delivery.UNKNOWN)
        if result.outcome is Delivery.RETRY:
            # The provider has no trace of it: it never left, so sending again doubles nothing.
            return self._send(channel, channel_name, text)
        return result

    def _can_look_up(self, channel_name: str) -> bool:
        """Return whether a channel's provider can say it has a text without sending it (`LooksUp`)."""
        return isinstance(self.channels.get(channel_name), LooksUp)

    def _look_up(self, text: OutgoingText) -> SendResult:
        """Ask the provider whether an opted-out patient's text with an unknown outcome arrived; never send.

        SENT when it did (recorded as sent: it reached them), FAILED "opted_out" when the provider has no
        trace (cancelled), UNKNOWN when it cannot be asked (asked again later, like any unknown outcome).
        """
        channel = self.channels[text.channel]
        assert isinstance(channel, LooksUp)  # the claim took it for a look-up only where the channel can
        try:
            result = channel.find(text)
        except Exception:
            log.exception("channel %s raised looking up outbox %s", text.channel, text.outbox_id)
            result = None
        if result is None:
            return SendResult(Delivery.UNKNOWN)
        if result.outcome is Delivery.SENT:
            log.warning("outbox %s: the patient opted out after it was sent; %s has it: recorded as sent",
                        text.outbox_id, text.channel)  # fmt: skip
            return result
        return SendResult(Delivery.FAILED, error_code="opted_out", recipient_state="opted_out")

    def _send(self, channel: Channel, channel_name: str, text: OutgoingText) -> SendResult:
        if self.pacing:
            wait = self.pacers[channel_name].reserve(text.address, time.monotonic())
            if wait > 0:
                time.sleep(wait)
        try:
            return channel.send(text)
        except Exception:
            # An adapter bug must not lose the text: treat it as unknown and reconcile.
            log.exception("channel %s raised sending outbox %s", channel_name, text.outbox_id)
            return SendResult(Delivery.UNKNOWN)

    def _record(self, outcomes: list[_Outcome], *, check_next: list[list[OutgoingText]]) -> set[int]:
        """Record a wave's outcomes in one transaction; return the opt-outs among the next wave's identities.

        The recorded texts leave the rows the heartbeat keeps fresh.
        """
        with self._rows_lock:
            self._held.difference_update(o.text.outbox_id for o in outcomes)
            return self._record_held(outcomes, check_next=check_next)

    def _record_held(self, outcomes: list[_Outcome], *, check_next: list[list[OutgoingText]]) -> set[int]:
        now = utcnow()
        with session_scope() as session:
            # Nearly every outcome is "sent": one executemany UPDATE records them, no rows loaded.
            sent = [o for o in outcomes if not o.cancelled and o.result.outcome is Delivery.SENT]
            if sent:
                # A text resumed after some of its parts keeps the id its first part got (_apply records a cut).
                _record_sent(session, [
                    {"b_id": o.text.outbox_id, "b_now": now, "b_error": o.result.error_code,
                     "b_provider_id": None if o.text.parts_sent else o.result.provider_message_id} for o in sent
                ])  # fmt: skip
                for o in sent:
                    _report(o.text.outbox_id, OutboxStatus.SENT, o.text.channel, o.text.attempt,
                            o.result.provider_message_id)
            # Every part of a split text, whatever the outcome, is stored with its row in the same transaction:
            # a reconcile in this or a later process never takes them for another text's (TwilioSmsChannel).
            parts = [
                {"outbox_id": o.text.outbox_id, "part": number, "provider_message_id": sid, "created_at": now}
                for o in outcomes
                if not o.cancelled
                for number, sid in o.result.part_ids
            ]
            if parts:
                # A part found again by a later reconcile of the same row is stored already.
                insert_or_ignore_many(session=session, table=OutboxPart.__table__, rows=parts,
                                      conflict=["provider_message_id"])  # fmt: skip
            rest = {o.text.outbox_id: o for o in outcomes if o.cancelled or o.result.outcome is not Delivery.SENT}
            found = session.scalars(select(OutboxMessage).where(OutboxMessage.id.in_(rest))) if rest else ()
            for row in found:
                self._apply(session, row, rest[row.id], now)
            # Status callbacks that came before their ids were recorded (see record_status) count now, in the
            # transaction that records the ids: none is left waiting for an id already on record. Only for
            # channels whose provider calls back (Twilio); the others' waves skip the lock and the lookup.
            _apply_early(session, [
                sid for o in outcomes if not o.cancelled and self._calls_back(o.text.channel)
                for sid in (o.result.provider_message_id, *(sid for _, sid in o.result.part_ids)) if sid
            ])  # fmt: skip
            check = self._check_ids(check_next)
            if not check:
                return set()
            session.flush()
            return self._opted_out_in(session, check)

    def _apply(self, session: Session, row: OutboxMessage, outcome: _Outcome, now: datetime) -> None:
        """Record an outcome other than "sent" (`_record` writes those with one statement).

        A row settled meanwhile (see _UNSETTLED) keeps its status and error code; what the attempt learnt of
        the text (parts sent, the provider's id, one more attempt) and of the recipient is still recorded.
        """
        result = outcome.result
        settled = row.status not in _UNSETTLED
        if outcome.cancelled:
            if not settled:
                row.status, row.error_code = OutboxStatus.CANCELLED, "opted_out"
                log.info("outbox %s cancelled via %s: opted out", row.id, row.channel)
            return
        if result.parts_sent > row.parts_sent:
            # Cut short after some parts: the next attempt sends only the rest, and the first part's id stays.
            row.parts_sent = result.parts_sent
            row.provider_message_id = row.provider_message_id or result.provider_message_id
        if settled:
            if result.outcome is Delivery.UNKNOWN:
                row.attempts += 1
            if result.outcome is Delivery.FAILED and result.recipient_state in STOPPED_STATES:
                # A fact about the recipient, whatever became of this text.
                do_stop_texting(
                    session=session, row=row, state=result.recipient_state, error_code=result.error_code
                )
            log.info("outbox %s is %s already; attempt %s via %s ended %s", row.id, row.status, row.attempts,
                     row.channel, result.outcome.value)  # fmt: skip
            return
        row.error_code = result.error_code or row.error_code
        if result.outcome is Delivery.FAILED:
            row.status = OutboxStatus.FAILED
            if result.recipient_state in STOPPED_STATES:
                do_stop_texting(
                    session=session, row=row, state=result.recipient_state, error_code=row.error_code
                )
        elif row.attempts >= self.max_attempts:
            row.status = OutboxStatus.FAILED
            row.error_code = row.error_code or (
                "unknown_outcome" if result.outcome is Delivery.UNKNOWN else "retries_exhausted"
            )
        else:
            row.status = OutboxStatus.UNKNOWN if result.outcome is Delivery.UNKNOWN else OutboxStatus.PENDING
            if result.outcome is Delivery.UNKNOWN:
                row.attempts += 1
            row.next_attempt_at = now + timedelta(seconds=_backoff(row.attempts, result.retry_after))
        _report(row.id, row.status, row.channel, row.attempts, row.provider_message_id)

    def run_once(self, *, limit: int = 50) -> int:
        """Deliver one batch of due texts; return how many were attempted."""
        texts = self.claim(limit=limit)
        if texts:
            self.deliver_all(texts, just_claimed=True)
        return len(texts)

    def close(self) -> None:
        """Stop the send threads (after the wave in flight) and the heartbeat."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None

    def drain(self, *, max_rounds: int = 100) -> int:
        """Deliver until nothing is due now; return how many were attempted."""
        total = 0
        for _ in range(max_rounds):
            done = self.run_once()
            total += done
            if done == 0:
                break
        return total

    def run_forever(
        self, stop: threading.Event, *, poll_seconds: float = 1.0, check_seconds: float = LEADER_CHECK_SECONDS
    ) -> None:
        """Deliver until stopped, waking early when new texts are queued; only while this process leads.

        One sender per deployment: the pacing that keeps a sending number at its carrier's rate and a
        Telegram chat within Telegram's limits is kept in this process, so with several app replicas
        the others stand by, and one of them takes over within `poll_seconds` when the leader stops or
        dies (its database session, and so its lock, ends with it).
        """
        engine = get_engine()
        if engine.dialect.name == "postgresql":
            listener = threading.Thread(target=self._listen, args=(engine, stop), name="clinicbot-outbox-listen", daemon=True)
            listener.start()
        with Leadership(engine=engine, name=SENDER_LEADERSHIP) as leadership:
            while not stop.is_set():
                try:
                    if not self._lead(leadership, check_seconds=check_seconds):
                        stop.wait(poll_seconds)
                        continue
                    # Cleared before the claim (as the inbound processor does): a wake-up this claim answers
                    # is spent by it, and an empty claim waits for the next one.
                    self.wake.clear()
                    # A stop (set before its wake-up, which the clear may have spent) never waits a poll out.
                    if self.run_once() == 0 and not stop.is_set():
                        self.wake.wait(poll_seconds)
                except Exception:
                    log.exception("outbox sender round failed; retrying")
                    stop.wait(poll_seconds)
        self.leading = False

    def _listen(self, engine: Engine, stop: threading.Event) -> None:
        """Wake the sender on every NOTIFY of a queued text, from any process; reconnect after a failure."""
        import psycopg

        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.wake.set()  # texts queued while nobody listened
                    while not stop.is_set():
                        for _ in connection.notifies(timeout=1.0):
                            self.wake.set()
            except psycopg.Error as error:
                log.warning("outbox sender stopped listening for queued texts (%s); polling until it reconnects",
                            type(error).__name__)  # fmt: skip
                stop.wait(1.0)

    def _lead(self, leadership: Leadership, *, check_seconds: float) -> bool:
        """Return whether this process may send now: it leads, and has checked lately that it still does."""
        now = time.monotonic()
        if leadership.held:
            if now - self._lead_checked_at < check_seconds:
                return True
            if leadership.alive():
                self._lead_checked_at = now
                return True
            log.warning("outbox sender lost its leadership (database session ended)")
        if not leadership.try_acquire():
            if self.leading is not False:
                log.info("outbox sender standing by: another process sends")
            self.leading = False
            return False
        log.info("outbox sender leads: this process sends")
        self.leading, self._lead_checked_at = True, now
        return True


def due_count(*, session: Session, now: datetime | None = None) -> int:
    """Return how many texts are waiting to go out."""
    from sqlalchemy import func

    return session.scalar(
        select(func.count())
        .select_from(OutboxMessage)
        .where(
            OutboxMessage.status.in_((OutboxStatus.PENDING, OutboxStatus.UNKNOWN)),
            OutboxMessage.next_attempt_at <= (now or utcnow()),
        )
    ) or 0
