"""Read and write patients and their channel identities."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.patients.models import Channel, ChannelIdentity, Patient

# Channels whose address is a phone number the provider vouches for.
PHONE_CHANNELS = frozenset({Channel.SMS, Channel.TERMINAL})


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
                identity.verification_method = "phone_on_file"
        try:
            with session.begin_nested():
                session.add(identity)
        except IntegrityError:
            # Another request created it first; use theirs.
            identity = get_identity(session=session, channel=channel, address=address)
            assert identity is not None
    return identity
