"""The APScheduler set-up and the leadership that keeps one process sweeping at a time."""

from __future__ import annotations

import time

from bot.config import get_settings
from bot.db import get_engine, session_scope
from bot.db.leader import Leadership
from bot.promises.models import SchedulerHeartbeat
from scheduler.setup import OUTBOX_JOB_ID, SLA_JOB_ID, SWEEP_JOB_ID, build_scheduler, start_in_process


def test_sweep_job_is_an_interval_with_explicit_misfire_and_coalesce(clinic_db_sched) -> None:
    scheduler = build_scheduler(settings=get_settings(), blocking=False, deliver=True)
    sweep, outbox = scheduler.get_job(SWEEP_JOB_ID), scheduler.get_job(OUTBOX_JOB_ID)
    assert (sweep.trigger.interval.total_seconds(), sweep.coalesce, sweep.max_instances, sweep.misfire_grace_time) == (
        60.0, True, 1, 60,
    )  # fmt: skip
    assert (outbox.coalesce, outbox.max_instances) == (True, 1)
    assert (
        build_scheduler(settings=get_settings(), blocking=False, deliver=False).get_job(OUTBOX_JOB_ID) is None
    )


def test_the_standalone_scheduler_runs_the_sweeps_that_run_beside_a_sender(clinic_db_sched) -> None:
    """`scheduler run` may be a deployment's only sender: overdue hand-offs and kept callbacks are swept there too."""
    from datetime import timedelta

    from sqlalchemy import select

    from bot.channels.models import EarlyStatus
    from bot.conversations import flows
    from bot.conversations.models import Handoff, HandoffReason
    from bot.conversations.service import open_conversation
    from bot.db import utcnow
    from bot.patients.service import get_or_create_identity
    from bot.staff.models import StaffAlert

    assert build_scheduler(settings=get_settings(), blocking=False, deliver=False).get_job(SLA_JOB_ID) is None
    job = build_scheduler(settings=get_settings(), blocking=False, deliver=True).get_job(SLA_JOB_ID)
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel="sms", address="+16175550188")
        conversation = open_conversation(session=session, identity=identity)
        session.flush()
        handoff_id = flows.do_handoff(session=session, conversation_id=conversation.id, reason=HandoffReason.HUMAN).handoff_id
        session.get(Handoff, handoff_id).due_at = utcnow() - timedelta(minutes=5)
        session.add_all([EarlyStatus(provider_message_id="SM-old", status="delivered", received_at=utcnow() - timedelta(days=8)),
                         EarlyStatus(provider_message_id="SM-new", status="delivered")])  # fmt: skip
    job.func(*job.args)
    with session_scope() as session:
        alerts = session.execute(select(StaffAlert.kind, StaffAlert.handoff_id)).all()
        kept = session.scalars(select(EarlyStatus.provider_message_id)).all()
    assert ([tuple(row) for row in alerts], kept) == ([("sla_breach", handoff_id)], ["SM-new"])


def test_in_process_scheduler_sweeps_at_once_and_beats(clinic_db_sched) -> None:
    scheduler = start_in_process(get_settings())
    try:
        deadline = time.monotonic() + 30
        beat = None
        while beat is None and time.monotonic() < deadline:
            with session_scope() as session:
                beat = session.get(SchedulerHeartbeat, "scheduler")
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
    assert beat is not None and beat.holder.endswith(f":{__import__('os').getpid()}")


def test_one_leader_at_a_time(clinic_db_sched) -> None:
    first, second = Leadership(engine=get_engine()), Leadership(engine=get_engine())
    assert first.try_acquire() is True
    assert second.try_acquire() is False
    assert second.acquire(timeout=0.3) is False
    first.release()
    assert second.try_acquire() is True
    second.release()
