"""The promise sweeps: same-working-day late updates, call lists, escalations and results-ready notices.

Every sweep is a repeatable pass over rows, given `now` explicitly (never the wall clock), so a pass
can be replayed as if at any time. Work is claimed in batches of rows, one transaction per batch:
the update row (UNIQUE(promise, clinic-local date, kind)) and the outbox text (a unique key) are
written together, so a crash leaves each promise either fully handled or untouched, and a second
sweeper, a retry or a restart can never send anything twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.channels.verification import expire_stale_verification
from bot.clinic import ClinicCalendar
from bot.clinic_settings import ClinicContext, load_clinic
from bot.conversations.domain import Domain
from bot.conversations.rendering import clinic_values
from bot.db import session_scope
from bot.patients.models import Channel, verification_holds
from bot.patients.service import do_withdraw_phone_link, linked_by_phone, patients_on_phones
from bot.promises import service
from bot.promises.models import UpdateKind
from bot.promises.service import IdentityRow, PatientRow
from bot.when import lang_code, render_due

log = logging.getLogger(__name__)

ESCALATION_REASON_LATE = "late"
RESULTS_REASON = service.RESULTS_REASON
RESULTS_RESPONSE = "utter_update_results_ready"


# -- pure decisions -------------------------------------------------------------------------------


def sending_hours(clinic: ClinicContext, now: datetime) -> bool:
    """Return whether now is inside the clinic's quiet-hours window, when texts may go out."""
    today = clinic.calendar.local_date(now)
    return (
        clinic.calendar.at_local(today, clinic.quiet_start)
        <= now
        < clinic.calendar.at_local(today, clinic.quiet_end)
    )


def late_update_day(clinic: ClinicContext, now: datetime) -> date | None:
    """Return the clinic-local day whose late updates may go out now, or None.

    Only today counts: a working day, at or after the daily update time, inside quiet hours.
    A scheduler that was down catches up later the same day, never on a later day.
    """
    today = clinic.calendar.local_date(now)
    if not clinic.calendar.is_working_day(today):
        return None
    if now < clinic.calendar.at_local(today, clinic.update_time_on(today)):
        return None
    return today if sending_hours(clinic, now) else None


def escalation_day(clinic: ClinicContext, now: datetime) -> date | None:
    """Return today when escalations may be raised now: a working day, at or after the update time."""
    today = clinic.calendar.local_date(now)
    if not clinic.calendar.is_working_day(today):
        return None
    # At the daily update time, or before the clinic closes on a half-day (not held back to quiet hours:
    # escalations go to staff, not to patients).
    at = min(clinic.daily_update_time, clinic.update_time_on(today))
    return today if now >= clinic.calendar.at_local(today, at) else None


def escalation_cutoff(calendar: ClinicCalendar, *, today: date, working_days: int) -> datetime:
    """Return the instant before which a promise was due `working_days` or more working days ago.

    A promise due on day D is k working days late on `today`, where k counts the working days after D
    up to and including today; k >= working_days exactly when D falls before the working_days-th
    working day counted back from today (today being the first).
    """
    day, counted = today, 1 if calendar.is_working_day(today) else 0
    while counted < working_days:
        day -= timedelta(days=1)
        if calendar.is_working_day(day):
            counted += 1
    return calendar.at_local(day, time(0, 0))


def holds(identity: IdentityRow, now: datetime) -> bool:
    """Return whether an identity is verified at now: a web chat's verification lapses after a while."""
    return verification_holds(channel=identity.channel, verified_at=identity.verified_at, now=now)


def lapsed(identity: IdentityRow, now: datetime) -> bool:
    """Return whether an identity once verified as a patient no longer is (ended, or lapsed by now)."""
    return identity.patient_id is not None and not holds(identity, now)


def choose_identity(
    *, patient_identities: Sequence[IdentityRow], promise_identity: IdentityRow | None, now: datetime
) -> IdentityRow | None:
    """Pick where to write: the patient's most recently seen verified identity, else the promise's own.

    Opted-out identities are never chosen; None means the patient cannot be texted (call them instead).
    """
    verified = [i for i in patient_identities if holds(i, now) and i.opted_out_at is None]
    if verified:
        # Never-seen identities (created by lab intake) rank below any the patient has written from.
        return max(
            verified, key=lambda i: (i.last_seen_at is not None, i.last_seen_at or i.verified_at, i.id)
        )
    # Not even anonymously to an identity that no longer vouches for its patient: a lapsed web chat is a
    # session its browser has replaced (nobody would read it, or the next person at a shared computer would),
    # and a withdrawn phone link is a number now on file for someone else too.
    if promise_identity is None or promise_identity.opted_out_at is not None or lapsed(promise_identity, now):
        return None
    return promise_identity


