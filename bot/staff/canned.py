"""Canned replies: approved wording in English and Spanish, with placeholders filled per patient."""

from __future__ import annotations

import string

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clinic_settings import load_clinic
from bot.conversations.models import Conversation
from bot.patients.models import ChannelIdentity
from bot.patients.service import verified_patient
from bot.staff import audit
from bot.staff.models import CannedReply

PLACEHOLDERS = ("patient_name", "staff_name", "clinic_name", "clinic_phone")
MAX_TITLE_CHARS = 120
MAX_BODY_CHARS = 1600


class CannedError(ValueError):
    """A canned reply was refused; the message says what to fix."""


def placeholder_problems(text: str) -> list[str]:
    """Return what is wrong with a body's placeholders (unknown names, stray braces), or nothing."""
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(text)
            if name is not None
        ]
    except ValueError:
        return ["a { or } without its pair (write {{ or }} for a literal brace)"]
    problems = []
    unknown = sorted({name for name, _, _ in fields if name not in PLACEHOLDERS})
    if "" in unknown:
        problems.append("an empty {} placeholder")
        unknown.remove("")
    if unknown:
        problems.append("unknown placeholder(s) " + ", ".join("{" + name + "}" for name in unknown))
    if any(spec or conversion for _, spec, conversion in fields):
        problems.append("placeholders must be plain, like {patient_name}")
    return problems


def _validate(*, title: str, body_en: str, body_es: str) -> tuple[str, str, str]:
    title, body_en, body_es = title.strip(), body_en.strip(), body_es.strip()
    if not title:
        raise CannedError("Give the reply a title.")
    if len(title) > MAX_TITLE_CHARS:
        raise CannedError(f"Titles are limited to {MAX_TITLE_CHARS} characters.")
    for label, body in (("English", body_en), ("Spanish", body_es)):
        if not body:
            raise CannedError(f"The {label} text is empty.")
        if len(body) > MAX_BODY_CHARS:
            raise CannedError(f"The {label} text is longer than {MAX_BODY_CHARS} characters.")
        problems = placeholder_problems(body)
        if problems:
            allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
            raise CannedError(f"The {label} text has {'; '.join(problems)}. Allowed: {allowed}.")
    return title, body_en, body_es


def list_canned(*, session: Session, active_only: bool = False) -> list[CannedReply]:
    """Return canned replies by title."""
    query = select(CannedReply).order_by(CannedReply.active.desc(), CannedReply.title)
    if active_only:
        query = query.where(CannedReply.active.is_(True))
    return list(session.scalars(query))


def _title_taken(session: Session, title: str, *, other_than: int | None = None) -> bool:
    query = select(CannedReply.id).where(CannedReply.title == title)
    if other_than is not None:
        query = query.where(CannedReply.id != other_than)
    return session.scalars(query).first() is not None


def do_create_canned(
    *, session: Session, staff_id: int, title: str, body_en: str, body_es: str
) -> CannedReply:
    """Add an approved reply; raise CannedError when it is not valid."""
    title, body_en, body_es = _validate(title=title, body_en=body_en, body_es=body_es)
    if _title_taken(session, title):
        raise CannedError(f"A canned reply titled {title!r} already exists.")
    reply = CannedReply(title=title, body_en=body_en, body_es=body_es, active=True)
    session.add(reply)
    session.flush()
    audit.record(session=session, actor_kind="staff", actor_id=staff_id, action="canned.created",
                 subject_type="canned_reply", subject_id=reply.id)  # fmt: skip
    return reply


def _get(session: Session, canned_id: int) -> CannedReply:
    reply = session.get(CannedReply, canned_id)
    if reply is None:
        raise LookupError(f"There is no canned reply {canned_id}.")
    return reply


def do_update_canned(
    *, session: Session, staff_id: int, canned_id: int, title: str, body_en: str, body_es: str
) -> CannedReply:
    """Change a reply's wording; raise CannedError when it is not valid."""
    reply = _get(session, canned_id)
    title, body_en, body_es = _validate(title=title, body_en=body_en, body_es=body_es)
    if _title_taken(session, title, other_than=reply.id):
        raise CannedError(f"A canned reply titled {title!r} already exists.")
    reply.title, reply.body_en, reply.body_es = title, body_en, body_es
    audit.record(session=session, actor_kind="staff", actor_id=staff_id, action="canned.updated",
                 subject_type="canned_reply", subject_id=reply.id)  # fmt: skip
    return reply


def do_set_canned_active(*, session: Session, staff_id: int, canned_id: int, active: bool) -> CannedReply:
    """Withdraw a reply from use, or bring it back."""
    reply = _get(session, canned_id)
    reply.active = active
    audit.record(session=session, actor_kind="staff", actor_id=staff_id,
                 action="canned.activated" if active else "canned.deactivated",
                 subject_type="canned_reply", subject_id=reply.id)  # fmt: skip
    return reply


def render_canned(*, session: Session, canned_id: int, conversation: Conversation, staff_name: str) -> str:
    """Return an active reply in the conversation's language with its placeholders filled."""
    reply = _get(session, canned_id)
    if not reply.active:
        raise LookupError(f"Canned reply {canned_id} is no longer in use.")
    identity = session.get(ChannelIdentity, conversation.identity_id)
    patient = verified_patient(session=session, identity=identity) if identity is not None else None
    clinic = load_clinic(session=session)
    values = {
        # Only a verified patient's name: an unverified sender may not be who the record says.
        "patient_name": patient.display_name if patient is not None else "",
        "staff_name": staff_name,
        "clinic_name": clinic.name,
        "clinic_phone": clinic.phone,
    }
    body = reply.body_es if conversation.language == "es" else reply.body_en
    text = body.format_map(values)
    # An empty name leaves "Hi , ..." behind: tidy the gap.
    return text.replace(" ,", ",").replace("  ", " ").strip()
