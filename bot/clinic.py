"""Clinic working-time calendar: opening hours, holidays, closures and working-minute arithmetic.

All inputs and outputs are timezone-aware; results are UTC. Clinic-local time (zoneinfo) is used
only to decide which wall-clock hours are open on which local day, and to render text.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from bot.when import DAY_ABBR, format_time, lang_code

__all__ = [
    "DAYS",
    "ClinicCalendar",
    "ClinicConfigError",
    "parse_weekly_hours",
]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Hours = Mapping[int, tuple[tuple[time, time], ...]]

_CLOSED_WORDS = frozenset({"closed"})
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
# Bounds every day-by-day search so a calendar that never opens fails loudly instead of hanging;
# ten years is far longer than any realistic closure.
_MAX_SEARCH_DAYS = 3660

# The holidays package names US holidays in English only (and Thai); these are the names Spanish-language
# US government pages use. A name not here (a state's own holiday) stays in English.
_US_HOLIDAYS_ES = {
    "New Year's Day": "Año Nuevo",
    "Martin Luther King Jr. Day": "Día de Martin Luther King Jr.",
    "Washington's Birthday": "Día de los Presidentes",
    "Memorial Day": "Día de los Caídos",
    "Juneteenth National Independence Day": "Juneteenth",
    "Independence Day": "Día de la Independencia",
    "Labor Day": "Día del Trabajo",
    "Columbus Day": "Día de Colón",
    "Veterans Day": "Día de los Veteranos",
    "Thanksgiving Day": "Día de Acción de Gracias",
    "Christmas Day": "Navidad",
    "Inauguration Day": "Día de la Investidura",
}
_OBSERVED = {"en": " (observed)", "es": " (feriado observado)"}


class ClinicConfigError(ValueError):
    """A clinic setting is invalid; message names the setting and the problem."""

    def __init__(self, setting: str, problem: str) -> None:
        """Record the offending setting and a human-readable problem."""
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def _parse_clock(text: str, *, setting: str) -> time:
    """Parse 'HH:MM' (24-hour) into a time."""
    match = _TIME_RE.match(text.strip())
    if not match:
        raise ClinicConfigError(setting, f"invalid time {text.strip()!r}; expected HH:MM (24-hour)")
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise ClinicConfigError(setting, f"invalid time {text.strip()!r}; expected 00:00-23:59")
    return time(hour, minute)


def _parse_day(value: object, *, setting: str) -> tuple[tuple[time, time], ...]:
    """Parse one day's spec such as '08:00-12:00,13:00-18:00' or 'closed'."""
    if not isinstance(value, str):
        raise ClinicConfigError(setting, f"expected a string like '08:00-18:00' or 'closed', got {value!r}")
    text = value.strip()
    if text.lower() in _CLOSED_WORDS:
        return ()
    if not text:
        raise ClinicConfigError(setting, "empty; use 'closed' for a closed day")
    ranges: list[tuple[time, time]] = []
    for part in text.split(","):
        bounds = part.split("-")
        if len(bounds) != 2:
            raise ClinicConfigError(setting, f"invalid range {part.strip()!r}; expected HH:MM-HH:MM")
        start = _parse_clock(bounds[0], setting=setting)
        end = _parse_clock(bounds[1], setting=setting)
        if end <= start:
            # Overnight ranges are unsupported: each range must belong to a single local day.
            raise ClinicConfigError(setting, f"range {part.strip()!r} ends at or before it starts")
        ranges.append((start, end))
    ranges.sort()
    for (_, prev_end), (next_start, _) in itertools.pairwise(ranges):
        if next_start < prev_end:
            raise ClinicConfigError(
                setting,
                f"ranges overlap ({next_start:%H:%M} starts before {prev_end:%H:%M})",
            )
    return tuple(ranges)


def parse_weekly_hours(spec: Mapping[str, str]) -> dict[int, tuple[tuple[time, time], ...]]:
    """Parse {"mon": "08:00-18:00", "sat": "closed", "tue": "08:00-12:00,13:00-18:00"}; missing days are closed."""
    if not isinstance(spec, Mapping):
        raise ClinicConfigError("hours", f"expected a mapping of day to hours, got {type(spec).__name__}")
    parsed: dict[int, tuple[tuple[time, time], ...]] = {index: () for index in range(7)}
    seen: set[int] = set()
    for key, value in spec.items():
        name = key.strip().lower() if isinstance(key, str) else key
        if name not in DAYS:
            raise ClinicConfigError(f"hours.{key}", f"unknown day {key!r}; expected one of {', '.join(DAYS)}")
        index = DAYS.index(name)
        if index in seen:
            raise ClinicConfigError(f"hours.{name}", "day given more than once")
        seen.add(index)
        parsed[index] = _parse_day(value, setting=f"hours.{name}")
    return parsed