def is_known(identity: IdentityRow, patient: PatientRow | None, *, now: datetime) -> bool:
    """Return whether the text may greet the patient by name: the identity is verified as theirs, still."""
    return patient is not None and identity.patient_id == patient.id and holds(identity, now)


def update_response(reason_key: str) -> str:
    """Return the response key that explains a reason in plain words."""
    if reason_key == "lab_not_back":
        return "utter_update_lab_not_back"
    if reason_key in {"handoff_complaint", "complaint"}:
        return "utter_update_complaint"
    if reason_key.startswith("handoff_"):
        return "utter_update_handoff"
    if reason_key.startswith("request_"):
        return "utter_update_request"
    if reason_key == "staff_followup":
        return "utter_update_staff_followup"
    return "utter_update_other"


def outbox_key(*, promise_id: int, local_date: date, kind: str) -> str:
    """Return the outbox key of a sweep text: one per promise, clinic-local day and kind."""
    return f"promise:{promise_id}:{local_date.isoformat()}:{kind}"


# -- wording --------------------------------------------------------------------------------------


@dataclass
class Wording:
    """Render sweep texts for one pass, computing the clinic values once per language."""

    domain: Domain
    clinic: ClinicContext
    now: datetime
    next_update_at: datetime | None = None
    _values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values(self, lang: str) -> dict[str, Any]:
        cached = self._values.get(lang)
        if cached is None:
            cached = clinic_values(clinic=self.clinic, lang=lang, patient=None, now=self.now)
            if self.next_update_at is not None:
                cached["next_update"] = render_due(
                    due=self.next_update_at, now=self.now, tz=self.clinic.calendar.tz, lang=lang
                )
            self._values[lang] = cached
        return cached

    def render(
        self, key: str, *, lang: str, patient: PatientRow | None, known: bool,
        next_update_at: datetime | None = None,
    ) -> str:  # fmt: skip
        values = self.values(lang)
        if next_update_at is not None and next_update_at != self.next_update_at:
            due = render_due(due=next_update_at, now=self.now, tz=self.clinic.calendar.tz, lang=lang)
            values = {**values, "next_update": due}
        if known and patient is not None:
            values = {**values, "name": patient.display_name}
        return render_text(self.domain, key, lang=lang, known=known, values=values)


def render_text(domain: Domain, key: str, *, lang: str, known: bool, values: dict[str, Any]) -> str:
    """Render one sweep text; the personal variation only for a verified patient."""
    return domain.render(key, lang=lang, slots={"known": known, "verified": known}, values=values)


# -- batches --------------------------------------------------------------------------------------


@dataclass
class SweepCounts:
    """What one pass did."""

    updates: int = 0
    call_list: int = 0
    escalations: int = 0
    results_ready: int = 0

    def add(self, other: SweepCounts) -> None:
        self.updates += other.updates
        self.call_list += other.call_list
        self.escalations += other.escalations
        self.results_ready += other.results_ready


@dataclass
class _Effect:
    """One promise's planned effect: a PromiseUpdate row, with its text when there is one."""

    promise_id: int | None
    kind: str
    reason_key: str
    text: dict[str, Any] | None = None
    order_id: int | None = None
    counts_as: str = "updates"
    # For a late update: when the next one is due, as the text tells the patient.
    next_update_at: datetime | None = None


def _write(session: Session, effects: list[_Effect], *, today: date, now: datetime) -> list[_Effect]:
    """Write effects' texts and update rows in one savepoint; on a duplicate, one by one. Return what was written."""
    try:
        with session.begin_nested():
            _write_rows(session, effects, today=today, now=now)
        return effects
    except IntegrityError as error:
        if not service.is_unique_violation(error):
            raise
    # Another sweeper wrote some of these first: keep theirs, write the rest.
    written = []
    for effect in effects:
        try:
            with session.begin_nested():
                _write_rows(session, [effect], today=today, now=now)
            written.append(effect)
        except IntegrityError as error:
            if not service.is_unique_violation(error):
                raise
            log.info("promise %s already handled on %s (%s)", effect.promise_id, today, effect.kind)
    return written


