"""The values every response may use, filled from the clinic's settings and the patient."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.clinic_settings import ClinicContext
from bot.patients.models import Patient


def clinic_values(*, clinic: ClinicContext, lang: str, patient: Patient | None, now: datetime) -> dict[str, Any]:
    """Return the global placeholders: clinic details, today's and the week's hours, the patient's name."""
    today = clinic.calendar.local_date(now)
    return {
        "clinic_name": clinic.name,
        "phone": clinic.phone,
        "address": clinic.address,
        "portal_url": clinic.portal_url,
        "emergency_number": clinic.emergency_number,
        "crisis_line": clinic.crisis_line,
        "hours_today": clinic.calendar.hours_text(today, lang=lang),
        "hours_week": clinic.calendar.week_text(lang=lang),
        # Only a verified patient's name is ever used: the caller passes None otherwise.
        "name": patient.display_name if patient is not None else "",
    }
