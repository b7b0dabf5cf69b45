"""Prometheus metrics: counters at the edges of this process, gauges read from the database at scrape time.

Counters and the latency histogram count what *this* process did (scrape each replica), and, for
the outbox counters, what its worker processes did: `clinicbot serve --processors N` sends from a
worker process that nobody scrapes, so those count in prometheus_client's multiprocess mode (files in
a directory of the web process's) and the web process reports their sums. Everything
computed from the database (messages by channel, routes, intents, the hand-off queue, the outbox,
promises) is read when /metrics is scraped, so every app process reports the same figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.db import read_scope, utcnow

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

MESSAGES_ACCEPTED = Counter(
    "clinicbot_inbound_accepted",
    "Inbound messages stored by this process (duplicates excluded), by channel.",
    ["channel"],
    registry=REGISTRY,
)
OUTBOX_SENT = Counter(
    "clinicbot_outbox_sent",
    "Texts accepted by the provider in this process, by channel.",
    ["channel"],
    registry=REGISTRY,
)
OUTBOX_FAILED = Counter(
    "clinicbot_outbox_failed",
    "Texts marked failed in this process, by channel.",
    ["channel"],
    registry=REGISTRY,
)
OUTBOX_RETRIED = Counter(
    "clinicbot_outbox_retried",
    "Send attempts that will be retried (5xx, 429, timeouts), by channel.",
    ["channel"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY = Histogram(
    "clinicbot_webhook_latency_seconds",
    "Time from receiving a webhook or web chat message to acknowledging it, by endpoint.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

# What worker processes count (they only send); the web process reports these from their files.
WORKER_COUNTERS = (OUTBOX_SENT, OUTBOX_FAILED, OUTBOX_RETRIED)
# prometheus_client reads it when first imported: a worker process gets it in its environment at birth.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Only these paths are timed: a label per random URL would let anyone grow the series without bound.
WEBHOOK_ENDPOINTS = frozenset(
    {"/webhooks/twilio/sms", "/webhooks/twilio/status", "/webhooks/telegram", "/chat/api/messages"}
)


def message_accepted(channel: str) -> None:
    """Count one inbound message stored."""
    MESSAGES_ACCEPTED.labels(channel=channel).inc()


def outbox_outcome(channel: str, status: str) -> None:
    """Count a send attempt's recorded outcome: sent, failed, or going round again."""
    if status == "sent":
        OUTBOX_SENT.labels(channel=channel).inc()
    elif status == "failed":
        OUTBOX_FAILED.labels(channel=channel).inc()
    elif status in {"pending", "unknown"}:
        OUTBOX_RETRIED.labels(channel=channel).inc()