def _write_rows(session: Session, effects: list[_Effect], *, today: date, now: datetime) -> None:
    texts = [effect.text for effect in effects if effect.text is not None]
    outbox_ids = service.insert_texts(session=session, rows=texts)
    service.insert_updates(
        session=session,
        rows=[
            {
                "promise_id": effect.promise_id,
                "local_date": today,
                "kind": effect.kind,
                "outbox_id": outbox_ids[effect.text["key"]] if effect.text is not None else None,
                "channel": effect.text["channel"] if effect.text is not None else None,
                "reason_key": effect.reason_key,
                "next_update_at": effect.next_update_at if effect.kind == UpdateKind.LATE_UPDATE else None,
                "created_at": now,
            }
            for effect in effects
            if effect.promise_id is not None
        ],
    )


def _text_row(*, key: str, identity: IdentityRow, body: str, conversation_id: int | None) -> dict[str, Any]:
    return {"key": key, "channel": identity.channel, "identity_id": identity.id, "body": body,
            "conversation_id": conversation_id, "buttons": [], "priority": 0}  # fmt: skip


@dataclass
class _Reach:
    """Where and how to write to the patient behind each claimed row."""

    now: datetime
    patients: dict[int, PatientRow]
    by_patient: dict[int, list[IdentityRow]]
    by_id: dict[int, IdentityRow]
    languages: dict[int, str]

    @classmethod
    def load(
        cls, session: Session, *, now: datetime, patient_ids: list[int], identity_ids: list[int],
        conversation_ids: list[int],
    ) -> _Reach:  # fmt: skip
        reach = cls(
            now=now,
            patients=service.patients_by_id(session=session, ids=patient_ids),
            by_patient=service.identities_of_patients(session=session, patient_ids=patient_ids),
            by_id=service.identities_by_id(session=session, ids=identity_ids),
            languages=service.conversation_languages(session=session, ids=conversation_ids),
        )
        reach.end_lapsed_verifications(session)
        reach.withdraw_phone_links(session)
        return reach

    def identities(self) -> list[IdentityRow]:
        """Return every identity loaded, each once."""
        rows = {row.id: row for group in self.by_patient.values() for row in group}
        return list({**rows, **self.by_id}.values())

    def end_lapsed_verifications(self, session: Session) -> None:
        """End the web chat verifications that lapsed, as (and audited as) when their visitor comes back.

        The texts are chosen as if they were ended either way; this makes the rows say so too, for the
        staff inbox and for anyone who reads `verified_at`.
        """
        stale = [
            i.id for i in self.identities()
            if i.channel == Channel.WEBCHAT and i.verified_at is not None and not holds(i, self.now)
        ]  # fmt: skip
        for identity in service.identities_to_change(session=session, ids=stale):
            expire_stale_verification(session=session, identity=identity, now=self.now)

    def withdraw_phone_links(self, session: Session) -> None:
        """Withdraw the links whose number is no longer on file for exactly their patient.

        Lab intake withdraws them as it files a number (`do_follow_phone_file`); this stands behind it,
        for a file changed some other way. An SMS number on file and a Telegram chat's shared contact
        alike: from then on neither patient of a family line gets the other's texts. One query for the
        whole batch.
        """
        links = [i for i in self.identities() if i.verified_at is not None and linked_by_phone(i)]
        linked = {i.id: linked_by_phone(i) or "" for i in links}
        on_file = patients_on_phones(session=session, phones=linked.values())
        broken = {i.id for i in links if on_file.get(linked[i.id], []) != [i.patient_id]}
        if not broken:
            return
        for identity in service.identities_to_change(session=session, ids=broken):
            do_withdraw_phone_link(
                session=session, identity=identity, patients_on_file=len(on_file.get(linked[identity.id], []))
            )

        def withdrawn(row: IdentityRow) -> IdentityRow:
            return replace(row, verified_at=None) if row.id in broken else row

        self.by_patient = {key: [withdrawn(row) for row in rows] for key, rows in self.by_patient.items()}
        self.by_id = {key: withdrawn(row) for key, row in self.by_id.items()}

    def target(
        self, *, patient_id: int | None, identity_id: int | None, conversation_id: int | None
    ) -> tuple[IdentityRow | None, PatientRow | None, str]:
        patient = self.patients.get(patient_id) if patient_id is not None else None
        identity = choose_identity(
            patient_identities=self.by_patient.get(patient_id, []) if patient_id is not None else [],
            promise_identity=self.by_id.get(identity_id) if identity_id is not None else None,
            now=self.now,
        )
        if patient is not None:
            lang = patient.language
        else:
            lang = self.languages.get(conversation_id, "en") if conversation_id is not None else "en"
        return identity, patient, lang_code(lang)


