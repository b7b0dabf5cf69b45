"""Render promise times and days as short patient-facing phrases (English and Spanish)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "DAY_ABBR",
    "format_time",
    "lang_code",
    "render_by_day",
    "render_day",
    "render_due",
]

# Own tables rather than strftime: system locales differ between hosts and containers.
DAY_NAMES = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
DAY_ABBR = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "es": ("lun", "mar", "mié", "jue", "vie", "sáb", "dom"),
}
MONTH_NAMES = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "es": (
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ),
}

# A weekday name alone is unambiguous only while it cannot refer to today's weekday.
_WEEKDAY_HORIZON_DAYS = 6
# Beyond this a bare "Nov 30" could be read as the wrong year.
_YEAR_HORIZON_DAYS = 300


def lang_code(lang: str | None) -> str:
    """Map a language tag such as 'es-MX' to a supported code, defaulting to English."""
    if not lang:
        return "en"
    base = lang.strip().lower().replace("_", "-").split("-", 1)[0]
    return base if base in DAY_NAMES else "en"


def format_time(t: time, *, lang: str) -> str:
    """Format a wall-clock time: '9 am', '9:30 am', 'noon' / '9:00', '16:30'."""
    if lang_code(lang) == "es":
        return f"{t.hour}:{t.minute:02d}"
    if t.minute == 0 and t.hour == 12:
        return "noon"
    if t.minute == 0 and t.hour == 0:
        return "midnight"
    hour12 = t.hour % 12 or 12
    suffix = "am" if t.hour < 12 else "pm"
    if t.minute == 0:
        return f"{hour12} {suffix}"
    return f"{hour12}:{t.minute:02d} {suffix}"


def _es_before(t: time) -> str:
    """Phrase 'before <time>' in Spanish with the right article."""
    if t.hour == 0 and t.minute == 0:
        return "antes de la medianoche"
    # Spanish uses the singular article for one o'clock: "la 1:30", "las 2:00".
    article = "la" if t.hour == 1 else "las"
    return f"antes de {article} {format_time(t, lang='es')}"


def _full_date(day: date, *, today: date, lang: str) -> str:
    """Format 'Monday, Nov 30' / 'el lunes 30 de noviembre', adding the year when far away."""
    code = lang_code(lang)
    show_year = abs((day - today).days) > _YEAR_HORIZON_DAYS
    weekday = DAY_NAMES[code][day.weekday()]
    month = MONTH_NAMES[code][day.month - 1]
    if code == "es":
        text = f"el {weekday} {day.day} de {month}"
        return f"{text} de {day.year}" if show_year else text
    text = f"{weekday}, {month} {day.day}"
    return f"{text}, {day.year}" if show_year else text


def _require_aware(value: datetime, name: str) -> None:
    """Reject naive datetimes, whose meaning depends on the host clock."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value!r}")


def _ceil_minute(value: datetime) -> datetime:
    """Round up to the next whole minute so a rendered promise is never earlier than the real due."""
    if value.second == 0 and value.microsecond == 0:
        return value
    return value.replace(second=0, microsecond=0) + timedelta(minutes=1)


def render_due(*, due: datetime, now: datetime, tz: ZoneInfo, lang: str) -> str:
    """Render a promise time as a short phrase for patients, e.g. 'by 10 am tomorrow'."""
    _require_aware(due, "due")
    _require_aware(now, "now")
    code = lang_code(lang)
    if due <= now:
        return "lo antes posible" if code == "es" else "as soon as possible"

    # Round in UTC, then convert: wall-clock arithmetic would be wrong across DST changes.
    local_due = _ceil_minute(due.astimezone(UTC)).astimezone(tz)
    today = now.astimezone(tz).date()
    day, clock = local_due.date(), local_due.time()
    if clock == time(0, 0):
        # A due of 00:00 means "by the end of the previous day": say midnight of that day.
        day -= timedelta(days=1)

    delta = (day - today).days
    if code == "es":
        before = _es_before(clock)
        if delta == 0:
            return f"hoy {before}"
        if delta == 1:
            return f"mañana {before}"
        if delta <= _WEEKDAY_HORIZON_DAYS:
            return f"el {DAY_NAMES['es'][day.weekday()]} {before}"
        return f"{_full_date(day, today=today, lang='es')} {before}"

    at = format_time(clock, lang="en")
    if delta == 0:
        return f"by {at} today"
    if delta == 1:
        return f"by {at} tomorrow"
    if delta <= _WEEKDAY_HORIZON_DAYS:
        return f"by {at} on {DAY_NAMES['en'][day.weekday()]}"
    return f"by {at} on {_full_date(day, today=today, lang='en')}"


def render_day(*, day: date, today: date, lang: str) -> str:
    """Render a day relative to today: 'today', 'yesterday', 'Monday, Nov 23' / 'hoy', 'ayer', 'el lunes 23 de noviembre'."""
    code = lang_code(lang)
    delta = (day - today).days
    words = {
        "en": {0: "today", -1: "yesterday", 1: "tomorrow"},
        "es": {0: "hoy", -1: "ayer", 1: "mañana"},
    }[code]
    if delta in words:
        return words[delta]
    return _full_date(day, today=today, lang=code)


def render_by_day(*, day: date, today: date, lang: str) -> str:
    """Render a deadline day: 'today', 'by tomorrow', 'by Thursday', 'by Thursday, Dec 3' / 'para hoy', 'para el jueves'."""
    code = lang_code(lang)
    delta = (day - today).days
    if delta < 0:
        return "lo antes posible" if code == "es" else "as soon as possible"
    if code == "es":
        if delta == 0:
            return "para hoy"
        if delta == 1:
            return "para mañana"
        if delta <= _WEEKDAY_HORIZON_DAYS:
            return f"para el {DAY_NAMES['es'][day.weekday()]}"
        return f"para {_full_date(day, today=today, lang='es')}"
    if delta == 0:
        return "today"
    if delta == 1:
        return "by tomorrow"
    if delta <= _WEEKDAY_HORIZON_DAYS:
        return f"by {DAY_NAMES['en'][day.weekday()]}"
    return f"by {_full_date(day, today=today, lang='en')}"