class WebhookTimer:
    """ASGI middleware: observe the latency of the webhook endpoints (POST only) in the histogram."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in WEBHOOK_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            WEBHOOK_LATENCY.labels(endpoint=path).observe(time.perf_counter() - started)


def _seconds_since(moment: datetime | None, now: datetime) -> float:
    if moment is None:
        return 0.0
    if moment.tzinfo is None:  # defensive: an aggregate that lost the UTC column type
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())


def database_metrics(*, session: Session, now: datetime) -> Iterator[Metric]:
    """Yield the metrics computed from the database (the same in every process)."""
    from bot.channels.models import OutboxMessage, OutboxStatus
    from bot.conversations.models import Direction, Handoff, Message
    from bot.promises.models import Promise, PromiseStatus, PromiseUpdate
    from bot.staff.models import OwedAlert, StaffAlert

    messages = CounterMetricFamily(
        "clinicbot_messages",
        "Messages stored, by channel and direction (in, out).",
        labels=["channel", "direction"],
    )
    for channel, direction, count in session.execute(
        select(Message.channel, Message.direction, func.count()).group_by(Message.channel, Message.direction)
    ):
        messages.add_metric([channel, direction], count)
    yield messages

    routes = CounterMetricFamily(
        "clinicbot_routes", "Inbound messages processed, by route.", labels=["route"]
    )
    intents = CounterMetricFamily(
        "clinicbot_intents", "Inbound messages classified, by intent.", labels=["intent"]
    )
    inbound = Message.direction == Direction.IN
    for route, count in session.execute(
        select(Message.route, func.count()).where(inbound, Message.route.is_not(None)).group_by(Message.route)
    ):
        routes.add_metric([route], count)
    for intent, count in session.execute(
        select(Message.intent, func.count())
        .where(inbound, Message.intent.is_not(None))
        .group_by(Message.intent)
    ):
        intents.add_metric([intent], count)
    yield routes
    yield intents

    waiting = Handoff.claimed_at.is_(None) & Handoff.resolved_at.is_(None)
    depth = GaugeMetricFamily(
        "clinicbot_handoff_queue_depth",
        "Hand-offs waiting for a staff member to claim them, by reason.",
        labels=["reason"],
    )
    for reason, count in session.execute(
        select(Handoff.reason, func.count()).where(waiting).group_by(Handoff.reason)
    ):
        depth.add_metric([reason], count)
    yield depth
    oldest = session.scalar(select(func.min(Handoff.created_at)).where(waiting))
    yield GaugeMetricFamily(
        "clinicbot_handoff_oldest_waiting_seconds",
        "Seconds the oldest unclaimed hand-off has waited (0 when none waits).",
        value=_seconds_since(oldest, now),
    )
    # Above 0, staff have not been alerted to an emergency message: raising its alert failed, and the
    # alert sweep is retrying it.
    yield GaugeMetricFamily(
        "clinicbot_staff_alerts_owed",
        "Staff alerts patient messages should have raised but could not yet (the alert sweep retries them).",
        value=session.scalar(select(func.count()).select_from(OwedAlert)) or 0,
    )
    # Above 0, the staff Telegram group lacks alerts the inbox shows: queueing their copies failed (a bad
    # staff group setting?), and the alert sweep is retrying them.
    yield GaugeMetricFamily(
        "clinicbot_staff_alert_copies_owed",
        "In-app staff alerts whose staff group copy could not be queued yet (the alert sweep retries them).",
        value=session.scalar(select(func.count()).where(StaffAlert.copy_owed_at.is_not(None))) or 0,
    )

    backlog_states = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.UNKNOWN)
    backlog = GaugeMetricFamily(
        "clinicbot_outbox_backlog", "Texts not yet handed to the provider (pending, sending, unknown), by channel.",
        labels=["channel"],
    )  # fmt: skip
    retrying = GaugeMetricFamily(
        "clinicbot_outbox_retrying", "Texts in the backlog that have already been tried at least once, by channel.",
        labels=["channel"],
    )  # fmt: skip
    for channel, count, retried in session.execute(
        select(OutboxMessage.channel, func.count(), func.count().filter(OutboxMessage.attempts > 0))
        .where(OutboxMessage.status.in_(backlog_states))
        .group_by(OutboxMessage.channel)
    ):
        backlog.add_metric([channel], count)
        retrying.add_metric([channel], retried)
    yield backlog
    yield retrying
    # Texts by state, whichever process sent them: with `serve --processors N` the sending happens in
    # worker processes nobody scrapes, so their own counters never reach /metrics.
    texts = GaugeMetricFamily(
        "clinicbot_outbox_texts", "Texts in the outbox by channel and state (sent, delivered, failed, ...).",
        labels=["channel", "status"],
    )  # fmt: skip
    for channel, status, count in session.execute(
        select(OutboxMessage.channel, OutboxMessage.status, func.count()).group_by(
            OutboxMessage.channel, OutboxMessage.status
        )
    ):
        texts.add_metric([channel, status], count)
    yield texts
    failed = CounterMetricFamily(
        "clinicbot_outbox_failures", "Texts marked failed, by channel.", labels=["channel"]
    )
    for channel, count in session.execute(
        select(OutboxMessage.channel, func.count())
        .where(OutboxMessage.status == OutboxStatus.FAILED)
        .group_by(OutboxMessage.channel)
    ):
        failed.add_metric([channel], count)
    yield failed
    oldest_due = session.scalar(
        select(func.min(OutboxMessage.next_attempt_at)).where(OutboxMessage.status.in_(backlog_states))
    )
    yield GaugeMetricFamily(
        "clinicbot_outbox_oldest_due_seconds",
        "Seconds the most overdue text in the backlog has been due (0 when none).",
        value=_seconds_since(oldest_due, now) if oldest_due is not None else 0.0,
    )

    updates = CounterMetricFamily(
        "clinicbot_promise_updates", "Promise updates made by the sweeps, by kind (texts sent or call-list entries).",
        labels=["kind"],
    )  # fmt: skip
    for kind, count in session.execute(select(PromiseUpdate.kind, func.count()).group_by(PromiseUpdate.kind)):
        updates.add_metric([kind], count)
    yield updates
    late = GaugeMetricFamily(
        "clinicbot_promises_late", "Open promises past their due time, by kind.", labels=["kind"]
    )
    for kind, count in session.execute(
        select(Promise.kind, func.count())
        .where(Promise.status == PromiseStatus.OPEN, Promise.due_at < now)
        .group_by(Promise.kind)
    ):
        late.add_metric([kind], count)
    yield late


class DatabaseCollector(Collector):
    """Read the shared figures from the database at each scrape; report database_up 0 if it cannot."""

    def collect(self) -> Iterable[Metric]:
        """Return the database metrics and whether reading them worked."""
        try:
            # A scrape counts whole tables: it reads beside the writer, never in its queue.
            with read_scope() as session:
                metrics = list(database_metrics(session=session, now=utcnow()))
            up = 1.0
        except Exception as error:
            log.warning("metrics: database unreadable (%s)", type(error).__name__)
            metrics, up = [], 0.0
        yield from metrics
        yield GaugeMetricFamily(
            "clinicbot_metrics_database_up", "1 if the last scrape could read the database, else 0.", value=up
        )

    def describe(self) -> Iterable[Metric]:
        """Describe nothing up front: the registry must not query the database at registration."""
        return []


REGISTRY.register(DatabaseCollector())


class WorkerProcessCollector(Collector):
    """The worker processes' outbox counters, summed over their files (every worker, restarts included).

    Only `WORKER_COUNTERS` are passed on: a family this process also reports would appear twice.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._registry = CollectorRegistry()
        MultiProcessCollector(self._registry, path=path)
        self._names = {counter._name for counter in WORKER_COUNTERS}

    def collect(self) -> Iterable[Metric]:
        """Return the worker counters read from the files now."""
        for family in self._registry.collect():
            if family.name in self._names:
                yield family

    def describe(self) -> Iterable[Metric]:
        """Describe nothing up front: there are no files until a worker counts."""
        return []


_worker_collector: WorkerProcessCollector | None = None


def count_worker_processes(path: str) -> None:
    """Report the outbox counters of the worker processes writing to `path`, in place of this process's.

    Called by `clinicbot serve` when it sends from worker processes: this process then never sends,
    and its own outbox counters would only ever say 0.
    """
    global _worker_collector
    if _worker_collector is None:
        for counter in WORKER_COUNTERS:
            REGISTRY.unregister(counter)
    else:
        REGISTRY.unregister(_worker_collector)
    _worker_collector = WorkerProcessCollector(path)
    REGISTRY.register(_worker_collector)


def render() -> bytes:
    """Return every metric in the Prometheus text format."""
    return generate_latest(REGISTRY)