def next_update_for(wording: Wording, *, due_at: datetime) -> datetime:
    """Return when the update after this one is due: the next update time, or the first one after a later due.

    A promise is claimed before its due only when lab intake moved the due later after an update had told
    the patient when the next one comes: that update is kept, and the one after waits for the new due.
    """
    assert wording.next_update_at is not None
    if due_at <= wording.now:
        return wording.next_update_at
    return wording.clinic.next_update_at(wording.now, not_before=due_at)


def _late_batch(session: Session, rows: Sequence[Any], *, wording: Wording, today: date) -> SweepCounts:
    """Plan and write one claimed batch of late promises."""
    reach = _Reach.load(
        session,
        now=wording.now,
        patient_ids=[r.patient_id for r in rows if r.patient_id is not None],
        identity_ids=[r.identity_id for r in rows if r.identity_id is not None],
        conversation_ids=[r.conversation_id for r in rows if r.conversation_id is not None],
    )
    effects, moves_to = [], {}
    for row in rows:
        next_at = next_update_for(wording, due_at=row.due_at)
        moves_to.setdefault(next_at, []).append(row.id)
        identity, patient, lang = reach.target(
            patient_id=row.patient_id, identity_id=row.identity_id, conversation_id=row.conversation_id
        )
        if identity is None:
            effects.append(_Effect(row.id, UpdateKind.CALL_LIST, row.reason_key, counts_as="call_list"))
            continue
        known = is_known(identity, patient, now=wording.now)
        body = wording.render(
            update_response(row.reason_key), lang=lang, patient=patient, known=known, next_update_at=next_at
        )
        key = outbox_key(promise_id=row.id, local_date=today, kind=UpdateKind.LATE_UPDATE)
        text = _text_row(key=key, identity=identity, body=body, conversation_id=row.conversation_id)
        effects.append(
            _Effect(row.id, UpdateKind.LATE_UPDATE, row.reason_key, text=text, next_update_at=next_at)
        )
    written = _write(session, effects, today=today, now=wording.now)
    # Every claimed promise moves on, those another sweeper wrote first included: they were handled today.
    for next_at, promise_ids in moves_to.items():
        service.set_next_update(session=session, promise_ids=promise_ids, at=next_at)
    counts = SweepCounts()
    for effect in written:
        setattr(counts, effect.counts_as, getattr(counts, effect.counts_as) + 1)
    return counts


def _batches(
    claim: Callable[[Session, int], Sequence[Any]], work: Callable[[Session, Sequence[Any]], SweepCounts]
) -> SweepCounts:
    """Claim and work batches, one transaction each, until a claim comes back empty."""
    total, after_id = SweepCounts(), 0
    while True:
        with session_scope() as session:
            rows = claim(session, after_id)
            if not rows:
                return total
            total.add(work(session, rows))
        after_id = rows[-1][0]


def do_sweep_late_updates(
    *, domain: Domain, clinic: ClinicContext, now: datetime, batch_size: int = 1000
) -> SweepCounts:
    """Send one update today to every promise due by now and still open; call-list the unreachable."""
    today = late_update_day(clinic, now)
    if today is None:
        return SweepCounts()
    wording = Wording(domain=domain, clinic=clinic, now=now, next_update_at=clinic.next_update_at(now))
    return _batches(
        lambda session, after: service.claim_late(session=session, now=now, after_id=after, limit=batch_size),
        lambda session, rows: _late_batch(session, rows, wording=wording, today=today),
    )


def do_sweep_escalations(
    *, clinic: ClinicContext, now: datetime, working_days: int, batch_size: int = 1000
) -> SweepCounts:
    """Pass to staff every open promise late by `working_days` working days or more, once."""
    today = escalation_day(clinic, now)
    if today is None:
        return SweepCounts()
    cutoff = escalation_cutoff(clinic.calendar, today=today, working_days=working_days)

    def work(session: Session, rows: Sequence[Any]) -> SweepCounts:
        effects = [_Effect(row.id, UpdateKind.ESCALATION, ESCALATION_REASON_LATE) for row in rows]
        written = _write(session, effects, today=today, now=now)
        service.set_escalated(
            session=session, promise_ids=[e.promise_id for e in written if e.promise_id],
            at=now, reason=ESCALATION_REASON_LATE,
        )  # fmt: skip
        return SweepCounts(escalations=len(written))

    return _batches(
        lambda session, after: service.claim_escalations(
            session=session, due_before=cutoff, after_id=after, limit=batch_size
        ),
        work,
    )


