"""The real server under crashes and duplicate storms: nothing lost, nothing doubled."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from bot.conversations.models import Message
from bot.db import session_scope
from tests.channels.twilio.conftest import sign
from tests.e2e.server import ServerProcess, free_port
from tests.fakes.fake_twilio import FakeTwilio, Fault

CLINIC_NUMBER = "+16175550199"
_sids = itertools.count(1)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def server(demo_db: str, model_dir: Path, fake: FakeTwilio) -> Iterator[ServerProcess]:
    port = free_port()
    env = {
        "CLINICBOT_DATABASE_URL": demo_db,
        "CLINICBOT_DATA_DIR": str(model_dir),
        "CLINICBOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": CLINIC_NUMBER,
        "TWILIO_API_BASE_URL": fake.base_url,
        "CLINICBOT_OUTBOX_PACING": "false",
        # Short windows so a crash mid-send is reconciled within the test.
        "CLINICBOT_OUTBOX_SEND_TIMEOUT": "1",
        "CLINICBOT_OUTBOX_STALE_SECONDS": "2",
    }
    process = ServerProcess(env=env, port=port)
    process.start()
    yield process
    process.stop()


def post_sms(server: ServerProcess, token: str, *, sender: str, body: str, sid: str) -> httpx.Response:
    url = f"{server.url}/webhooks/twilio/sms"
    pairs = [("MessageSid", sid), ("AccountSid", "AC1"), ("From", sender), ("To", CLINIC_NUMBER), ("Body", body),
             ("NumMedia", "0")]  # fmt: skip
    headers = {"X-Twilio-Signature": sign(token=token, url=url, pairs=pairs),
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    return httpx.post(url, content=urlencode(pairs), headers=headers, timeout=10)


def wait_for(predicate, *, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def settle_count(fake: FakeTwilio, number: str, *, quiet: float = 3.0) -> int:
    """Return how many texts reached the number once nothing more arrives for a while."""
    count, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        now = len(fake.messages_to(number))
        if now != count:
            count, since = now, time.monotonic()
        time.sleep(0.1)
    return count


def test_kill_9_mid_send_then_restart_sends_the_reply_exactly_once(server: ServerProcess, fake: FakeTwilio) -> None:
    patient = "+16175550131"
    # Twilio accepts the text, then the answer never comes back before the crash.
    fake.fail_next(Fault.slow(seconds=20, record=True))
    assert post_sms(server, fake.auth_token, sender=patient, body="what are your hours", sid="SMcrash1").status_code == 200
    assert wait_for(lambda: len(fake.messages_to(patient)) == 1)
    server.kill9()
    server.start()
    # The restarted server finds the text left mid-send, asks Twilio, and does not send it again.
    assert settle_count(fake, patient) == 1


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_kill_9_right_after_the_ack_loses_and_doubles_nothing(
    server: ServerProcess, fake: FakeTwilio, delay: float
) -> None:
    patient = f"+1617555014{int(delay * 10)}"
    sid = f"SMack{next(_sids):030d}"
    assert post_sms(server, fake.auth_token, sender=patient, body="where are you located", sid=sid).status_code == 200
    time.sleep(delay)
    server.kill9()
    # Twilio retries the webhook when it saw no answer; the retry must not double anything either.
    server.start()
    assert post_sms(server, fake.auth_token, sender=patient, body="where are you located", sid=sid).status_code == 200
    assert wait_for(lambda: len(fake.messages_to(patient)) >= 1)
    assert settle_count(fake, patient) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.provider_message_id == sid)) == 1


def test_fifty_concurrent_duplicate_webhooks_store_one_message_and_send_one_reply(
    server: ServerProcess, fake: FakeTwilio
) -> None:
    patient = "+16175550155"
    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(
            lambda _: post_sms(server, fake.auth_token, sender=patient, body="hi", sid="SMstorm"), range(50)))  # fmt: skip
    assert {r.status_code for r in responses} == {200}
    assert wait_for(lambda: len(fake.messages_to(patient)) >= 1)
    assert settle_count(fake, patient) == 1
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.provider_message_id == "SMstorm")) == 1


def test_a_worker_process_that_dies_is_restarted_and_the_patient_still_gets_the_reply(
    server: ServerProcess, fake: FakeTwilio
) -> None:
    import os
    import re
    import signal

    # Routing and sending live in the worker processes: if one is killed (the OOM killer, a native
    # crash) the web process would go on acknowledging texts that nobody answers.
    found = re.search(r"pids ([\d, ]+)\)", server.log.read_text())
    assert found, server.log.read_text()[-1500:]
    pids = [int(pid) for pid in found.group(1).split(", ")]
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    patient = "+16175550161"
    answer = post_sms(server, fake.auth_token, sender=patient, body="what are your hours", sid="SMworker1")
    assert answer.status_code == 200, (answer.text, server.log.read_text()[-4000:])
    assert wait_for(lambda: len(fake.messages_to(patient)) == 1), server.log.read_text()[-2000:]
    assert settle_count(fake, patient) == 1
    assert server.log.read_text().count("restarted as pid") == 2


def outbox_counters(server: ServerProcess) -> dict[str, float]:
    """Return the outbox counters of /metrics by name, for SMS."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name.startswith("clinicbot_outbox_") and sample.name.endswith("_total") and sample.labels == {"channel": "sms"}:
                found[sample.name] = sample.value
    return found


def test_the_worker_processes_sends_are_counted_on_the_web_processs_metrics(
    server: ServerProcess, fake: FakeTwilio
) -> None:
    import os
    import re
    import signal

    # The worker that sends is not scraped; the web process reports what it counted, restarts included.
    patient = "+16175550163"
    fake.fail_next(Fault.server_error(status=503))  # one attempt goes round again
    assert post_sms(server, fake.auth_token, sender=patient, body="what are your hours", sid="SMmetrics1").status_code == 200
    assert wait_for(lambda: len(fake.messages_to(patient)) == 1)
    assert wait_for(lambda: outbox_counters(server).get("clinicbot_outbox_sent_total") == 1.0), outbox_counters(server)
    assert outbox_counters(server).get("clinicbot_outbox_retried_total") == 1.0
    sender = int(re.search(r"pids (\d+)", server.log.read_text()).group(1))  # type: ignore[union-attr]
    os.kill(sender, signal.SIGKILL)
    assert wait_for(lambda: "restarted as pid" in server.log.read_text())
    assert post_sms(server, fake.auth_token, sender=patient, body="where are you", sid="SMmetrics2").status_code == 200
    assert wait_for(lambda: len(fake.messages_to(patient)) == 2)
    assert wait_for(lambda: outbox_counters(server).get("clinicbot_outbox_sent_total") == 2.0), outbox_counters(server)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert text.count("# TYPE clinicbot_outbox_sent_total counter") == 1
