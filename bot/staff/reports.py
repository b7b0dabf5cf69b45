"""Staff reports: what the bot and the team did over a date range, computed from the stored rows."""

from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from bot.clinic import ClinicCalendar
from bot.conversations.models import Conversation, Handoff, HandoffReason, Message
from bot.promises.models import Promise, PromiseStatus
from bot.staff.models import AuditEvent, ComplaintCase, Incident

MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 7
# Far beyond any stored row, and far enough from date.min/max that day arithmetic cannot overflow.
EARLIEST, LATEST = date(1970, 1, 1), date(9000, 12, 31)


class RangeError(ValueError):
    """A report's date range was refused; field names the form field at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class DateRange:
    """Clinic-local days first..last (both included) and the UTC instants [start, end) they cover."""

    first: date
    last: date
    start: datetime
    end: datetime

    @property
    def days(self) -> list[date]:
        """Return every local day in the range."""
        return [self.first + timedelta(days=offset) for offset in range((self.last - self.first).days + 1)]


def _parse_day(text: str | None, *, field: str) -> date | None:
    value = (text or "").strip()
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise RangeError(field, f"{value[:40]!r} is not a date; use YYYY-MM-DD") from None
    if not EARLIEST <= day <= LATEST:
        raise RangeError(
            field, f"{day.isoformat()} is outside {EARLIEST.isoformat()} to {LATEST.isoformat()}"
        )
    return day


def parse_range(*, calendar: ClinicCalendar, first: str | None, last: str | None, today: date) -> DateRange:
    """Read a from/to pair of local dates (default: the last 7 days up to today); raise RangeError."""
    first_day = _parse_day(first, field="from")
    last_day = _parse_day(last, field="to")
    if last_day is None:
        last_day = (
            today if first_day is None else min(today, first_day + timedelta(days=DEFAULT_RANGE_DAYS - 1))
        )
    if first_day is None:
        first_day = last_day - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if last_day < first_day:
        raise RangeError("to", f"{last_day.isoformat()} is before the start date {first_day.isoformat()}")
    if (last_day - first_day).days + 1 > MAX_RANGE_DAYS:
        raise RangeError("to", f"the range is longer than {MAX_RANGE_DAYS} days; pick a shorter one")
    return DateRange(
        first=first_day,
        last=last_day,
        start=calendar.at_local(first_day, time(0, 0)),
        end=calendar.at_local(last_day + timedelta(days=1), time(0, 0)),
    )


def median(values: list[float]) -> float | None:
    """Return the median (the mean of the middle two for an even count), or None for no values."""
    return statistics.median(values) if values else None


def percentile(values: list[float], share: float) -> float | None:
    """Return the nearest-rank percentile (share in 0..1]: the smallest value at or above that share."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def response_minutes(*, calendar: ClinicCalendar, handoff: Handoff) -> int | None:
    """Return minutes to the first staff response: working time, but wall-clock for emergencies."""
    if handoff.first_response_at is None:
        return None
    if handoff.reason == HandoffReason.EMERGENCY:
        return (handoff.first_response_at - handoff.created_at) // timedelta(minutes=1)
    return calendar.working_minutes_between(handoff.created_at, handoff.first_response_at)


def is_sla_breach(*, handoff: Handoff, now: datetime) -> bool:
    """Return whether a hand-off was answered after its due time, or sat unanswered past it."""
    if handoff.first_response_at is not None:
        return handoff.first_response_at > handoff.due_at
    # Closed without a staff message before it was due (say, handed straight back): no breach.
    stopped = handoff.resolved_at if handoff.resolved_at is not None else now
    return stopped > handoff.due_at


@dataclass
class DayCount:
    """One local day's activity."""

    day: date
    messages: int = 0
    handoffs: int = 0


@dataclass
class Report:
    """Every figure the reports page shows for a range."""

    range: DateRange
    messages: dict[str, dict[str, int]] = field(default_factory=dict)  # channel -> {"in": n, "out": n}
    conversations: int = 0
    contained: int = 0
    handoffs_by_reason: dict[str, int] = field(default_factory=dict)
    response_minutes: list[int] = field(default_factory=list)
    sla_breaches: int = 0
    sla_late_answers: int = 0
    sla_unanswered: int = 0
    complaints_opened: int = 0
    complaints_resolved: int = 0
    complaint_resolve_hours: list[float] = field(default_factory=list)
    promises_counted: int = 0
    promises_kept_on_time: int = 0
    corrections_sent: int = 0
    per_day: list[DayCount] = field(default_factory=list)

    @property
    def messages_in(self) -> int:
        """Return all inbound messages."""
        return sum(counts["in"] for counts in self.messages.values())

    @property
    def messages_out(self) -> int:
        """Return all outbound messages."""
        return sum(counts["out"] for counts in self.messages.values())

    @property
    def handoffs(self) -> int:
        """Return all hand-offs."""
        return sum(self.handoffs_by_reason.values())

    @property
    def containment_pct(self) -> float | None:
        """Return the share of conversations never handed to staff, in percent."""
        return _pct(self.contained, self.conversations)

    @property
    def response_median(self) -> float | None:
        """Return the median first-response time in minutes."""
        return median([float(value) for value in self.response_minutes])

    @property
    def response_p90(self) -> float | None:
        """Return the 90th-percentile first-response time in minutes."""
        return percentile([float(value) for value in self.response_minutes], 0.9)

    @property
    def complaint_resolve_median_hours(self) -> float | None:
        """Return the median wall-clock hours from opening a complaint to resolving it."""
        return median(self.complaint_resolve_hours)

    @property
    def promises_kept_pct(self) -> float | None:
        """Return the share of due promises kept on time, in percent."""
        return _pct(self.promises_kept_on_time, self.promises_counted)


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _in_range(column: object, window: DateRange) -> object:
    return and_(column >= window.start, column < window.end)  # type: ignore[operator]


