"""Build the APScheduler scheduler: interval sweeps, not one stored job per promise."""

from __future__ import annotations

import contextlib
import signal
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from bot.config import Settings
from bot.staff.alerts import SWEEP_SECONDS, sla_sweep_pass
from scheduler import jobs

SWEEP_JOB_ID = "promise_sweeps"
OUTBOX_JOB_ID = "outbox"
SLA_JOB_ID = "sla_sweeps"
OUTBOX_SECONDS = 2.0


def build_scheduler(*, settings: Settings, blocking: bool, deliver: bool) -> BaseScheduler:
    """Return a scheduler with the sweep job (and, standalone, an outbox job); not started."""
    # Jobs live in memory: the state they act on lives in the database, so nothing is lost on restart.
    # A run up to one interval late still runs; several missed runs coalesce into one; never two at once.
    grace = max(1, round(settings.scheduler_sweep_seconds))
    defaults = {"coalesce": True, "max_instances": 1, "misfire_grace_time": grace}
    scheduler: BaseScheduler = (BlockingScheduler if blocking else BackgroundScheduler)(
        timezone=UTC, job_defaults=defaults
    )
    scheduler.add_job(
        jobs.sweep_job,
        "interval",
        seconds=settings.scheduler_sweep_seconds,
        id=SWEEP_JOB_ID,
        # The first pass runs at start: a scheduler that was down catches up on today's updates.
        next_run_time=datetime.now(tz=UTC),
        coalesce=True,
        max_instances=1,
        misfire_grace_time=grace,
    )
    if deliver:
        # Standalone, this process may be the deployment's only sender: the sweeps that run beside an app's
        # sender (alerts owed to staff, overdue hand-offs, kept status callbacks) run here too. Beside an
        # app's they are harmless: each claims its rows (SKIP LOCKED) and raises an alert once.
        scheduler.add_job(
            sla_sweep_pass,
            "interval",
            seconds=SWEEP_SECONDS,
            id=SLA_JOB_ID,
            next_run_time=datetime.now(tz=UTC),
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, round(SWEEP_SECONDS)),
        )
        scheduler.add_job(
            jobs.deliver_job,
            "interval",
            args=(jobs.build_sender(settings),),
            seconds=OUTBOX_SECONDS,
            id=OUTBOX_JOB_ID,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, round(OUTBOX_SECONDS)),
        )
    return scheduler


def start_in_process(settings: Settings) -> BaseScheduler:
    """Start the sweeps in a background thread of a serving process (its workers deliver the outbox)."""
    scheduler = build_scheduler(settings=settings, blocking=False, deliver=False)
    scheduler.start()
    return scheduler


def run_standalone(settings: Settings) -> None:
    """Run the sweeps and an outbox sender in this process until interrupted."""
    scheduler = build_scheduler(settings=settings, blocking=True, deliver=True)
    # SIGTERM (a service manager stopping us) ends the current job, then the process.
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()
