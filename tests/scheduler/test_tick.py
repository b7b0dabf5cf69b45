"""`clinicbot scheduler tick`: its errors, and two ticking processes at once against one database."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date

from bot.cli import main
from bot.config import REPO_ROOT
from bot.db import session_scope
from tests.channels.twilio.conftest import twilio_env
from tests.promises.factories import clear_demo_orders, local, make_lab_promise


def test_a_bad_time_is_a_usage_error(clinic_db_sched, capsys) -> None:
    assert main(["scheduler", "tick", "--at", "next tuesday"]) == 2
    assert capsys.readouterr().err == (
        "clinicbot: error: clinicbot scheduler tick: argument --at: 'next tuesday' is not an ISO 8601 time "
        "such as 2026-11-25T16:30:00\n"
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