def _parse_closure(value: object) -> date:
    """Parse one closure entry from a date or an ISO 'YYYY-MM-DD' string."""
    # datetime subclasses date but never equals one, so it would silently never match.
    if isinstance(value, datetime):
        raise ClinicConfigError("closures", f"expected a date, got datetime {value!r}")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            raise ClinicConfigError("closures", f"invalid date {value!r}; expected YYYY-MM-DD") from None
    raise ClinicConfigError("closures", f"expected a date or 'YYYY-MM-DD', got {value!r}")


def _require_aware(value: datetime, name: str) -> None:
    """Reject naive datetimes, whose meaning depends on the host clock."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value!r}")


@dataclass(frozen=True)
class ClinicCalendar:
    """Working-time calendar of one clinic."""

    tz: ZoneInfo
    # Mappings are unhashable; leaving hours out of the hash keeps the calendar usable as a key.
    hours: Hours = field(hash=False)
    holiday_country: str | None = "US"
    holiday_subdivision: str | None = None
    closures: frozenset[date] = frozenset()
    # Per-year holiday tables, filled lazily; each entry is written once and never mutated, so
    # concurrent readers at worst compute the same year twice (unlike holidays' own auto-expand).
    _holiday_years: dict[int, Mapping[date, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    # The same in Spanish, where the holidays package has the country's names in Spanish (else empty).
    _holiday_years_es: dict[int, Mapping[date, str]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        """Copy the hours and closures so later caller mutations cannot change the calendar."""
        # A plain dict (not MappingProxyType) keeps the calendar picklable.
        own_hours = {day: tuple(self.hours.get(day, ())) for day in range(7)}
        object.__setattr__(self, "hours", own_hours)
        object.__setattr__(self, "closures", frozenset(self.closures))

    @classmethod
    def build(
        cls,
        *,
        timezone: str,
        hours: Mapping[str, str],
        holiday_country: str | None,
        holiday_subdivision: str | None = None,
        closures: Iterable[date | str] = (),
    ) -> ClinicCalendar:
        """Validate settings and build a calendar."""
        tz = _load_zone(timezone)
        weekly = parse_weekly_hours(hours)
        if not any(weekly.values()):
            raise ClinicConfigError("hours", "the clinic is closed every day of the week")
        _check_holidays(holiday_country, holiday_subdivision)
        # Stored as JSON, so any value can arrive here: only a list (or set) of dates is one.
        if isinstance(closures, str | date) or not isinstance(closures, list | tuple | set | frozenset):
            raise ClinicConfigError("closures", f"expected a list of dates, got {closures!r}")
        closed_days = frozenset(_parse_closure(value) for value in closures)
        return cls(
            tz=tz,
            hours=weekly,
            holiday_country=holiday_country,
            holiday_subdivision=holiday_subdivision,
            closures=closed_days,
        )

    # -- days -------------------------------------------------------------------------------

    def holiday_name(self, day: date, *, lang: str = "en") -> str | None:
        """Return the public holiday's name on a local day, in English or Spanish ("es"), or None."""
        if self.holiday_country is None:
            return None
        table = self._holiday_years.get(day.year)
        if table is None:
            table = dict(
                holidays.country_holidays(
                    self.holiday_country, subdiv=self.holiday_subdivision, years=day.year
                )
            )
            self._holiday_years[day.year] = table
        name = table.get(day)
        if name is None or lang_code(lang) != "es":
            return name
        return self._spanish_holiday_name(day, name)

    def _spanish_holiday_name(self, day: date, english: str) -> str:
        """Return a holiday's Spanish name: the package's where it has one, else the US table, else English."""
        table = self._holiday_years_es.get(day.year)
        if table is None:
            country = holidays.country_holidays(self.holiday_country, subdiv=self.holiday_subdivision, years=day.year)
            table = {}
            if "es" in (getattr(country, "supported_languages", None) or ()):
                table = dict(holidays.country_holidays(self.holiday_country, subdiv=self.holiday_subdivision,
                                                       years=day.year, language="es"))  # fmt: skip
            self._holiday_years_es[day.year] = table
        if day in table:
            return table[day]
        base = english.removesuffix(_OBSERVED["en"])
        spanish = _US_HOLIDAYS_ES.get(base) if self.holiday_country == "US" else None
        if spanish is None:
            return english
        return spanish + (_OBSERVED["es"] if base != english else "")

    def is_working_day(self, day: date) -> bool:
        """Return whether the clinic has hours that weekday and is not closed for a holiday or closure."""
        return bool(self.hours[day.weekday()]) and day not in self.closures and self.holiday_name(day) is None

    def next_working_day(self, day: date) -> date:
        """Return the first working day strictly after day."""
        candidate = day
        for _ in range(_MAX_SEARCH_DAYS):
            candidate += timedelta(days=1)
            if self.is_working_day(candidate):
                return candidate
        raise ValueError(f"no working day within {_MAX_SEARCH_DAYS} days after {day}")

    # -- instants ---------------------------------------------------------------------------

    def local(self, at: datetime) -> datetime:
        """Convert an aware datetime to clinic-local time."""
        _require_aware(at, "at")
        return at.astimezone(self.tz)

    def local_date(self, at: datetime) -> date:
        """Return the clinic-local calendar date of an aware datetime."""
        return self.local(at).date()

    def at_local(self, day: date, t: time) -> datetime:
        """Convert a clinic-local wall time to aware UTC; gap times map to the transition, fold times to their first occurrence."""
        # 02:30 on spring-forward day does not exist: the first valid instant after it is the
        # transition itself (03:00 local). 01:30 on fall-back day happens twice: take the first,
        # so an opening at that hour is never promised an hour late.
        wall = datetime.combine(day, t.replace(tzinfo=None))
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if first.astimezone(self.tz).replace(tzinfo=None) == wall:
            # Valid wall time; fold=0 already picks the first occurrence when ambiguous.
            return first
        # Gap: fold=0 reads the wall time with the pre-transition offset and fold=1 with the
        # post-transition one, so the transition lies between the two readings. tzdata
        # transitions fall on whole seconds; bisect over integer timestamps to find it.
        second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        low = math.floor(min(first, second).timestamp())
        high = math.ceil(max(first, second).timestamp())
        after_offset = datetime.fromtimestamp(high, UTC).astimezone(self.tz).utcoffset()
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, UTC).astimezone(self.tz).utcoffset() == after_offset:
                high = middle
            else:
                low = middle
        return datetime.fromtimestamp(high, UTC)

    def opening_intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        """Return the day's opening intervals as aware UTC half-open [start, end) pairs."""
        if not self.is_working_day(day):
            return []
        intervals = []
        for start, end in self.hours[day.weekday()]:
            start_utc, end_utc = self.at_local(day, start), self.at_local(day, end)
            # A range lying entirely inside a DST gap collapses to nothing.
            if end_utc > start_utc:
                intervals.append((start_utc, end_utc))
        return intervals

    def is_open(self, at: datetime) -> bool:
        """Return whether the clinic is open at an aware instant."""
        _require_aware(at, "at")
        return any(start <= at < end for start, end in self.opening_intervals(self.local_date(at)))

    def _intervals_from(self, at: datetime) -> Iterable[tuple[datetime, datetime]]:
        """Yield opening intervals that end after at, in time order."""
        day = self.local_date(at)
        for _ in range(_MAX_SEARCH_DAYS):
            for start, end in self.opening_intervals(day):
                if end > at:
                    yield start, end
            day += timedelta(days=1)
        raise ValueError(f"clinic does not open within {_MAX_SEARCH_DAYS} days after {at.isoformat()}")

    def next_open(self, at: datetime) -> datetime:
        """Return at (in UTC) if open, else the start of the next opening interval."""
        _require_aware(at, "at")
        at = at.astimezone(UTC)
        for start, _end in self._intervals_from(at):
            return max(start, at)
        raise AssertionError("unreachable: _intervals_from raises when exhausted")

    def add_working_minutes(self, start: datetime, minutes: int) -> datetime:
        """Return the UTC instant after counting minutes of opening time from start."""
        _require_aware(start, "start")
        if minutes < 0:
            raise ValueError(f"minutes must be >= 0, got {minutes}")
        cursor = start.astimezone(UTC)
        remaining = timedelta(minutes=minutes)
        for interval_start, interval_end in self._intervals_from(cursor):
            cursor = max(cursor, interval_start)
            available = interval_end - cursor
            # "<=" so a budget ending exactly at closing time lands on closing time, not next opening.
            if remaining <= available:
                return cursor + remaining
            remaining -= available
        raise AssertionError("unreachable: _intervals_from raises when exhausted")

    def working_minutes_between(self, start: datetime, end: datetime) -> int:
        """Return whole minutes of opening time in [start, end); negative when end precedes start."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        if end < start:
            return -self.working_minutes_between(end, start)
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        total = timedelta()
        day, last = self.local_date(start), self.local_date(end)
        while day <= last:
            for interval_start, interval_end in self.opening_intervals(day):
                overlap = min(interval_end, end) - max(interval_start, start)
                if overlap > timedelta():
                    total += overlap
            day += timedelta(days=1)
        return total // timedelta(minutes=1)

    # -- text -------------------------------------------------------------------------------

    def _ranges_text(self, ranges: tuple[tuple[time, time], ...], *, lang: str) -> str:
        """Format a day's ranges, or the closed word."""
        if not ranges:
            return "cerrado" if lang == "es" else "closed"
        return ", ".join(f"{format_time(s, lang=lang)}-{format_time(e, lang=lang)}" for s, e in ranges)

    def hours_text(self, day: date, *, lang: str) -> str:
        """Describe a day's opening hours: '8 am-6 pm', 'closed (Thanksgiving Day)' / '8:00-18:00', 'cerrado'."""
        code = lang_code(lang)
        closed = "cerrado" if code == "es" else "closed"
        name = self.holiday_name(day, lang=code)
        if name is not None:
            return f"{closed} ({name})"
        if day in self.closures:
            return closed
        # Wall-clock hours as configured; on DST days the UTC intervals differ but the sign does not.
        return self._ranges_text(self.hours[day.weekday()], lang=code)

    def week_text(self, *, lang: str) -> str:
        """Summarize the weekly hours, grouping consecutive equal days: 'Mon-Fri 8 am-6 pm; Sat-Sun closed'."""
        code = lang_code(lang)
        names = DAY_ABBR[code]
        groups: list[tuple[int, int]] = []
        for index in range(7):
            if groups and self.hours[groups[-1][0]] == self.hours[index]:
                groups[-1] = (groups[-1][0], index)
            else:
                groups.append((index, index))
        parts = []
        for first, last in groups:
            days = names[first] if first == last else f"{names[first]}-{names[last]}"
            parts.append(f"{days} {self._ranges_text(self.hours[first], lang=code)}")
        return "; ".join(parts)


