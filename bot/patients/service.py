"""Read and write patients and their channel identities."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Protocol

import phonenumbers
from sqlalchemy import String, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.db import among, utcnow
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.staff import audit

log = logging.getLogger(__name__)

# Channels whose address is a phone number the provider vouches for.
PHONE_CHANNELS = frozenset({Channel.SMS, Channel.TERMINAL})
# The verification of a phone channel: its number is on file for exactly one patient.
PHONE_ON_FILE = "phone_on_file"
# A Telegram chat that shared its account's own number, on file for exactly one patient (bot.channels.linking).
TELEGRAM_CONTACT = "telegram_contact"


class InvalidPhoneError(ValueError):
    """A phone number could not be understood."""


def normalize_phone(raw: str, *, region: str = "US") -> str:
    """Return the E.164 form of a phone number, or raise InvalidPhoneError."""
    return _normalize_phone(raw, region)


# Every inbound text names its sender, and patients text again and again from the same few numbers:
# a valid number is parsed once (phonenumbers' parse and validation cost more than storing the text).
# Refusals raise, so they are never cached; the cache is bounded.
@lru_cache(maxsize=4096)
def _normalize_phone(raw: str, region: str) -> str:
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneError(f"not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def get_by_phone(*, session: Session, phone: str) -> Patient | None:
    """Return the patient with this E.164 phone, if exactly one has it."""
    matches = session.scalars(select(Patient).where(Patient.phone == phone).limit(2)).all()
    # Two patients sharing a phone (a family line) must not see each other's records.
    return matches[0] if len(matches) == 1 else None


def get_identity(*, session: Session, channel: str, address: str) -> ChannelIdentity | None:
    """Return the identity for a channel address, if seen before."""
    return session.scalars(
        select(ChannelIdentity).where(ChannelIdentity.channel == channel, ChannelIdentity.address == address)
    ).first()


def get_or_create_identity(*, session: Session, channel: str, address: str) -> ChannelIdentity:
    """Return the identity for a channel address, creating and linking it on first contact."""
    identity = get_identity(session=session, channel=channel, address=address)
    if identity is None:
        identity = ChannelIdentity(channel=channel, address=address)
        if channel in PHONE_CHANNELS:
            patient = get_by_phone(session=session, phone=address)
            if patient is not None:
                # The number on file is the verification factor for phone channels.
                identity.patient_id = patient.id
                identity.verified_at = utcnow()
                identity.verification_method = PHONE_ON_FILE
        try:
            with session.begin_nested():
                session.add(identity)
        except IntegrityError:
            # Another request created it first; use theirs.
            identity = get_identity(session=session, channel=channel, address=address)
            assert identity is not None
    return identity


class _Link(Protocol):
    """What says which number an identity's link rests on: a ChannelIdentity, or a sweep's row of one."""

    @property
    def address(self) -> str: ...
    @property
    def verification_method(self) -> str | None: ...
    @property
    def linked_phone(self) -> str | None: ...


def linked_by_phone(identity: _Link) -> str | None:
    """Return the number on the patient file that an identity's link rests on, or None for other links.

    A Telegram contact link made before that number was kept (migration 0013) rests on a number nobody
    knows: it cannot be checked again, and is trusted as it was made.
    """
    if identity.verification_method == PHONE_ON_FILE:
        return identity.address
    if identity.verification_method == TELEGRAM_CONTACT:
        return identity.linked_phone
    return None


def verified_patient(*, session: Session, identity: ChannelIdentity) -> Patient | None:
    """Return the patient whose personal information may be shared over an identity, or None.

    A link that rests on a phone number (an SMS number on file, a Telegram chat's shared contact) is
    checked again each time, in the one indexed query that also loads the patient: the number may since
    have been filed for a second patient (a family line), and then neither may read the other's
    records. A link that no longer holds is withdrawn. (`do_follow_phone_file` withdraws it as soon as
    the file changes; this check stands behind it.)
    """
    if not identity.is_verified:
        return None
    phone = linked_by_phone(identity)
    if phone is None:
        return session.get(Patient, identity.patient_id)
    # No flush: the engine routes a batch of messages and writes their changes in one flush after.
    with session.no_autoflush:
        on_file = session.scalars(select(Patient).where(Patient.phone == phone).limit(2)).all()
    if [patient.id for patient in on_file] == [identity.patient_id]:
        return on_file[0]
    do_withdraw_phone_link(session=session, identity=identity, patients_on_file=len(on_file))
    return None


def patients_on_phones(*, session: Session, phones: Iterable[str]) -> dict[str, list[int]]:
    """Return, by number, the ids of the patients it is on file for (a number nobody has is left out)."""
    wanted = sorted(set(phones))
    on_file: dict[str, list[int]] = {}
    if not wanted:
        return on_file
    rows = session.execute(
        select(Patient.phone, Patient.id).where(among(session, Patient.phone, wanted, element=String)).order_by(Patient.id)
    )
    for phone, patient_id in rows.tuples():
        on_file.setdefault(phone, []).append(patient_id)
    return on_file


def link_identity(
    *, session: Session, identity: ChannelIdentity, patient_id: int, method: str, actor_kind: str,
    details: dict[str, Any], linked_phone: str | None = None,
) -> None:  # fmt: skip
    """Mark an identity as verified for a patient, audited, and attach its open conversations to them."""
    from bot.conversations.models import Conversation, ConversationState

    previous = identity.patient_id
    identity.patient_id, identity.verified_at = patient_id, utcnow()
    identity.verification_method, identity.linked_phone = method, linked_phone
    # Staff see the open conversation under the patient from now on.
    session.execute(
        update(Conversation)
        .where(Conversation.identity_id == identity.id, Conversation.state != ConversationState.CLOSED)
        .values(patient_id=patient_id)
    )
    audit.record(
        session=session, actor_kind=actor_kind, action="identity.linked",
        subject_type="channel_identity", subject_id=identity.id,
        details={"patient_id": patient_id, "method": method, "previous_patient_id": previous, **details},
    )  # fmt: skip
    log.info("identity %s linked to patient %s (%s)", identity.id, patient_id, method)


def do_follow_phone_file(*, session: Session, phones: Iterable[str | None]) -> None:
    """Bring every link that rests on these numbers in line with the patient file, now (audited).

    Called wherever a patient's number is written (lab intake, erasure), in the same transaction:
    - an SMS number on file for exactly one patient verifies that patient, as on first contact. A
      stranger who texted before the lab filed their number is verified from then on, and a family
      line that is one patient's again is theirs again;
    - a number on file for nobody, or for two patients, verifies nobody: its SMS link and the Telegram
      chats linked by sharing it are withdrawn, so neither patient sees the other's records, and the
      staff inbox stops showing either name for it;
    - a Telegram chat is never linked here: only the chat itself can share its number again.
    """
    wanted = sorted({phone for phone in phones if phone})
    if not wanted:
        return
    on_file = patients_on_phones(session=session, phones=wanted)
    identities = session.scalars(
        select(ChannelIdentity)
        .where(
            or_(
                and_(ChannelIdentity.channel.in_(PHONE_CHANNELS), among(session, ChannelIdentity.address, wanted, element=String)),
                and_(ChannelIdentity.verification_method == TELEGRAM_CONTACT,
                     among(session, ChannelIdentity.linked_phone, wanted, element=String)),
            )
        )
        .order_by(ChannelIdentity.id)
    ).all()
    for identity in identities:
        phone = identity.address if identity.channel in PHONE_CHANNELS else identity.linked_phone
        patients = on_file.get(phone or "", [])
        only = patients[0] if len(patients) == 1 else None
        if identity.channel in PHONE_CHANNELS:
            if identity.verified_at is not None and identity.verification_method != PHONE_ON_FILE:
                continue  # verified some other way: not this number's to undo
            if only is not None:
                if identity.patient_id != only or identity.verified_at is None:
                    link_identity(session=session, identity=identity, patient_id=only, method=PHONE_ON_FILE,
                                  actor_kind="system", details={"reason": "phone_on_file"})  # fmt: skip
                continue
        if identity.verified_at is not None and only != identity.patient_id:
            do_withdraw_phone_link(session=session, identity=identity, patients_on_file=len(patients))


def do_withdraw_phone_link(*, session: Session, identity: ChannelIdentity, patients_on_file: int) -> bool:
    """Stop trusting a link whose number is no longer on file for exactly its patient (audited); return whether it was."""
    if identity.verified_at is None:
        return False
    identity.verified_at = None
    # Keep patient_id, as an ended web chat verification does: whose number it was stays on record.
    audit.record(
        session=session,
        actor_kind="system",
        action="identity.link_withdrawn",
        subject_type="channel_identity",
        subject_id=identity.id,
        details={
            "patient_id": identity.patient_id,
            "method": identity.verification_method,
            "reason": "phone_shared" if patients_on_file > 1 else "phone_not_on_file",
        },
    )
    log.info("identity %s: phone link to patient %s withdrawn", identity.id, identity.patient_id)
    return True
