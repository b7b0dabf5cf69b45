"""Tests for patient-facing time and day phrases."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from bot.when import format_time, lang_code, render_by_day, render_day, render_due

NY = ZoneInfo("America/New_York")


def ny(*args: int) -> datetime:
    """Build an aware New York datetime."""
    return datetime(*args, tzinfo=NY)


MONDAY_10AM = ny(2026, 11, 23, 10)


@pytest.mark.parametrize(
    ("due", "now", "english", "spanish"),
    [
        (ny(2026, 11, 23, 16), MONDAY_10AM, "by 4 pm today", "hoy antes de las 16:00"),
        (ny(2026, 11, 23, 12), MONDAY_10AM, "by noon today", "hoy antes de las 12:00"),
        (ny(2026, 11, 23, 12, 30), MONDAY_10AM, "by 12:30 pm today", "hoy antes de las 12:30"),
        (ny(2026, 11, 24, 10, 30), MONDAY_10AM, "by 10:30 am tomorrow", "mañana antes de las 10:30"),
        (ny(2026, 11, 24, 9, 5), MONDAY_10AM, "by 9:05 am tomorrow", "mañana antes de las 9:05"),
        (ny(2026, 11, 25, 16), MONDAY_10AM, "by 4 pm on Wednesday", "el miércoles antes de las 16:00"),
        (ny(2026, 11, 27, 16), MONDAY_10AM, "by 4 pm on Friday", "el viernes antes de las 16:00"),
        (ny(2026, 11, 29, 9), MONDAY_10AM, "by 9 am on Sunday", "el domingo antes de las 9:00"),
        (
            ny(2026, 11, 30, 9),
            MONDAY_10AM,
            "by 9 am on Monday, Nov 30",
            "el lunes 30 de noviembre antes de las 9:00",
        ),
        (
            ny(2026, 12, 3, 14, 15),
            MONDAY_10AM,
            "by 2:15 pm on Thursday, Dec 3",
            "el jueves 3 de diciembre antes de las 14:15",
        ),
        # Month end and year end.
        (ny(2026, 12, 1, 10), ny(2026, 11, 30, 17), "by 10 am tomorrow", "mañana antes de las 10:00"),
        (ny(2027, 1, 1, 9), ny(2026, 12, 31, 16), "by 9 am tomorrow", "mañana antes de las 9:00"),
        (ny(2027, 1, 4, 9), ny(2026, 12, 31, 16), "by 9 am on Monday", "el lunes antes de las 9:00"),
        # Thanksgiving Wednesday 17:00 -> two working hours later is Friday 9 am.
        (ny(2026, 11, 27, 9), ny(2026, 11, 25, 17), "by 9 am on Friday", "el viernes antes de las 9:00"),
        # Spring forward weekend: the Monday is still "Monday", at its local wall time.
        (ny(2026, 3, 9, 10), ny(2026, 3, 7, 12), "by 10 am on Monday", "el lunes antes de las 10:00"),
        # One o'clock takes the singular article in Spanish.
        (ny(2026, 11, 24, 1, 30), MONDAY_10AM, "by 1:30 am tomorrow", "mañana antes de la 1:30"),
        (ny(2026, 11, 24, 13), MONDAY_10AM, "by 1 pm tomorrow", "mañana antes de las 13:00"),
        # 00:00 is the end of the previous day.
        (ny(2026, 11, 24, 0), MONDAY_10AM, "by midnight today", "hoy antes de la medianoche"),
        (ny(2026, 11, 24, 0, 30), MONDAY_10AM, "by 12:30 am tomorrow", "mañana antes de las 0:30"),
        # More than ~10 months away, the year is spelled out.
        (
            ny(2027, 11, 29, 9),
            MONDAY_10AM,
            "by 9 am on Monday, Nov 29, 2027",
            "el lunes 29 de noviembre de 2027 antes de las 9:00",
        ),
    ],
)
def test_render_due(due: datetime, now: datetime, english: str, spanish: str) -> None:
    assert render_due(due=due, now=now, tz=NY, lang="en") == english
    assert render_due(due=due, now=now, tz=NY, lang="es") == spanish


def test_render_due_uses_clinic_local_days_not_utc_days() -> None:
    now = ny(2026, 11, 23, 21)  # already 02:00 on the 24th in UTC
    due = datetime(2026, 11, 24, 15, tzinfo=UTC)  # 10:00 on the 24th in New York
    assert render_due(due=due, now=now, tz=NY, lang="en") == "by 10 am tomorrow"
    assert render_due(due=due, now=now.astimezone(UTC), tz=NY, lang="en") == "by 10 am tomorrow"


def test_render_due_in_another_timezone() -> None:
    madrid = ZoneInfo("Europe/Madrid")
    due = datetime(2026, 11, 24, 15, tzinfo=UTC)
    now = datetime(2026, 11, 24, 9, tzinfo=UTC)
    assert render_due(due=due, now=now, tz=madrid, lang="es") == "hoy antes de las 16:00"


def test_render_due_rounds_up_to_the_minute_so_the_promise_is_never_early() -> None:
    due = datetime(2026, 11, 23, 15, 59, 30, tzinfo=NY)
    assert render_due(due=due, now=MONDAY_10AM, tz=NY, lang="en") == "by 4 pm today"
    due = datetime(2026, 11, 23, 16, 0, 0, 1, tzinfo=NY)
    assert render_due(due=due, now=MONDAY_10AM, tz=NY, lang="en") == "by 4:01 pm today"


@pytest.mark.parametrize("due", [MONDAY_10AM, ny(2026, 11, 23, 9), ny(2026, 11, 20, 9)])
def test_render_due_in_the_past_is_as_soon_as_possible(due: datetime) -> None:
    assert render_due(due=due, now=MONDAY_10AM, tz=NY, lang="en") == "as soon as possible"
    assert render_due(due=due, now=MONDAY_10AM, tz=NY, lang="es") == "lo antes posible"


@pytest.mark.parametrize("lang", ["fr", "", "EN", "en-US", "xx_YY"])
def test_unknown_or_english_language_renders_english(lang: str) -> None:
    assert render_due(due=ny(2026, 11, 23, 16), now=MONDAY_10AM, tz=NY, lang=lang) == "by 4 pm today"


@pytest.mark.parametrize("lang", ["es", "ES", "es-MX", "es_AR"])
def test_spanish_variants_render_spanish(lang: str) -> None:
    assert render_due(due=ny(2026, 11, 23, 16), now=MONDAY_10AM, tz=NY, lang=lang) == "hoy antes de las 16:00"


def test_render_due_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="due must be timezone-aware"):
        render_due(due=datetime(2026, 11, 23, 16), now=MONDAY_10AM, tz=NY, lang="en")
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        render_due(due=MONDAY_10AM, now=datetime(2026, 11, 23, 9), tz=NY, lang="en")


@pytest.mark.parametrize(
    ("day", "today", "english", "spanish"),
    [
        (date(2026, 11, 25), date(2026, 11, 25), "today", "hoy"),
        (date(2026, 11, 24), date(2026, 11, 25), "yesterday", "ayer"),
        (date(2026, 11, 26), date(2026, 11, 25), "tomorrow", "mañana"),
        (date(2026, 11, 23), date(2026, 11, 25), "Monday, Nov 23", "el lunes 23 de noviembre"),
        (date(2026, 12, 31), date(2027, 1, 1), "yesterday", "ayer"),
        (date(2026, 11, 30), date(2026, 12, 1), "yesterday", "ayer"),
        (date(2026, 12, 28), date(2027, 1, 5), "Monday, Dec 28", "el lunes 28 de diciembre"),
        (date(2026, 9, 2), date(2026, 11, 25), "Wednesday, Sep 2", "el miércoles 2 de septiembre"),
        (date(2025, 11, 24), date(2026, 11, 25), "Monday, Nov 24, 2025", "el lunes 24 de noviembre de 2025"),
        (date(2026, 12, 5), date(2026, 11, 25), "Saturday, Dec 5", "el sábado 5 de diciembre"),
    ],
)
def test_render_day(day: date, today: date, english: str, spanish: str) -> None:
    assert render_day(day=day, today=today, lang="en") == english
    assert render_day(day=day, today=today, lang="es") == spanish
    assert render_day(day=day, today=today, lang="de") == english


@pytest.mark.parametrize(
    ("day", "today", "english", "spanish"),
    [
        (date(2026, 11, 30), date(2026, 11, 30), "today", "para hoy"),
        (date(2026, 12, 1), date(2026, 11, 30), "by tomorrow", "para mañana"),
        (date(2027, 1, 1), date(2026, 12, 31), "by tomorrow", "para mañana"),
        (date(2026, 12, 3), date(2026, 11, 30), "by Thursday", "para el jueves"),
        (date(2026, 12, 6), date(2026, 11, 30), "by Sunday", "para el domingo"),
        (date(2026, 12, 7), date(2026, 11, 30), "by Monday, Dec 7", "para el lunes 7 de diciembre"),
        (date(2026, 12, 3), date(2026, 11, 23), "by Thursday, Dec 3", "para el jueves 3 de diciembre"),
        (date(2027, 1, 4), date(2026, 12, 30), "by Monday", "para el lunes"),
        (date(2026, 11, 29), date(2026, 11, 30), "as soon as possible", "lo antes posible"),
    ],
)
def test_render_by_day(day: date, today: date, english: str, spanish: str) -> None:
    assert render_by_day(day=day, today=today, lang="en") == english
    assert render_by_day(day=day, today=today, lang="es") == spanish


@pytest.mark.parametrize(
    ("t", "english", "spanish"),
    [
        (time(9), "9 am", "9:00"),
        (time(9, 30), "9:30 am", "9:30"),
        (time(12), "noon", "12:00"),
        (time(12, 45), "12:45 pm", "12:45"),
        (time(16), "4 pm", "16:00"),
        (time(0), "midnight", "0:00"),
        (time(0, 15), "12:15 am", "0:15"),
        (time(23, 59), "11:59 pm", "23:59"),
    ],
)
def test_format_time(t: time, english: str, spanish: str) -> None:
    assert format_time(t, lang="en") == english
    assert format_time(t, lang="es") == spanish


def test_lang_code() -> None:
    assert [lang_code(tag) for tag in ("en", "es", "es-419", "ES_mx", " es ", "pt-BR", "", None)] == [
        "en",
        "es",
        "es",
        "es",
        "es",
        "en",
        "en",
        "en",
    ]
