"""Read and write patients and their channel identities."""

from __future__ import annotations

import logging
from functools import lru_cache

import phonenumbers
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.patients.models import Channel, ChannelIdentity, Patient
from bot.staff import audit

log = logging.getLogger(__name__)

# Channels whose address is a phone number the provider vouches for.
PHONE_CHANNELS = frozenset({Channel.SMS, Channel.TERMINAL})
# The verification of a phone channel: its number is on file for exactly one patient.
PHONE_ON_FILE = "phone_on_file"


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


def verified_patient(*, session: Session, identity: ChannelIdentity) -> Patient | None:
    """Return the patient whose personal information may be shared over an identity, or None.

    A phone-on-file link is checked again each time, in the one indexed query that also loads the
    patient: lab intake may since have filed the number for a second patient (a family line), and then
    neither may read the other's records. A link that no longer holds is withdrawn.
    """
    if not identity.is_verified:
        return None
    if identity.verification_method != PHONE_ON_FILE:
        return session.get(Patient, identity.patient_id)
    # No flush: the engine routes a batch of messages and writes their changes in one flush after.
    with session.no_autoflush:
        on_file = session.scalars(select(Patient).where(Patient.phone == identity.address).limit(2)).all()
    if [patient.id for patient in on_file] == [identity.patient_id]:
        return on_file[0]
    do_withdraw_phone_link(session=session, identity=identity, patients_on_file=len(on_file))
    return None


def do_withdraw_phone_link(*, session: Session, identity: ChannelIdentity, patients_on_file: int) -> bool:
    """Stop trusting a phone no longer on file for exactly its patient (audited); return whether it was."""
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
            "method": PHONE_ON_FILE,
            "reason": "phone_shared" if patients_on_file > 1 else "phone_not_on_file",
        },
    )
    log.info("identity %s: phone link to patient %s withdrawn", identity.id, identity.patient_id)
    return True