def _per_day(values: list[datetime], bounds: list[datetime]) -> list[int]:
    # bounds[i] is the UTC start of local day i; the last bound is the range's end.
    counts = [0] * (len(bounds) - 1)
    for value in values:
        index = bisect.bisect_right(bounds, value) - 1
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def build_report(*, session: Session, calendar: ClinicCalendar, window: DateRange, now: datetime) -> Report:
    """Compute every figure of the reports page for a range."""
    report = Report(range=window)

    rows = session.execute(
        select(Message.channel, Message.direction, func.count())
        .where(_in_range(Message.created_at, window))
        .group_by(Message.channel, Message.direction)
    ).all()
    for channel, direction, count in rows:
        report.messages.setdefault(channel, {"in": 0, "out": 0})[direction] = count
    report.messages = dict(sorted(report.messages.items()))

    report.conversations = (
        session.scalar(select(func.count()).where(_in_range(Conversation.created_at, window))) or 0
    )
    report.contained = (
        session.scalar(
            select(func.count()).where(
                _in_range(Conversation.created_at, window),
                ~exists().where(Handoff.conversation_id == Conversation.id),
            )
        )
        or 0
    )

    handoffs = session.scalars(select(Handoff).where(_in_range(Handoff.created_at, window))).all()
    report.handoffs_by_reason = dict(sorted(Counter(handoff.reason for handoff in handoffs).items()))
    for handoff in handoffs:
        minutes = response_minutes(calendar=calendar, handoff=handoff)
        if minutes is not None:
            report.response_minutes.append(minutes)
        if is_sla_breach(handoff=handoff, now=now):
            report.sla_breaches += 1
            if handoff.first_response_at is None:
                report.sla_unanswered += 1
            else:
                report.sla_late_answers += 1
    report.response_minutes.sort()

    report.complaints_opened = (
        session.scalar(select(func.count()).where(_in_range(ComplaintCase.opened_at, window))) or 0
    )
    resolved = session.execute(
        select(ComplaintCase.opened_at, ComplaintCase.resolved_at).where(
            _in_range(ComplaintCase.resolved_at, window)
        )
    ).all()
    report.complaints_resolved = len(resolved)
    report.complaint_resolve_hours = sorted(
        (resolved_at - opened_at) / timedelta(hours=1) for opened_at, resolved_at in resolved
    )

    promises = session.execute(
        select(Promise.status, Promise.due_at, Promise.kept_at).where(
            _in_range(Promise.due_at, window), Promise.status != PromiseStatus.CANCELLED
        )
    ).all()
    for status, due_at, kept_at in promises:
        if status == PromiseStatus.KEPT:
            report.promises_counted += 1
            if kept_at is not None and kept_at <= due_at:
                report.promises_kept_on_time += 1
        elif due_at < now:
            # Open and past due: overdue. Open and not yet due: not counted either way.
            report.promises_counted += 1

    report.corrections_sent = (
        session.scalar(
            select(func.count())
            .select_from(Incident)
            .join(Message, Message.id == Incident.correction_message_id)
            .where(_in_range(Message.created_at, window))
        )
        or 0
    )

    days = window.days
    bounds = [calendar.at_local(day, time(0, 0)) for day in days] + [window.end]
    message_times = list(
        session.scalars(select(Message.created_at).where(_in_range(Message.created_at, window)))
    )
    per_day_messages = _per_day(message_times, bounds)
    per_day_handoffs = _per_day([handoff.created_at for handoff in handoffs], bounds)
    report.per_day = [
        DayCount(day=day, messages=messages, handoffs=count)
        for day, messages, count in zip(days, per_day_messages, per_day_handoffs, strict=True)
    ]
    return report


