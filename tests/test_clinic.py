"""Tests for the clinic working-time calendar."""

from __future__ import annotations

import pickle
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.clinic import DAYS, ClinicCalendar, ClinicConfigError, parse_weekly_hours
from bot.when import render_due

NY = ZoneInfo("America/New_York")

WEEKDAYS_8_TO_6 = {day: "08:00-18:00" for day in ("mon", "tue", "wed", "thu", "fri")}
LUNCH_BREAK = {**WEEKDAYS_8_TO_6, "tue": "08:00-12:00,13:00-18:00"}


def utc(*args: int) -> datetime:
    """Build an aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)


def ny(*args: int) -> datetime:
    """Build an aware New York datetime (first occurrence on folds)."""
    return datetime(*args, tzinfo=NY)


@pytest.fixture
def clinic() -> ClinicCalendar:
    """Return a Mon-Fri 8-18 New York clinic with a Tuesday lunch break and US holidays."""
    return ClinicCalendar.build(timezone="America/New_York", hours=LUNCH_BREAK, holiday_country="US")


@pytest.fixture
def sunday_clinic() -> ClinicCalendar:
    """Return a New York clinic open Sundays, including the small hours that DST shifts."""
    return ClinicCalendar.build(
        timezone="America/New_York",
        hours={"sun": "00:00-06:00,08:00-18:00"},
        holiday_country=None,
    )


# -- parse_weekly_hours ---------------------------------------------------------------------


def test_parse_weekly_hours_fills_missing_days_as_closed() -> None:
    assert parse_weekly_hours({"mon": "08:00-18:00", "sat": "closed", "tue": "08:00-12:00,13:00-18:00"}) == {
        0: ((time(8), time(18)),),
        1: ((time(8), time(12)), (time(13), time(18))),
        2: (),
        3: (),
        4: (),
        5: (),
        6: (),
    }


def test_parse_weekly_hours_accepts_loose_spelling_and_sorts_ranges() -> None:
    assert parse_weekly_hours({" Wed ": " 13:00-18:00 , 8:00-12:30 ", "FRI": "Closed"}) == {
        0: (),
        1: (),
        2: ((time(8), time(12, 30)), (time(13), time(18))),
        3: (),
        4: (),
        5: (),
        6: (),
    }


def test_days_constant() -> None:
    assert DAYS == ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@pytest.mark.parametrize(
    ("spec", "setting", "fragment"),
    [
        ({"funday": "08:00-18:00"}, "hours.funday", "unknown day 'funday'"),
        ({"tue": "25:00-26:00"}, "hours.tue", "invalid time '25:00'"),
        ({"tue": "8am-6pm"}, "hours.tue", "invalid time '8am'"),
        ({"tue": "08:60-18:00"}, "hours.tue", "invalid time '08:60'"),
        ({"tue": "08:00"}, "hours.tue", "invalid range '08:00'"),
        ({"tue": "08:00-12:00-13:00"}, "hours.tue", "invalid range"),
        ({"tue": "18:00-08:00"}, "hours.tue", "ends at or before it starts"),
        ({"tue": "08:00-08:00"}, "hours.tue", "ends at or before it starts"),
        ({"wed": "08:00-12:00,11:00-13:00"}, "hours.wed", "ranges overlap (11:00 starts before 12:00)"),
        ({"thu": ""}, "hours.thu", "empty"),
        ({"fri": None}, "hours.fri", "expected a string"),
        ({"mon": "closed", "MON": "08:00-18:00"}, "hours.mon", "more than once"),
    ],
)
def test_parse_weekly_hours_errors_name_the_setting(spec: dict, setting: str, fragment: str) -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        parse_weekly_hours(spec)
    assert excinfo.value.setting == setting
    assert str(excinfo.value).startswith(f"{setting}: ")
    assert fragment in str(excinfo.value)


def test_adjacent_ranges_are_not_overlapping() -> None:
    assert parse_weekly_hours({"mon": "08:00-12:00,12:00-18:00"})[0] == (
        (time(8), time(12)),
        (time(12), time(18)),
    )


def test_config_error_is_a_value_error_with_exact_message() -> None:
    error = ClinicConfigError("hours.tue", "bad")
    assert isinstance(error, ValueError)
    assert (str(error), error.setting) == ("hours.tue: bad", "hours.tue")


# -- build ----------------------------------------------------------------------------------


def test_build_unknown_timezone() -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        ClinicCalendar.build(timezone="Mars/Base", hours=WEEKDAYS_8_TO_6, holiday_country="US")
    assert str(excinfo.value) == "timezone: unknown time zone 'Mars/Base'"
    assert excinfo.value.setting == "timezone"


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "/etc/localtime"])
def test_build_malformed_timezone(name: str) -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        ClinicCalendar.build(timezone=name, hours=WEEKDAYS_8_TO_6, holiday_country="US")
    assert excinfo.value.setting == "timezone"


@pytest.mark.parametrize(
    ("country", "subdivision", "setting"),
    [
        ("XX", None, "holiday_country"),
        ("us", None, "holiday_country"),
        ("", None, "holiday_country"),
        ("US", "ZZ", "holiday_subdivision"),
        (None, "MA", "holiday_subdivision"),
    ],
)
def test_build_bad_holiday_settings(country: str | None, subdivision: str | None, setting: str) -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        ClinicCalendar.build(
            timezone="America/New_York",
            hours=WEEKDAYS_8_TO_6,
            holiday_country=country,
            holiday_subdivision=subdivision,
        )
    assert excinfo.value.setting == setting


@pytest.mark.parametrize(
    "closures",
    [["2026-13-01"], ["next friday"], [datetime(2026, 12, 24, tzinfo=UTC)], "2026-12-24", [42], 5, True,
     {"2026-12-24": "Christmas Eve"}],  # fmt: skip
)
def test_build_bad_closures(closures: object) -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        ClinicCalendar.build(
            timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country="US", closures=closures
        )
    assert excinfo.value.setting == "closures"


def test_build_rejects_a_clinic_that_never_opens() -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        ClinicCalendar.build(timezone="America/New_York", hours={"mon": "closed"}, holiday_country="US")
    assert excinfo.value.setting == "hours"


def test_build_propagates_hours_errors() -> None:
    with pytest.raises(ClinicConfigError) as excinfo:
        ClinicCalendar.build(timezone="America/New_York", hours={"tue": "18:00-08:00"}, holiday_country="US")
    assert excinfo.value.setting == "hours.tue"


def test_build_accepts_dates_and_iso_strings_for_closures() -> None:
    calendar = ClinicCalendar.build(
        timezone="America/New_York",
        hours=WEEKDAYS_8_TO_6,
        holiday_country="US",
        closures=["2026-12-24", date(2026, 12, 31)],
    )
    assert calendar.closures == frozenset({date(2026, 12, 24), date(2026, 12, 31)})
    assert calendar.tz == NY


def test_calendar_is_hashable_picklable_and_isolated_from_caller_mutation(clinic: ClinicCalendar) -> None:
    hours = parse_weekly_hours(WEEKDAYS_8_TO_6)
    calendar = ClinicCalendar(tz=NY, hours=hours)
    hours[5] = ((time(9), time(12)),)
    assert calendar.is_working_day(date(2026, 11, 28)) is False
    assert pickle.loads(pickle.dumps(clinic)) == clinic
    assert {clinic: 1}[clinic] == 1


# -- working days ---------------------------------------------------------------------------


def test_weekends_are_not_working_days(clinic: ClinicCalendar) -> None:
    assert [clinic.is_working_day(date(2026, 11, day)) for day in range(16, 23)] == [
        True,
        True,
        True,
        True,
        True,
        False,
        False,
    ]


def test_thanksgiving_is_closed_and_black_friday_open(clinic: ClinicCalendar) -> None:
    assert clinic.holiday_name(date(2026, 11, 26)) == "Thanksgiving Day"
    assert clinic.is_working_day(date(2026, 11, 26)) is False
    assert clinic.holiday_name(date(2026, 11, 27)) is None
    assert clinic.is_working_day(date(2026, 11, 27)) is True
    assert clinic.opening_intervals(date(2026, 11, 26)) == []


def test_observed_holiday_closes_the_weekday(clinic: ClinicCalendar) -> None:
    # 2026-07-04 is a Saturday; the federal holiday is observed on Friday 2026-07-03.
    assert clinic.holiday_name(date(2026, 7, 3)) == "Independence Day (observed)"
    assert clinic.is_working_day(date(2026, 7, 3)) is False


def test_subdivision_holidays() -> None:
    massachusetts = ClinicCalendar.build(
        timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country="US", holiday_subdivision="MA"
    )
    federal = ClinicCalendar.build(timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country="US")
    patriots_day = date(2026, 4, 20)
    assert massachusetts.holiday_name(patriots_day) == "Patriots' Day"
    assert massachusetts.is_working_day(patriots_day) is False
    assert federal.is_working_day(patriots_day) is True


def test_holiday_names_in_spanish(clinic: ClinicCalendar) -> None:
    # US names from our table (the holidays package has none in Spanish), "observed" included.
    assert clinic.hours_text(date(2026, 11, 26), lang="es") == "cerrado (Día de Acción de Gracias)"
    assert clinic.holiday_name(date(2026, 7, 3), lang="es") == "Día de la Independencia (feriado observado)"
    assert clinic.hours_text(date(2026, 11, 26), lang="en") == "closed (Thanksgiving Day)"
    # A country the package names in Spanish: its names. A state's own holiday not in the table: English.
    mexico = ClinicCalendar.build(timezone="America/Mexico_City", hours=WEEKDAYS_8_TO_6, holiday_country="MX")
    assert (mexico.holiday_name(date(2026, 9, 16), lang="es"), mexico.holiday_name(date(2026, 9, 16))) == (
        "Día de la Independencia", "Independence Day")  # fmt: skip
    massachusetts = ClinicCalendar.build(
        timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country="US", holiday_subdivision="MA"
    )
    assert massachusetts.holiday_name(date(2026, 4, 20), lang="es") == "Patriots' Day"


def test_no_holiday_country_means_no_holidays() -> None:
    calendar = ClinicCalendar.build(timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country=None)
    assert calendar.holiday_name(date(2026, 11, 26)) is None
    assert calendar.is_working_day(date(2026, 11, 26)) is True


def test_holidays_in_other_countries() -> None:
    calendar = ClinicCalendar.build(timezone="Europe/Madrid", hours=WEEKDAYS_8_TO_6, holiday_country="ES")
    assert calendar.is_working_day(date(2026, 12, 8)) is False  # Inmaculada Concepción, a Tuesday
    assert calendar.is_working_day(date(2026, 11, 26)) is True


def test_closures(clinic: ClinicCalendar) -> None:
    calendar = ClinicCalendar.build(
        timezone="America/New_York", hours=LUNCH_BREAK, holiday_country="US", closures=["2026-12-24"]
    )
    assert calendar.is_working_day(date(2026, 12, 24)) is False
    assert calendar.next_working_day(date(2026, 12, 23)) == date(2026, 12, 28)
    assert clinic.is_working_day(date(2026, 12, 24)) is True


def test_next_working_day_is_strictly_after(clinic: ClinicCalendar) -> None:
    assert clinic.next_working_day(date(2026, 11, 23)) == date(2026, 11, 24)
    assert clinic.next_working_day(date(2026, 11, 20)) == date(2026, 11, 23)
    assert clinic.next_working_day(date(2026, 11, 25)) == date(2026, 11, 27)
    assert clinic.next_working_day(date(2026, 12, 31)) == date(2027, 1, 4)  # New Year's Day, weekend


def test_next_working_day_gives_up_instead_of_hanging() -> None:
    calendar = ClinicCalendar(tz=NY, hours={})
    with pytest.raises(ValueError, match="no working day"):
        calendar.next_working_day(date(2026, 1, 1))
    with pytest.raises(ValueError, match="does not open"):
        calendar.next_open(utc(2026, 1, 1))


# -- local time and DST ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 3, 6), [(utc(2026, 3, 6, 13), utc(2026, 3, 6, 23))]),  # EST
        (date(2026, 3, 9), [(utc(2026, 3, 9, 12), utc(2026, 3, 9, 22))]),  # EDT, first weekday after
        (date(2026, 10, 30), [(utc(2026, 10, 30, 12), utc(2026, 10, 30, 22))]),  # EDT
        (date(2026, 11, 2), [(utc(2026, 11, 2, 13), utc(2026, 11, 2, 23))]),  # EST again
        (date(2026, 11, 1), []),  # Sunday
        (date(2026, 3, 8), []),  # Sunday
        (
            date(2026, 3, 10),
            [(utc(2026, 3, 10, 12), utc(2026, 3, 10, 16)), (utc(2026, 3, 10, 17), utc(2026, 3, 10, 22))],
        ),
    ],
)
def test_opening_intervals_in_utc(clinic: ClinicCalendar, day: date, expected: list) -> None:
    assert clinic.opening_intervals(day) == expected


def test_sunday_clinic_on_spring_forward_day(sunday_clinic: ClinicCalendar) -> None:
    # 00:00 EST -> 06:00 EDT is only five real hours; 08:00-18:00 is already EDT.
    assert sunday_clinic.opening_intervals(date(2026, 3, 8)) == [
        (utc(2026, 3, 8, 5), utc(2026, 3, 8, 10)),
        (utc(2026, 3, 8, 12), utc(2026, 3, 8, 22)),
    ]
    assert sunday_clinic.working_minutes_between(utc(2026, 3, 8), utc(2026, 3, 9)) == 15 * 60


def test_sunday_clinic_on_fall_back_day(sunday_clinic: ClinicCalendar) -> None:
    # 00:00 EDT -> 06:00 EST is seven real hours; 08:00-18:00 is already EST.
    assert sunday_clinic.opening_intervals(date(2026, 11, 1)) == [
        (utc(2026, 11, 1, 4), utc(2026, 11, 1, 11)),
        (utc(2026, 11, 1, 13), utc(2026, 11, 1, 23)),
    ]
    assert sunday_clinic.working_minutes_between(utc(2026, 11, 1), utc(2026, 11, 2)) == 17 * 60


def test_sunday_clinic_ordinary_sunday(sunday_clinic: ClinicCalendar) -> None:
    assert sunday_clinic.opening_intervals(date(2026, 11, 8)) == [
        (utc(2026, 11, 8, 5), utc(2026, 11, 8, 11)),
        (utc(2026, 11, 8, 13), utc(2026, 11, 8, 23)),
    ]


def test_range_entirely_inside_the_spring_gap_collapses() -> None:
    calendar = ClinicCalendar.build(
        timezone="America/New_York", hours={"sun": "02:10-02:50,09:00-10:00"}, holiday_country=None
    )
    assert calendar.is_working_day(date(2026, 3, 8)) is True
    assert calendar.opening_intervals(date(2026, 3, 8)) == [(utc(2026, 3, 8, 13), utc(2026, 3, 8, 14))]
    assert calendar.next_open(utc(2026, 3, 8, 6)) == utc(2026, 3, 8, 13)
    assert calendar.is_open(utc(2026, 3, 8, 7)) is False
    # A range straddling the gap keeps its real length: 01:30 EST to 03:30 EDT is one hour.
    straddling = ClinicCalendar.build(
        timezone="America/New_York", hours={"sun": "01:30-03:30"}, holiday_country=None
    )
    assert straddling.opening_intervals(date(2026, 3, 8)) == [
        (utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30))
    ]


def test_at_local_in_the_spring_gap_uses_the_first_valid_instant_after(clinic: ClinicCalendar) -> None:
    # 02:30 does not exist on 2026-03-08; the clocks jump from 02:00 EST to 03:00 EDT (07:00 UTC).
    assert clinic.at_local(date(2026, 3, 8), time(2, 30)) == utc(2026, 3, 8, 7)
    assert clinic.at_local(date(2026, 3, 8), time(2, 0)) == utc(2026, 3, 8, 7)
    assert clinic.at_local(date(2026, 3, 8), time(1, 59)) == utc(2026, 3, 8, 6, 59)
    assert clinic.at_local(date(2026, 3, 8), time(3, 0)) == utc(2026, 3, 8, 7)


def test_at_local_in_the_fall_fold_uses_the_first_occurrence(clinic: ClinicCalendar) -> None:
    # 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST).
    assert clinic.at_local(date(2026, 11, 1), time(1, 30)) == utc(2026, 11, 1, 5, 30)
    assert clinic.at_local(date(2026, 11, 1), time(2, 0)) == utc(2026, 11, 1, 7)


def test_at_local_in_a_half_hour_dst_zone() -> None:
    # Lord Howe Island springs forward 30 minutes, 02:00 -> 02:30 local (15:30 UTC), on 2026-10-04.
    calendar = ClinicCalendar.build(
        timezone="Australia/Lord_Howe", hours=WEEKDAYS_8_TO_6, holiday_country=None
    )
    assert calendar.at_local(date(2026, 10, 4), time(2, 15)) == utc(2026, 10, 3, 15, 30)
    assert calendar.local(utc(2026, 10, 3, 15, 30)).time() == time(2, 30)


def test_at_local_returns_utc(clinic: ClinicCalendar) -> None:
    result = clinic.at_local(date(2026, 11, 23), time(8))
    assert result == utc(2026, 11, 23, 13)
    assert result.tzinfo is UTC


def test_local_and_local_date(clinic: ClinicCalendar) -> None:
    late_evening = utc(2026, 11, 24, 2)  # 21:00 on the 23rd in New York
    assert clinic.local(late_evening) == ny(2026, 11, 23, 21)
    assert clinic.local(late_evening).tzinfo == NY
    assert clinic.local_date(late_evening) == date(2026, 11, 23)
    with pytest.raises(ValueError, match="timezone-aware"):
        clinic.local_date(datetime(2026, 11, 23, 21))


# -- is_open / next_open --------------------------------------------------------------------


def test_is_open_boundaries_are_half_open(clinic: ClinicCalendar) -> None:
    assert clinic.is_open(ny(2026, 11, 23, 7, 59)) is False
    assert clinic.is_open(ny(2026, 11, 23, 8)) is True
    assert clinic.is_open(ny(2026, 11, 23, 17, 59)) is True
    assert clinic.is_open(ny(2026, 11, 23, 18)) is False
    assert clinic.is_open(ny(2026, 11, 24, 12, 30)) is False  # lunch
    assert clinic.is_open(ny(2026, 11, 26, 10)) is False  # Thanksgiving
    assert clinic.is_open(ny(2026, 11, 28, 10)) is False  # Saturday


def test_is_open_accepts_any_timezone(clinic: ClinicCalendar) -> None:
    assert clinic.is_open(utc(2026, 11, 23, 13)) is True
    assert clinic.is_open(datetime(2026, 11, 23, 14, tzinfo=ZoneInfo("Europe/Madrid"))) is True  # 08:00 NY


def test_is_open_rejects_naive_datetimes(clinic: ClinicCalendar) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        clinic.is_open(datetime(2026, 11, 23, 10))


def test_next_open(clinic: ClinicCalendar) -> None:
    assert clinic.next_open(ny(2026, 11, 23, 10)) == utc(2026, 11, 23, 15)
    assert clinic.next_open(ny(2026, 11, 23, 10)).tzinfo is UTC
    assert clinic.next_open(ny(2026, 11, 23, 6)) == utc(2026, 11, 23, 13)
    assert clinic.next_open(ny(2026, 11, 24, 12, 15)) == utc(2026, 11, 24, 18)  # after lunch
    assert clinic.next_open(ny(2026, 11, 23, 18)) == utc(2026, 11, 24, 13)
    assert clinic.next_open(ny(2026, 11, 25, 18)) == utc(2026, 11, 27, 13)  # skips Thanksgiving
    assert clinic.next_open(ny(2026, 3, 6, 18)) == utc(2026, 3, 9, 12)  # into EDT
    with pytest.raises(ValueError, match="timezone-aware"):
        clinic.next_open(datetime(2026, 11, 23, 10))


# -- add_working_minutes / working_minutes_between --------------------------------------------


@pytest.mark.parametrize(
    ("start", "minutes", "expected", "why"),
    [
        (ny(2026, 11, 23, 9), 60, ny(2026, 11, 23, 10), "same interval"),
        (ny(2026, 11, 23, 17), 60, ny(2026, 11, 23, 18), "exactly to closing time"),
        (ny(2026, 11, 24, 11, 30), 60, ny(2026, 11, 24, 13, 30), "across the lunch break"),
        (ny(2026, 11, 24, 12, 30), 30, ny(2026, 11, 24, 13, 30), "starts during lunch"),
        (ny(2026, 11, 23, 17), 120, ny(2026, 11, 24, 9), "overnight"),
        (ny(2026, 11, 23, 22), 60, ny(2026, 11, 24, 9), "starts after closing"),
        (ny(2026, 11, 20, 17), 120, ny(2026, 11, 23, 9), "over the weekend"),
        (ny(2026, 11, 21, 10), 60, ny(2026, 11, 23, 9), "starts on Saturday"),
        (ny(2026, 11, 25, 17), 120, ny(2026, 11, 27, 9), "over Thanksgiving"),
        (ny(2026, 11, 25, 17), 180, ny(2026, 11, 27, 10), "over Thanksgiving"),
        (ny(2026, 11, 16, 8), 5 * 600 - 60, ny(2026, 11, 20, 18), "a working week minus Tuesday lunch"),
        (ny(2026, 3, 6, 17), 120, ny(2026, 3, 9, 9), "over spring forward"),
        (ny(2026, 10, 30, 17), 120, ny(2026, 11, 2, 9), "over fall back"),
        (ny(2026, 11, 23, 10, 0), 0, ny(2026, 11, 23, 10), "zero while open"),
        (ny(2026, 11, 23, 19), 0, ny(2026, 11, 24, 8), "zero while closed"),
    ],
)
def test_add_working_minutes(
    clinic: ClinicCalendar, start: datetime, minutes: int, expected: datetime, why: str
) -> None:
    result = clinic.add_working_minutes(start, minutes)
    assert result == expected, why
    assert result.tzinfo is UTC
    if clinic.is_open(start):
        assert clinic.working_minutes_between(start, result) == minutes


def test_add_working_minutes_over_spring_forward_in_utc(clinic: ClinicCalendar) -> None:
    # Friday 17:00 EST is 22:00 UTC; Monday 09:00 EDT is 13:00 UTC, 63 wall-clock hours later.
    assert clinic.add_working_minutes(utc(2026, 3, 6, 22), 120) == utc(2026, 3, 9, 13)
    assert clinic.working_minutes_between(utc(2026, 3, 6, 22), utc(2026, 3, 9, 13)) == 120


def test_add_working_minutes_over_fall_back_in_utc(clinic: ClinicCalendar) -> None:
    # Friday 17:00 EDT is 21:00 UTC; Monday 09:00 EST is 14:00 UTC.
    assert clinic.add_working_minutes(utc(2026, 10, 30, 21), 120) == utc(2026, 11, 2, 14)


def test_add_working_minutes_on_the_dst_days_themselves(sunday_clinic: ClinicCalendar) -> None:
    # 00:00 EST + 5 h of opening reaches the 06:00 EDT close; the sixth hour waits for 08:00.
    assert sunday_clinic.add_working_minutes(utc(2026, 3, 8, 5), 300) == utc(2026, 3, 8, 10)
    assert sunday_clinic.add_working_minutes(utc(2026, 3, 8, 5), 360) == utc(2026, 3, 8, 13)
    # 00:00 EDT + 7 h of opening reaches 06:00 EST, with 01:00-02:00 lived twice.
    assert sunday_clinic.add_working_minutes(utc(2026, 11, 1, 4), 420) == utc(2026, 11, 1, 11)
    assert sunday_clinic.add_working_minutes(utc(2026, 11, 1, 4), 90) == utc(2026, 11, 1, 5, 30)
    assert sunday_clinic.add_working_minutes(utc(2026, 11, 1, 4), 150) == utc(2026, 11, 1, 6, 30)


def test_add_working_minutes_closure_and_seconds() -> None:
    calendar = ClinicCalendar.build(
        timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country="US", closures=["2026-11-27"]
    )
    start = datetime(2026, 11, 25, 17, 59, 30, 500, tzinfo=NY)
    assert calendar.add_working_minutes(start, 1) == ny(2026, 11, 30, 8, 0, 30, 500)


def test_add_working_minutes_rejects_bad_input(clinic: ClinicCalendar) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        clinic.add_working_minutes(ny(2026, 11, 23, 10), -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        clinic.add_working_minutes(datetime(2026, 11, 23, 10), 10)


def test_working_minutes_between(clinic: ClinicCalendar) -> None:
    assert clinic.working_minutes_between(ny(2026, 11, 23, 0), ny(2026, 11, 24, 0)) == 600
    assert clinic.working_minutes_between(ny(2026, 11, 24, 0), ny(2026, 11, 25, 0)) == 540  # lunch
    assert clinic.working_minutes_between(ny(2026, 11, 26, 0), ny(2026, 11, 27, 0)) == 0  # holiday
    assert clinic.working_minutes_between(ny(2026, 11, 23, 0), ny(2026, 11, 30, 0)) == 600 * 4 - 60
    assert clinic.working_minutes_between(ny(2026, 11, 23, 9), ny(2026, 11, 23, 9, 0, 59)) == 0
    assert clinic.working_minutes_between(ny(2026, 11, 23, 10), ny(2026, 11, 23, 9)) == -60
    assert clinic.working_minutes_between(ny(2026, 11, 23, 10), ny(2026, 11, 23, 10)) == 0


# -- text -----------------------------------------------------------------------------------


def test_hours_text(clinic: ClinicCalendar) -> None:
    assert clinic.hours_text(date(2026, 11, 23), lang="en") == "8 am-6 pm"
    assert clinic.hours_text(date(2026, 11, 23), lang="es") == "8:00-18:00"
    assert clinic.hours_text(date(2026, 11, 24), lang="en") == "8 am-noon, 1 pm-6 pm"
    assert clinic.hours_text(date(2026, 11, 24), lang="es") == "8:00-12:00, 13:00-18:00"
    assert clinic.hours_text(date(2026, 11, 28), lang="en") == "closed"
    assert clinic.hours_text(date(2026, 11, 28), lang="es") == "cerrado"
    assert clinic.hours_text(date(2026, 11, 26), lang="en") == "closed (Thanksgiving Day)"
    assert clinic.hours_text(date(2026, 11, 26), lang="es") == "cerrado (Día de Acción de Gracias)"
    assert clinic.hours_text(date(2026, 11, 23), lang="fr") == "8 am-6 pm"
    assert clinic.hours_text(date(2026, 11, 23), lang="es-MX") == "8:00-18:00"


def test_hours_text_closure_and_half_hours() -> None:
    calendar = ClinicCalendar.build(
        timezone="America/New_York",
        hours={"mon": "07:30-16:45"},
        holiday_country="US",
        closures=["2026-11-30"],
    )
    assert calendar.hours_text(date(2026, 11, 23), lang="en") == "7:30 am-4:45 pm"
    assert calendar.hours_text(date(2026, 11, 23), lang="es") == "7:30-16:45"
    assert calendar.hours_text(date(2026, 11, 30), lang="en") == "closed"
    assert calendar.hours_text(date(2026, 11, 30), lang="es") == "cerrado"


def test_week_text_groups_consecutive_equal_days() -> None:
    calendar = ClinicCalendar.build(timezone="America/New_York", hours=WEEKDAYS_8_TO_6, holiday_country="US")
    assert calendar.week_text(lang="en") == "Mon-Fri 8 am-6 pm; Sat-Sun closed"
    assert calendar.week_text(lang="es") == "lun-vie 8:00-18:00; sáb-dom cerrado"


def test_week_text_with_uneven_days(clinic: ClinicCalendar) -> None:
    calendar = ClinicCalendar.build(
        timezone="America/New_York",
        hours={
            "mon": "08:00-18:00",
            "tue": "08:00-18:00",
            "wed": "08:00-18:00",
            "thu": "08:00-18:00",
            "fri": "08:00-16:00",
            "sat": "09:00-12:00",
        },
        holiday_country="US",
    )
    assert calendar.week_text(lang="en") == "Mon-Thu 8 am-6 pm; Fri 8 am-4 pm; Sat 9 am-noon; Sun closed"
    assert calendar.week_text(lang="es") == "lun-jue 8:00-18:00; vie 8:00-16:00; sáb 9:00-12:00; dom cerrado"
    assert (
        clinic.week_text(lang="en")
        == "Mon 8 am-6 pm; Tue 8 am-noon, 1 pm-6 pm; Wed-Fri 8 am-6 pm; Sat-Sun closed"
    )


# -- integration with rendering -------------------------------------------------------------


def test_promise_over_thanksgiving_renders_as_friday(clinic: ClinicCalendar) -> None:
    now = ny(2026, 11, 25, 17)  # Wednesday before Thanksgiving
    due = clinic.add_working_minutes(now, 180)
    assert due == utc(2026, 11, 27, 15)
    assert render_due(due=due, now=now, tz=clinic.tz, lang="en") == "by 10 am on Friday"
    assert render_due(due=due, now=now, tz=clinic.tz, lang="es") == "el viernes antes de las 10:00"


def test_next_working_day_morning_promise(clinic: ClinicCalendar) -> None:
    now = ny(2026, 11, 23, 19)
    due = clinic.at_local(clinic.next_working_day(clinic.local_date(now)), time(10))
    assert render_due(due=due, now=now, tz=clinic.tz, lang="en") == "by 10 am tomorrow"


# -- properties -----------------------------------------------------------------------------

PROPERTY_CALENDARS = [
    ClinicCalendar.build(timezone="America/New_York", hours=LUNCH_BREAK, holiday_country="US"),
    ClinicCalendar.build(
        timezone="America/New_York",
        hours={"sun": "00:00-06:00,08:00-18:00", "wed": "01:30-02:30,22:00-23:59"},
        holiday_country="US",
        holiday_subdivision="MA",
        closures=["2026-03-11"],
    ),
    ClinicCalendar.build(
        timezone="Australia/Lord_Howe",
        hours={day: "01:00-03:00,09:00-17:00" for day in DAYS},
        holiday_country="AU",
    ),
    ClinicCalendar.build(timezone="Europe/Dublin", hours=WEEKDAYS_8_TO_6, holiday_country="IE"),
]


@settings(max_examples=300, deadline=None)
@given(
    calendar=st.sampled_from(PROPERTY_CALENDARS),
    start=st.datetimes(
        min_value=datetime(2025, 12, 20), max_value=datetime(2027, 1, 10), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=0, max_value=6000),
)
def test_add_working_minutes_properties(calendar: ClinicCalendar, start: datetime, minutes: int) -> None:
    result = calendar.add_working_minutes(start, minutes)
    assert result.tzinfo is UTC
    assert result >= start
    intervals = calendar.opening_intervals(calendar.local_date(result))
    assert any(begin <= result <= end for begin, end in intervals)
    assert calendar.working_minutes_between(start, result) == minutes
    if minutes > 0:
        # The result is the earliest instant with that much opening time behind it.
        assert calendar.working_minutes_between(start, result - timedelta(microseconds=1)) == minutes - 1
    else:
        assert result == calendar.next_open(start)


@settings(max_examples=200, deadline=None)
@given(
    calendar=st.sampled_from(PROPERTY_CALENDARS),
    start=st.datetimes(
        min_value=datetime(2025, 12, 20), max_value=datetime(2027, 1, 10), timezones=st.just(UTC)
    ),
)
def test_next_open_properties(calendar: ClinicCalendar, start: datetime) -> None:
    opened = calendar.next_open(start)
    assert opened >= start
    assert calendar.is_open(opened)
    assert calendar.working_minutes_between(start, opened) == 0
    assert (opened == start) == calendar.is_open(start)


@settings(max_examples=200, deadline=None)
@given(
    calendar=st.sampled_from(PROPERTY_CALENDARS),
    day=st.dates(min_value=date(2026, 1, 1), max_value=date(2026, 12, 31)),
)
def test_opening_intervals_are_ordered_and_local_to_their_day(calendar: ClinicCalendar, day: date) -> None:
    intervals = calendar.opening_intervals(day)
    flat = [instant for interval in intervals for instant in interval]
    assert flat == sorted(flat)
    assert all(begin < end for begin, end in intervals)
    assert all(calendar.local_date(begin) == day for begin, _ in intervals)
    assert bool(intervals) <= calendar.is_working_day(day)