def do_sweep_results_ready(
    *, domain: Domain, clinic: ClinicContext, now: datetime, batch_size: int = 1000
) -> SweepCounts:
    """Tell patients their results are in (inside quiet hours, any day); call-list the unreachable."""
    if not sending_hours(clinic, now):
        return SweepCounts()
    today = clinic.calendar.local_date(now)
    wording = Wording(domain=domain, clinic=clinic, now=now)

    def work(session: Session, rows: Sequence[Any]) -> SweepCounts:
        # Columns: order id, patient id, promise id, promise identity id, conversation id.
        reach = _Reach.load(
            session,
            now=now,
            patient_ids=[r[1] for r in rows],
            identity_ids=[r[3] for r in rows if r[3] is not None],
            conversation_ids=[],
        )
        effects, notified = [], []
        for order_id, patient_id, promise_id, identity_id, conversation_id in rows:
            identity, patient, lang = reach.target(
                patient_id=patient_id, identity_id=identity_id, conversation_id=None
            )
            if identity is None:
                if promise_id is not None:
                    effects.append(
                        _Effect(promise_id, UpdateKind.CALL_LIST, RESULTS_REASON, counts_as="call_list")
                    )
                else:
                    log.warning(
                        "lab order %s resulted; patient %s unreachable and no promise", order_id, patient_id
                    )
                continue
            body = wording.render(
                RESULTS_RESPONSE, lang=lang, patient=patient, known=is_known(identity, patient, now=now)
            )
            key = (
                outbox_key(promise_id=promise_id, local_date=today, kind=UpdateKind.RESULTS_READY)
                if promise_id is not None
                else f"lab_order:{order_id}:{UpdateKind.RESULTS_READY}"
            )
            text = _text_row(key=key, identity=identity, body=body, conversation_id=conversation_id)
            effects.append(
                _Effect(promise_id, UpdateKind.RESULTS_READY, RESULTS_REASON, text=text,
                        order_id=order_id, counts_as="results_ready")
            )  # fmt: skip
        # Already on today's call list for the late sweep's "not back yet": the call is now about results.
        listed = [e.promise_id for e in effects if e.kind == UpdateKind.CALL_LIST and e.promise_id]
        retagged = service.retag_call_list(
            session=session, promise_ids=listed, day=today, reason=RESULTS_REASON
        )
        effects = [e for e in effects if not (e.kind == UpdateKind.CALL_LIST and e.promise_id in retagged)]
        written = _write(session, effects, today=today, now=now)
        notified = [
            e.order_id for e in written if e.kind == UpdateKind.RESULTS_READY and e.order_id is not None
        ]
        service.set_result_notified(session=session, order_ids=notified, at=now)
        counts = SweepCounts(call_list=len(retagged))
        for effect in written:
            setattr(counts, effect.counts_as, getattr(counts, effect.counts_as) + 1)
        return counts

    return _batches(
        lambda session, after: service.claim_results(
            session=session, now=now, today=today, after_id=after, limit=batch_size
        ),
        work,
    )


def do_run_sweeps(
    *, domain: Domain, now: datetime, escalation_working_days: int, batch_size: int = 1000
) -> SweepCounts:
    """Run every sweep once as if at `now`: results first, so a result in before the update time is never late."""
    with session_scope() as session:
        clinic = load_clinic(session=session)
    counts = SweepCounts()
    counts.add(do_sweep_results_ready(domain=domain, clinic=clinic, now=now, batch_size=batch_size))
    counts.add(do_sweep_late_updates(domain=domain, clinic=clinic, now=now, batch_size=batch_size))
    counts.add(
        do_sweep_escalations(
            clinic=clinic, now=now, working_days=escalation_working_days, batch_size=batch_size
        )
    )
    log.info(
        "sweeps at %s: %s updates, %s call list, %s escalations, %s results ready",
        now.isoformat(), counts.updates, counts.call_list, counts.escalations, counts.results_ready,
    )  # fmt: skip
    return counts
