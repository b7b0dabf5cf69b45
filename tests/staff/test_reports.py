"""Reports: each figure over a known week, the per-day chart, CSV export (audited) and date checks."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import delete, func, select

from bot.conversations.models import Conversation, Handoff, Message
from bot.db import session_scope
from bot.demo import DEMO_ADMIN_EMAIL
from bot.patients.models import ChannelIdentity
from bot.promises.models import Promise
from bot.staff.models import AuditEvent, ComplaintCase, Incident, StaffUser
from tests.staff.conftest import DEMO_STAFF_EMAIL, sign_in

# Tuesday 24 Nov 2026, 10:00 in the clinic (America/New_York, UTC-5; open Mon-Fri 08:00-18:00).
NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
WEEK = {"from": "2026-11-16", "to": "2026-11-22"}  # Monday to Sunday, clinic-local


def at(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 11) -> datetime:
    """Return a UTC instant in November 2026."""
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def frozen() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


def _staff_id(email: str = DEMO_ADMIN_EMAIL) -> int:
    with session_scope() as session:
        return session.scalars(select(StaffUser.id).where(StaffUser.email == email)).one()


def seed_week() -> None:
    """Store a known week of activity, with rows just outside it on both sides."""
    staff_id = _staff_id()
    with session_scope() as session:
        # The demo clinic's lab promises are due around the real date: only this week's rows may count.
        session.execute(delete(Promise))
        for model in (Conversation, Message, Handoff, ComplaintCase, Incident):
            assert session.scalar(select(func.count()).select_from(model)) == 0
        identities = {
            channel: ChannelIdentity(channel=channel, address=address)
            for channel, address in (("sms", "+16175550900"), ("webchat", "wc-report"), ("telegram", "4242"))
        }
        session.add_all(identities.values())
        session.flush()

        def conversation(
            channel: str, created: datetime, messages: list[tuple[str, datetime]]
        ) -> Conversation:
            row = Conversation(channel=channel, identity_id=identities[channel].id, created_at=created)
            session.add(row)
            session.flush()
            for direction, when in messages:
                session.add(Message(conversation_id=row.id, channel=channel, direction=direction,
                                    author_kind="patient" if direction == "in" else "bot", body="x", created_at=when,
                                    processed_at=when))  # fmt: skip
            session.flush()
            return row

        def handoff(
            conv: Conversation, reason: str, created: datetime, due: datetime, **times: datetime
        ) -> Handoff:
            row = Handoff(conversation_id=conv.id, reason=reason, priority=10, team="front_desk",
                          created_at=created, due_at=due, **times)  # fmt: skip
            session.add(row)
            session.flush()
            return row

        # Outside, before: Sunday 15 Nov, including 23:30 local, which is already 16 Nov in UTC.
        c0 = conversation("sms", at(15, 12), [("in", at(15, 12)), ("in", at(16, 4, 30))])
        handoff(c0, "human", at(15, 12), at(16, 14), first_response_at=at(16, 14, 30))
        # Outside, after: Monday 23 Nov 00:30 local.
        after = conversation("sms", at(23, 5, 30), [("in", at(23, 5, 30))])
        handoff(after, "medical", at(23, 5, 30), at(23, 14))

        # Mon 09:00 local: answered by the bot, never handed off.
        c1 = conversation("sms", at(16, 14), [("in", at(16, 14)), ("out", at(16, 14, 0, 5))])
        # Mon 17:00 local -> Tue 08:30 local: 60 + 30 = 90 working minutes; due at Mon 18:00 local, so late.
        c2 = conversation(
            "webchat", at(16, 22), [("in", at(16, 22)), ("out", at(16, 22, 0, 5)), ("out", at(17, 13, 30))]
        )
        handoff(
            c2, "human", at(16, 22), at(16, 23), first_response_at=at(17, 13, 30), claimed_at=at(17, 13, 29)
        )
        # Fri 17:30 local -> Mon 08:15 local, across the weekend: 30 + 15 = 45 working minutes, on time.
        c3 = conversation("telegram", at(20, 22, 30), [("in", at(20, 22, 30)), ("out", at(20, 22, 30, 5))])
        handoff(c3, "medical", at(20, 22, 30), at(23, 13, 30), first_response_at=at(23, 13, 15))
        session.add(Message(conversation_id=c3.id, channel="telegram", direction="out", author_kind="staff",
                            author_id=staff_id, body="x", created_at=at(23, 13, 15)))  # fmt: skip
        # Wed 10:00 local complaint, answered in 20 minutes.
        c4 = conversation("sms", at(18, 15), [("in", at(18, 15)), ("out", at(18, 15, 20))])
        handoff(c4, "complaint", at(18, 15), at(18, 16), first_response_at=at(18, 15, 20))
        # Wed 21:00 local emergency: 12 minutes of clock time although the clinic is closed.
        c5 = conversation("sms", at(19, 2), [("in", at(19, 2)), ("out", at(19, 2, 0, 3))])
        handoff(c5, "emergency", at(19, 2), at(19, 2, 15), first_response_at=at(19, 2, 12))
        # Saturday: still unanswered, past its due time (Mon 09:00 local).
        c6 = conversation("webchat", at(21, 15), [("in", at(21, 15))])
        handoff(c6, "unclear", at(21, 15), at(23, 14))
        # Sunday: handed back before it was due, without a staff message: no breach, no response time.
        c7 = conversation("webchat", at(22, 16), [("in", at(22, 16))])
        handoff(c7, "human", at(22, 16), at(23, 14), resolved_at=at(23, 13))
        # Sunday 18:00 local: contained.
        conversation("sms", at(22, 23), [("in", at(22, 23)), ("out", at(22, 23, 0, 5))])

        # Corrections: one sent Tue 11:00 local; one recorded but not sent; one sent after the week.
        correction = Message(conversation_id=c1.id, channel="sms", direction="out", author_kind="staff",
                             author_id=staff_id, body="x", created_at=at(17, 16))  # fmt: skip
        late_correction = Message(conversation_id=c0.id, channel="sms", direction="out", author_kind="staff",
                                  author_id=staff_id, body="x", created_at=at(23, 15))  # fmt: skip
        session.add_all([correction, late_correction])
        session.flush()
        wrong = {conv.id: session.scalars(select(Message.id).where(Message.conversation_id == conv.id)
                                           .order_by(Message.id)).all() for conv in (c0, c1, c4)}  # fmt: skip
        session.add_all([
            Incident(message_id=wrong[c1.id][1], conversation_id=c1.id, reported_by_id=staff_id, author_kind="bot",
                     correction_message_id=correction.id, created_at=at(17, 15, 55)),
            Incident(message_id=wrong[c4.id][1], conversation_id=c4.id, reported_by_id=staff_id, author_kind="staff",
                     created_at=at(18, 16)),
            Incident(message_id=wrong[c0.id][0], conversation_id=c0.id, reported_by_id=staff_id, author_kind="bot",
                     correction_message_id=late_correction.id, created_at=at(22, 20)),
        ])  # fmt: skip

        # Complaints: opened in the week (3), resolved in the week (2: after 48 h and after 102 h).
        session.add_all([
            ComplaintCase(conversation_id=c4.id, opened_at=at(18, 15), resolved_at=at(20, 15), status="resolved"),
            ComplaintCase(conversation_id=c0.id, opened_at=at(12, 15), resolved_at=at(16, 21), status="resolved"),
            ComplaintCase(conversation_id=c6.id, opened_at=at(21, 15)),
            ComplaintCase(conversation_id=c2.id, opened_at=at(16, 15), resolved_at=at(24, 14), status="resolved"),
        ])  # fmt: skip

        def promise(number: int, due: datetime, status: str, kept: datetime | None = None) -> Promise:
            return Promise(kind="callback", subject_type="report-test", subject_id=number, reason_key="callback",
                           due_at=due, status=status, kept_at=kept)  # fmt: skip

        session.add_all([
            promise(1, at(17, 20), "kept", at(17, 19)),  # on time
            promise(2, at(18, 20), "kept", at(18, 21)),  # late
            promise(3, at(19, 20), "cancelled"),  # left out
            promise(4, at(20, 20), "open"),  # overdue
            promise(5, at(16, 15), "kept", at(16, 15)),  # kept exactly when due: on time
            promise(6, at(25, 20), "open"),  # due after the week
            promise(7, at(24, 20), "open"),  # due later today: not yet kept or overdue
        ])  # fmt: skip


EXPECTED_CSV = [
    ["metric", "key", "value"],
    ["range_from", "", "2026-11-16"],
    ["range_to", "", "2026-11-22"],
    ["messages_in", "sms", "4"],
    ["messages_out", "sms", "5"],
    ["messages_in", "telegram", "1"],
    ["messages_out", "telegram", "1"],
    ["messages_in", "webchat", "3"],
    ["messages_out", "webchat", "2"],
    ["messages_in_total", "", "8"],
    ["messages_out_total", "", "8"],
    ["conversations", "", "8"],
    ["conversations_contained", "", "2"],
    ["containment_pct", "", "25"],
    ["handoffs", "complaint", "1"],
    ["handoffs", "emergency", "1"],
    ["handoffs", "human", "2"],
    ["handoffs", "medical", "1"],
    ["handoffs", "unclear", "1"],
    ["handoffs_total", "", "6"],
    ["first_response_n", "", "4"],
    ["first_response_median_minutes", "", "32.5"],
    ["first_response_p90_minutes", "", "90"],
    ["sla_breaches", "", "2"],
    ["sla_breaches_answered_late", "", "1"],
    ["sla_breaches_unanswered", "", "1"],
    ["complaints_opened", "", "3"],
    ["complaints_resolved", "", "2"],
    ["complaint_resolve_median_hours", "", "75"],
    ["promises_counted", "", "4"],
    ["promises_kept_on_time", "", "2"],
    ["promises_kept_on_time_pct", "", "50"],
    ["corrections_sent", "", "1"],
]
# Local days Mon 16 .. Sun 22: (messages in and out, hand-offs).
EXPECTED_DAYS = {
    "2026-11-16": (4, 1),
    "2026-11-17": (2, 0),
    "2026-11-18": (4, 2),
    "2026-11-19": (0, 0),
    "2026-11-20": (2, 1),
    "2026-11-21": (1, 1),
    "2026-11-22": (3, 1),
}


def test_each_figure_over_a_known_week(make_app, frozen) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    seed_week()
    sign_in(client)
    response = client.get("/staff/reports", params=WEEK)
    assert response.status_code == 200
    html = response.text
    assert re.search(r'id="containment">25.0%<', html)
    assert "2 of 8 conversations" in html
    assert "<dt>Median</dt><dd>32.5 min</dd>" in html
    assert "<dt>90th percentile</dt><dd>1 h 30 min</dd>" in html
    assert "n=4" in html
    assert re.search(r'id="sla-breaches">2<', html)
    assert "1 answered late, 1 unanswered past the due time." in html
    assert "<dt>Opened</dt><dd>3</dd>" in html and "<dt>Resolved</dt><dd>2</dd>" in html
    assert "<dt>Median time to resolve</dt><dd>3.1 days</dd>" in html
    assert re.search(r'id="promises">50.0%<', html) and "2 of 4 promises" in html
    assert re.search(r'id="corrections">1<', html)


def test_csv_export_lists_every_metric_and_day_and_is_audited(make_app, frozen) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    seed_week()
    sign_in(client)
    response = client.get("/staff/reports.csv", params=WEEK)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        'attachment; filename="clinicbot-report-2026-11-16_2026-11-22.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.text)))
    days = [[kind, day, str(counts[index])] for day, counts in EXPECTED_DAYS.items()
            for index, kind in enumerate(("day_messages", "day_handoffs"))]  # fmt: skip
    assert rows == EXPECTED_CSV + days
    with session_scope() as session:
        events = session.execute(
            select(
                AuditEvent.actor_kind, AuditEvent.actor_id, AuditEvent.patient_id, AuditEvent.details
            ).where(AuditEvent.action == "report.exported")
        ).all()
    assert [tuple(event) for event in events] == [
        ("staff", str(_staff_id()), None, {"from": "2026-11-16", "to": "2026-11-22"})
    ]


def test_viewing_the_page_is_not_an_export(make_app, frozen) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client)
    assert client.get("/staff/reports", params=WEEK).status_code == 200
    with session_scope() as session:
        exported = session.scalars(select(AuditEvent.id).where(AuditEvent.action == "report.exported")).all()
    assert exported == []


def test_chart_has_one_bar_per_day_per_series_and_a_table(make_app, frozen) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    seed_week()
    sign_in(client)
    html = client.get("/staff/reports", params=WEEK).text
    chart = html[html.index('<svg id="per-day-chart"') : html.index("</svg>")]
    assert '<title id="chart-title">' in chart and '<desc id="chart-desc">' in chart
    bars = re.findall(r'<rect class="bar" data-day="([\d-]+)" data-value="(\d+)"', chart)
    expected_messages = [(day, str(counts[0])) for day, counts in EXPECTED_DAYS.items()]
    expected_handoffs = [(day, str(counts[1])) for day, counts in EXPECTED_DAYS.items()]
    assert bars == expected_messages + expected_handoffs
    table = html[html.index('<table class="responsive" id="per-day-table">') :]
    rows = re.findall(r'<th scope="row" data-label="Day">([\d-]+)</th><td data-label="Messages">(\d+)</td>'
                      r'<td data-label="Hand-offs">(\d+)</td>', table)  # fmt: skip
    assert rows == [(day, str(m), str(h)) for day, (m, h) in EXPECTED_DAYS.items()]


def test_default_range_is_the_last_seven_days_up_to_today(make_app, frozen) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    seed_week()
    sign_in(client, email=DEMO_STAFF_EMAIL)  # every role may read reports
    response = client.get("/staff/reports.csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    figures = {(metric, key): value for metric, key, value in rows[1:]}
    assert (figures[("range_from", "")], figures[("range_to", "")]) == ("2026-11-18", "2026-11-24")
    # Promise 2 (late) and 4 (overdue) count; 3 is cancelled and 7 is due later today.
    assert (figures[("promises_counted", "")], figures[("promises_kept_on_time_pct", "")]) == ("2", "0")
    days = [key for metric, key in figures if metric == "day_messages"]
    assert days == [(NOW.date() - timedelta(days=offset)).isoformat() for offset in range(6, -1, -1)]
    page = client.get("/staff/reports")
    assert page.status_code == 200
    assert 'value="2026-11-18"' in page.text and 'value="2026-11-24"' in page.text


@pytest.mark.parametrize(
    ("params", "field", "problem"),
    [
        ({"from": "2026-13-01", "to": "2026-11-22"}, "from", "is not a date"),
        ({"from": "2026-11-16", "to": "22/11/2026"}, "to", "is not a date"),
        ({"from": "2026-11-22", "to": "2026-11-16"}, "to", "is before the start date"),
        ({"from": "2025-11-16", "to": "2026-11-17"}, "to", "longer than 366 days"),
        ({"from": "0001-01-01", "to": "0001-01-02"}, "from", "is outside 1970-01-01 to 9000-12-31"),
        ({"to": "9999-12-31"}, "to", "is outside 1970-01-01 to 9000-12-31"),
    ],
)
def test_bad_dates_are_refused_naming_the_field(make_app, frozen, params, field, problem) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client)
    page = client.get("/staff/reports", params=params)
    assert page.status_code == 400
    assert f"The “{field}” date is not usable" in page.text and problem in page.text
    assert 'aria-invalid="true"' in page.text and "per-day-chart" not in page.text
    export = client.get("/staff/reports.csv", params=params)
    assert (export.status_code, export.text.split(":")[0]) == (400, field)


def test_a_range_of_exactly_366_days_is_allowed(make_app, frozen) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    sign_in(client)
    response = client.get("/staff/reports", params={"from": "2025-11-23", "to": "2026-11-23"})
    assert response.status_code == 200
    assert len(re.findall(r'<rect class="bar"', response.text)) == 2 * 366


def test_reports_need_a_signed_in_staff_member(make_app) -> None:  # type: ignore[no-untyped-def]
    client = make_app().client
    assert client.get("/staff/reports.csv").status_code == 401
    page = client.get("/staff/reports", headers={"accept": "text/html"}, follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/staff/login?next=%2Fstaff%2Freports")