def _load_zone(name: object) -> ZoneInfo:
    """Load an IANA time zone or raise a config error naming it."""
    if not isinstance(name, str) or not name.strip():
        raise ClinicConfigError("timezone", f"expected an IANA time zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError covers malformed keys such as absolute paths or '..'.
        raise ClinicConfigError("timezone", f"unknown time zone {name!r}") from None


def _check_holidays(country: str | None, subdivision: str | None) -> None:
    """Check that the holidays package supports the country and subdivision."""
    if country is None:
        if subdivision is not None:
            raise ClinicConfigError("holiday_subdivision", "set without holiday_country")
        return
    supported = holidays.list_supported_countries()
    if not isinstance(country, str) or country not in supported:
        raise ClinicConfigError(
            "holiday_country",
            f"unsupported country {country!r}; expected an ISO 3166-1 alpha-2 code such as 'US'",
        )
    if subdivision is None:
        return
    subdivisions = supported[country]
    if not isinstance(subdivision, str) or not subdivisions:
        raise ClinicConfigError("holiday_subdivision", f"invalid subdivision {subdivision!r} for {country}")
    try:
        # Construct rather than look up: the package also accepts aliases such as 'Massachusetts'.
        holidays.country_holidays(country, subdiv=subdivision, years=2000)
    except NotImplementedError:
        hint = ", ".join(subdivisions[:12]) + (", ..." if len(subdivisions) > 12 else "")
        raise ClinicConfigError(
            "holiday_subdivision",
            f"unknown subdivision {subdivision!r} for {country}; expected one of {hint}",
        ) from None
