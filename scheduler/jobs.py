"""The scheduler's jobs: thin wrappers that take the leadership and call the bot's sweep flows."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

from bot.channels.base import Delivery
from bot.channels.outbox import SENDER_LEADERSHIP, OutboxSender
from bot.channels.registry import build_channels
from bot.clinic import ClinicConfigError
from bot.clinic_settings import ClinicMissingError
from bot.config import Settings, get_settings
from bot.conversations.domain import Domain, load_domain
from bot.db import get_engine, session_scope, utcnow
from bot.db.leader import Leadership, holder_name
from bot.promises import service
from bot.promises.sweeps import SweepCounts, do_run_sweeps

log = logging.getLogger(__name__)

HEARTBEAT_NAME = "scheduler"


@lru_cache(maxsize=4)
def _domain(root: Path) -> Domain:
    from bot.conversations.engine import build_executor

    return load_domain(root=root, actions=set(build_executor().actions))


def update_domain(settings: Settings | None = None) -> Domain:
    """Return the clinic's words, loaded once per process (no classifier needed)."""
    return _domain((settings or get_settings()).dialogues_dir)


def sweep_pass(*, now: datetime | None = None, wait: float = 0.0) -> SweepCounts | None:
    """Run every sweep once as the leader, as if at `now`; return None when another process leads."""
    settings = get_settings()
    with Leadership(engine=get_engine()) as leadership:
        if not leadership.acquire(timeout=wait):
            log.info("another scheduler is sweeping; skipping this pass")
            return None
        counts = do_run_sweeps(
            domain=update_domain(settings),
            now=now or utcnow(),
            escalation_working_days=settings.late_escalation_working_days,
            batch_size=settings.scheduler_batch_size,
        )
        with session_scope() as session:
            # The heartbeat is real time, whatever time the pass was run as: /readyz reads it.
            service.beat(session=session, name=HEARTBEAT_NAME, holder=holder_name(), at=utcnow())
    return counts


def sweep_job() -> None:
    """The interval job: one pass at the real time."""
    try:
        sweep_pass()
    except (ClinicConfigError, ClinicMissingError) as error:
        # Someone has to fix the clinic's settings; a traceback every interval would bury what is wrong.
        log.error("promise sweep skipped: clinic setting %s", error)
    except Exception:
        # Keep the scheduler alive: the next interval retries, and UNIQUE keys make retries harmless.
        log.exception("promise sweep failed")


def build_sender(settings: Settings | None = None) -> OutboxSender:
    """Return an outbox sender on the configured channels."""
    settings = settings or get_settings()
    return OutboxSender(
        channels=build_channels(settings),
        max_attempts=settings.outbox_max_attempts,
        pacing=settings.outbox_pacing,
        stale_after=timedelta(seconds=settings.outbox_stale_seconds),
    )


@dataclass
class DeliveryCounts:
    """What one delivery round did."""

    sent: int = 0
    not_sent: int = 0
    # False when another process is the deployment's sender (an app's): the texts were left to it.
    led: bool = True


def deliver_due(sender: OutboxSender, *, wait: float = 0.0, max_rounds: int = 1000) -> DeliveryCounts:
    """Deliver every text due now as the deployment's one sender; return the outcomes.

    The app's sender (`OutboxSender.run_forever`) holds the same leadership: two senders would each pace
    a sending number at its carrier's full rate, and one's texts in a long batch could look stale to
    the other. When another process leads, this waits up to `wait` seconds, then leaves the texts to it.
    """
    with Leadership(engine=get_engine(), name=SENDER_LEADERSHIP) as leadership:
        if not leadership.acquire(timeout=wait):
            log.info("another process is the outbox sender; leaving the texts to it")
            return DeliveryCounts(led=False)
        counts = DeliveryCounts()
        for _ in range(max_rounds):
            if not leadership.alive():
                log.warning("outbox delivery lost its leadership (database session ended); stopping")
                break
            texts = sender.claim()
            if not texts:
                break
            for outcome in sender.deliver_all(texts, just_claimed=True):
                if outcome.result.outcome is Delivery.SENT:
                    counts.sent += 1
                else:
                    counts.not_sent += 1
    return counts


def deliver_job(sender: OutboxSender) -> None:
    """The standalone scheduler's outbox job: deliver what is due, unless an app's sender leads."""
    try:
        deliver_due(sender)
    except Exception:
        log.exception("outbox delivery round failed")
