"""The same actions served over HTTP by `python -m rasa_sdk`, called the way a Rasa server calls them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from bot.config import REPO_ROOT
from bot.conversations.service import open_conversation
from bot.db import session_scope
from bot.patients.models import Channel
from bot.patients.service import get_or_create_identity
from tests.e2e.server import free_port


@pytest.fixture
def action_server(demo_db: str, model_dir) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    env = {**os.environ, "CLINICBOT_DATABASE_URL": demo_db, "CLINICBOT_DATA_DIR": str(model_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "rasa_sdk", "--actions", "actions", "--port", str(port), "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # Sanic forks worker processes: give the server its own group so teardown ends them all.
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"action server did not start: {process.stderr.read().decode()[-500:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # Sanic's graceful shutdown waits on keep-alive connections; nothing is left to save.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_action_server_answers_a_rasa_webhook_call(action_server: str) -> None:
    with session_scope() as session:
        identity = get_or_create_identity(session=session, channel=Channel.SMS, address="+16175550142")
        conversation = open_conversation(session=session, identity=identity)
        conversation_id = conversation.id
    domain = yaml.safe_load((REPO_ROOT / "dialogues" / "en" / "domain.yml").read_text(encoding="utf-8"))
    call = {
        "next_action": "action_lab_status",
        "sender_id": str(conversation_id),
        "tracker": {
            "sender_id": str(conversation_id),
            "slots": {"language": "en"},
            "latest_message": {"text": "any news on my labs", "intent": {"name": "lab_results", "confidence": 0.97}},
            "events": [{"event": "user", "text": "any news on my labs", "timestamp": 1764000000.0}],
            "paused": False,
            "followup_action": None,
            "active_loop": {},
            "latest_action_name": "action_listen",
        },
        "domain": domain,
        "version": "3.12.0",
    }
    request = urllib.request.Request(
        f"{action_server}/webhook",
        data=json.dumps(call).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        body = json.loads(response.read())
    assert [r["response"] for r in body["responses"]] == ["utter_lab_status_late", "utter_lab_status_resulted"]
    assert body["events"] == []
    assert all(isinstance(r["ordered_day"], str) for r in body["responses"])


def test_action_server_lists_every_action(action_server: str) -> None:
    with urllib.request.urlopen(f"{action_server}/actions", timeout=5) as response:  # noqa: S310
        names = {a["name"] for a in json.loads(response.read())}
    expected = {"action_handoff", "action_emergency", "action_lab_status", "action_refill_request",
                "action_appointment_request", "action_log_complaint", "action_clarify", "validate_refill_form"}  # fmt: skip
    assert expected <= names


