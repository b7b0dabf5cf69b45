"""Helpers shared by the actions: tracker reading and rendering times for the patient."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from rasa_sdk import Tracker

from bot.clinic_settings import ClinicContext
from bot.when import render_by_day, render_day, render_due


def conversation_id(tracker: Tracker) -> int:
    """Return the clinicbot conversation behind a tracker (its sender id)."""
    return int(tracker.get_slot("conversation_id") or tracker.sender_id)


def language(tracker: Tracker) -> str:
    """Return the conversation language slot, English by default."""
    return tracker.get_slot("language") or "en"


def response_text(domain: dict[str, Any], key: str) -> str:
    """Return the first wording of a short response such as a team name."""
    variations = (domain.get("responses") or {}).get(key) or [{"text": key}]
    return str(variations[0].get("text", key))


def due_phrase(*, clinic: ClinicContext, due: datetime, lang: str) -> str:
    """Render a promised time for the patient in clinic time."""
    return render_due(due=due, now=datetime.now(tz=UTC), tz=clinic.calendar.tz, lang=lang)


def day_phrase(*, clinic: ClinicContext, at: datetime, lang: str) -> str:
    """Render the clinic-local day of a moment ("Monday, Nov 23")."""
    today = clinic.calendar.local_date(datetime.now(tz=UTC))
    return render_day(day=clinic.calendar.local_date(at), today=today, lang=lang)


def by_day_phrase(*, clinic: ClinicContext, at: datetime, lang: str) -> str:
    """Render an expected day ("by Thursday"); a time of midnight ends the day before, as in render_due."""
    today = clinic.calendar.local_date(datetime.now(tz=UTC))
    local = clinic.calendar.local(at)
    day = local.date() - timedelta(days=1) if local.time() == time(0, 0) else local.date()
    return render_by_day(day=day, today=today, lang=lang)