def csv_rows(report: Report) -> list[tuple[str, str, str]]:
    """Return the report as (metric, key, value) rows: one per figure, then the per-day series."""
    rows: list[tuple[str, str, str]] = [
        ("range_from", "", report.range.first.isoformat()),
        ("range_to", "", report.range.last.isoformat()),
    ]
    for channel, counts in report.messages.items():
        rows.append(("messages_in", channel, str(counts["in"])))
        rows.append(("messages_out", channel, str(counts["out"])))
    rows += [
        ("messages_in_total", "", str(report.messages_in)),
        ("messages_out_total", "", str(report.messages_out)),
        ("conversations", "", str(report.conversations)),
        ("conversations_contained", "", str(report.contained)),
        ("containment_pct", "", _text(report.containment_pct)),
    ]
    rows += [("handoffs", reason, str(count)) for reason, count in report.handoffs_by_reason.items()]
    rows += [
        ("handoffs_total", "", str(report.handoffs)),
        ("first_response_n", "", str(len(report.response_minutes))),
        ("first_response_median_minutes", "", _text(report.response_median)),
        ("first_response_p90_minutes", "", _text(report.response_p90)),
        ("sla_breaches", "", str(report.sla_breaches)),
        ("sla_breaches_answered_late", "", str(report.sla_late_answers)),
        ("sla_breaches_unanswered", "", str(report.sla_unanswered)),
        ("complaints_opened", "", str(report.complaints_opened)),
        ("complaints_resolved", "", str(report.complaints_resolved)),
        ("complaint_resolve_median_hours", "", _text(report.complaint_resolve_median_hours)),
        ("promises_counted", "", str(report.promises_counted)),
        ("promises_kept_on_time", "", str(report.promises_kept_on_time)),
        ("promises_kept_on_time_pct", "", _text(report.promises_kept_pct)),
        ("corrections_sent", "", str(report.corrections_sent)),
    ]
    for day in report.per_day:
        rows.append(("day_messages", day.day.isoformat(), str(day.messages)))
        rows.append(("day_handoffs", day.day.isoformat(), str(day.handoffs)))
    return rows


def _text(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0")


@dataclass(frozen=True)
class Bar:
    """One day's bar in a chart panel, in SVG user units."""

    day: date
    value: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Panel:
    """One series drawn as bars, with its own scale."""

    label: str
    top: float
    height: float
    maximum: int
    bars: list[Bar]


CHART_WIDTH = 720.0
CHART_LEFT = 40.0
PANEL_HEIGHT = 110.0
PANEL_GAP = 40.0


def chart_panels(report: Report) -> list[Panel]:
    """Lay out the per-day chart: a bar per day for messages, and another for hand-offs."""
    panels = []
    series = (
        ("Messages (in and out)", [day.messages for day in report.per_day]),
        ("Hand-offs", [day.handoffs for day in report.per_day]),
    )
    width = (CHART_WIDTH - CHART_LEFT) / max(1, len(report.per_day))
    for index, (label, values) in enumerate(series):
        top = 20.0 + index * (PANEL_HEIGHT + PANEL_GAP)
        maximum = max(values, default=0)
        bars = []
        for position, (day, value) in enumerate(zip(report.range.days, values, strict=True)):
            height = PANEL_HEIGHT * value / maximum if maximum else 0.0
            bars.append(
                Bar(
                    day=day,
                    value=value,
                    x=round(CHART_LEFT + position * width + width * 0.1, 2),
                    y=round(top + PANEL_HEIGHT - height, 2),
                    width=round(width * 0.8, 2),
                    height=round(height, 2),
                )
            )
        panels.append(Panel(label=label, top=top, height=PANEL_HEIGHT, maximum=maximum, bars=bars))
    return panels


def format_minutes(value: float | None) -> str:
    """Render minutes as '32.5 min' or '3 h 05 min'; an em dash when there is nothing to show."""
    if value is None:
        return "—"
    if value < 60:
        return f"{_text(value)} min"
    minutes = math.floor(value + 0.5)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_hours(value: float | None) -> str:
    """Render a wall-clock duration in hours, or in days past two days."""
    if value is None:
        return "—"
    if value < 48:
        return f"{value:.1f} h"
    return f"{value / 24:.1f} days"


# -- the audit trail's search ---------------------------------------------------------------------

AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditQuery:
    """Filters for the audit trail; None means any."""

    actor_id: str | None = None
    action_prefix: str | None = None
    patient_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None


def search_audit(
    *, session: Session, query: AuditQuery, limit: int = AUDIT_PAGE_SIZE
) -> tuple[list[AuditEvent], bool]:
    """Return the newest matching audit events (at most limit) and whether older ones exist."""
    statement = select(AuditEvent)
    if query.actor_id is not None:
        statement = statement.where(AuditEvent.actor_id == query.actor_id)
    if query.action_prefix:
        # A prefix match without LIKE wildcards, so "%" or "_" typed in the form mean themselves.
        prefix = query.action_prefix
        statement = statement.where(func.substr(AuditEvent.action, 1, len(prefix)) == prefix)
    if query.patient_id is not None:
        statement = statement.where(AuditEvent.patient_id == query.patient_id)
    if query.since is not None:
        statement = statement.where(AuditEvent.at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEvent.at < query.until)
    if query.before_id is not None:
        statement = statement.where(AuditEvent.id < query.before_id)
    rows = list(session.scalars(statement.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
