"""The clinic's stored settings and the context built from them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from bot.clinic import ClinicCalendar, ClinicConfigError
from bot.db import Base

# On a day the clinic closes before the daily update time, late updates go this long before it closes.
HALF_DAY_LEAD = timedelta(minutes=30)


class ClinicProfile(Base):
    """One clinic's identity, hours and policies (one row per deployment)."""

    __tablename__ = "clinic"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(400))
    portal_url: Mapped[str] = mapped_column(String(400), default="")
    timezone: Mapped[str] = mapped_column(String(64))
    weekly_hours: Mapped[dict[str, Any]]
    holiday_country: Mapped[str | None] = mapped_column(String(8))
    holiday_subdivision: Mapped[str | None] = mapped_column(String(16))
    closures: Mapped[list[Any]]
    daily_update_time: Mapped[str] = mapped_column(String(5), default="16:00")
    quiet_start: Mapped[str] = mapped_column(String(5), default="08:00")
    quiet_end: Mapped[str] = mapped_column(String(5), default="20:00")
    emergency_number: Mapped[str] = mapped_column(String(16), default="911")
    crisis_line: Mapped[str] = mapped_column(String(16), default="988")


def _parse_clock(setting: str, value: str) -> time:
    try:
        hour, minute = value.split(":")
        return time(int(hour), int(minute))
    except (ValueError, AttributeError):
        raise ClinicConfigError(setting, f"expected HH:MM, got {value!r}") from None


@dataclass(frozen=True)
class ClinicContext:
    """A validated clinic: its profile values, calendar and policy times."""

    id: int
    name: str
    phone: str
    address: str
    portal_url: str
    emergency_number: str
    crisis_line: str
    calendar: ClinicCalendar
    daily_update_time: time
    quiet_start: time
    quiet_end: time

    @property
    def update_time(self) -> time:
        """Return the local time late updates go out: the daily update time, held back to quiet_start."""
        # Texts wait for quiet hours; a patient told "by 7 am" must not hear from us at 8.
        return max(self.daily_update_time, self.quiet_start)

    def update_time_on(self, day: date) -> time:
        """Return the local time a day's late updates go out (`update_time`), in the clinic's hours.

        On a day the clinic closes by then (a half-day, a Saturday morning) they go HALF_DAY_LEAD before
        it closes, not after it opens nor before quiet_start: staff are there to take the replies, and a
        patient is never told "by 4 pm" on a day nobody is in at 4.
        """
        at = self.update_time
        hours = self.calendar.hours[day.weekday()]
        if hours and at >= hours[-1][1]:
            opens, closes = hours[0][0], hours[-1][1]
            at = max((datetime.combine(day, closes) - HALF_DAY_LEAD).time(), opens, self.quiet_start)
        return at

    def next_update_at(self, now: datetime, *, not_before: datetime | None = None) -> datetime:
        """Return the next daily status-update time on a working day, after now and not before not_before."""
        start = now if not_before is None else max(now, not_before)
        day = self.calendar.local_date(start)
        if not self.calendar.is_working_day(day):
            day = self.calendar.next_working_day(day)
        at = self.calendar.at_local(day, self.update_time_on(day))
        while at <= now or at < start:
            day = self.calendar.next_working_day(day)
            at = self.calendar.at_local(day, self.update_time_on(day))
        return at

    @classmethod
    def from_profile(cls, profile: ClinicProfile) -> ClinicContext:
        """Validate a stored profile; errors name the bad setting."""
        for setting in ("name", "phone", "timezone", "emergency_number"):
            if not str(getattr(profile, setting) or "").strip():
                raise ClinicConfigError(setting, "must not be empty")
        calendar = ClinicCalendar.build(
            timezone=profile.timezone,
            hours=profile.weekly_hours or {},
            holiday_country=profile.holiday_country,
            holiday_subdivision=profile.holiday_subdivision,
            closures=profile.closures or [],
        )
        quiet_start = _parse_clock("quiet_start", profile.quiet_start)
        quiet_end = _parse_clock("quiet_end", profile.quiet_end)
        if quiet_end <= quiet_start:
            raise ClinicConfigError("quiet_end", "must be later than quiet_start")
        daily_update_time = _parse_clock("daily_update_time", profile.daily_update_time)
        if daily_update_time >= quiet_end:
            # Late updates go out only inside quiet hours: from this time on none would ever be sent.
            raise ClinicConfigError(
                "daily_update_time",
                f"{daily_update_time:%H:%M} is not earlier than quiet_end {quiet_end:%H:%M}; "
                "late updates are sent only inside quiet hours, so none would ever go out",
            )
        return cls(
            id=profile.id,
            name=profile.name,
            phone=profile.phone,
            address=profile.address,
            portal_url=profile.portal_url,
            emergency_number=profile.emergency_number,
            crisis_line=profile.crisis_line,
            calendar=calendar,
            daily_update_time=daily_update_time,
            quiet_start=quiet_start,
            quiet_end=quiet_end,
        )


class ClinicMissingError(LookupError):
    """No clinic has been set up in this database."""


def load_clinic(*, session: Session) -> ClinicContext:
    """Load and validate the clinic once per transaction; raise ClinicMissingError when none is set up."""
    # The engine and every action it runs share one session per message: build the calendar once.
    cached = session.info.get("clinic_context")
    if cached is not None:
        return cached
    profile = session.scalars(select(ClinicProfile).order_by(ClinicProfile.id).limit(1)).first()
    if profile is None:
        raise ClinicMissingError("no clinic in the database; run `clinicbot init --demo` or `clinicbot init`")
    context = ClinicContext.from_profile(profile)
    session.info["clinic_context"] = context
    return context
