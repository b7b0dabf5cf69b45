"""`clinicbot scheduler tick`: errors, a late hand-off in its conversation, two ticking processes at once."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

import time_machine
from sqlalchemy import select

from bot.channels.models import OutboxMessage
from bot.cli import main
from bot.config import REPO_ROOT
from bot.conversations.flows import do_handoff
from bot.conversations.models import HandoffReason
from bot.conversations.service import open_conversation
from bot.db import session_scope
from bot.patients.models import Channel
from bot.patients.service import get_or_create_identity
from tests.channels.twilio.conftest import twilio_env
from tests.promises.factories import clear_demo_orders, local, make_lab_promise


def test_a_bad_time_is_a_usage_error(clinic_db_sched, capsys) -> None:
    assert main(["scheduler", "tick", "--at", "next tuesday"]) == 2
    assert capsys.readouterr().err == (
        "clinicbot: error: clinicbot scheduler tick: argument --at: 'next tuesday' is not an ISO 8601 time "
        "such as 2026-11-25T16:30:00\n"
    )


def test_a_late_hand_off_tied_to_its_conversation_gets_its_update_in_the_conversations_language(
    clinic_db_sched, capsys
) -> None:
    tuesday = date(2026, 11, 17)
    with session_scope() as session:
        clear_demo_orders(session)
        visitor = get_or_create_identity(session=session, channel=Channel.WEBCHAT, address="visitor-1")
        conversation = open_conversation(session=session, identity=visitor)
        conversation.language = "es"
        # Asked for a person at 10:00: the front desk's hour of working time was due by 11:00.
        with time_machine.travel(local(tuesday, 10), tick=False):
            do_handoff(session=session, conversation_id=conversation.id, reason=HandoffReason.HUMAN)
        conversation_id, visitor_id = conversation.id, visitor.id
    assert main(["scheduler", "tick", "--at", "2026-11-17T16:30:00"]) == 0
    assert capsys.readouterr().out.startswith("tick: 1 updates, 0 on the call list")
    with session_scope() as session:
        [(identity_id, text_conversation, body)] = session.execute(
            select(OutboxMessage.identity_id, OutboxMessage.conversation_id, OutboxMessage.body)
        ).all()
    assert (identity_id, text_conversation) == (visitor_id, conversation_id)
    assert body == (
        "Hola. Le escribe Riverside Family Clinic. Nuestro equipo aún no ha respondido a su mensaje; "
        "disculpe la espera. Le daremos otra actualización mañana antes de las 16:00."
    )


def test_two_tick_processes_at_once_send_each_update_once(sms_app, capsys) -> None:
    with session_scope() as session:
        clear_demo_orders(session)
        made = [make_lab_promise(session, due_at=local(date(2026, 11, 17), 12)) for _ in range(30)]
    env = {**os.environ, **twilio_env(sms_app.fake), "CLINICBOT_OUTBOX_PACING": "false"}
    command = [sys.executable, "-m", "bot.cli", "scheduler", "tick", "--at", "2026-11-17T16:30:00"]
    processes = [
        subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    counts = sorted(out.split("tick: ")[1].split(" updates")[0] for out, _ in outputs)
    assert counts == ["0", "30"]
    assert sorted(len(sms_app.fake.messages_to(m.phone)) for m in made) == [1] * 30
