"""/metrics: database figures (the same in every process) and this process's edge counters."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update

from bot import metrics
from bot.channels.models import OutboxMessage, OutboxStatus
from bot.conversations.models import Handoff
from bot.db import session_scope, utcnow
from bot.promises.models import Promise, PromiseKind, PromiseUpdate, UpdateKind
from tests.channels.webchat.conftest import ORIGIN
from tests.db.writes import run_beside_open_write


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    """Return {(sample name, sorted labels): value} from /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def edge(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def say(client, text: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/chat/api/messages", json={"text": text, "client_message_id": uuid.uuid4().hex}, headers=ORIGIN
    )
    assert response.status_code == 202


def test_messages_routes_intents_and_outbox_backlog_come_from_the_database(make_app) -> None:
    harness = make_app()
    client = harness.client
    assert client.get("/chat").status_code == 200
    sent_before = edge("clinicbot_outbox_sent_total", channel="webchat")
    accepted_before = edge("clinicbot_inbound_accepted_total", channel="webchat")
    latency_before = edge("clinicbot_webhook_latency_seconds_count", endpoint="/chat/api/messages")

    say(client, "what are your hours")
    harness.workers.processor.drain()
    figures = scrape(client)
    assert figures[("clinicbot_messages_total", (("channel", "webchat"), ("direction", "in")))] == 1
    assert figures[("clinicbot_messages_total", (("channel", "webchat"), ("direction", "out")))] == 1
    assert figures[("clinicbot_routes_total", (("route", "answer"),))] == 1
    assert figures[("clinicbot_intents_total", (("intent", "hours"),))] == 1
    assert figures[("clinicbot_outbox_backlog", (("channel", "webchat"),))] == 1
    assert figures[("clinicbot_outbox_retrying", (("channel", "webchat"),))] == 0
    assert figures[("clinicbot_metrics_database_up", ())] == 1

    assert figures[("clinicbot_outbox_texts", (("channel", "webchat"), ("status", "pending")))] == 1
    harness.workers.sender.drain()
    figures = scrape(client)
    assert ("clinicbot_outbox_backlog", (("channel", "webchat"),)) not in figures
    # Counted from the database, so a text a worker process sent shows on every process's /metrics.
    assert figures[("clinicbot_outbox_texts", (("channel", "webchat"), ("status", "sent")))] == 1
    assert ("clinicbot_outbox_texts", (("channel", "webchat"), ("status", "pending"))) not in figures
    assert figures[("clinicbot_outbox_oldest_due_seconds", ())] == 0
    assert edge("clinicbot_outbox_sent_total", channel="webchat") == sent_before + 1
    assert edge("clinicbot_inbound_accepted_total", channel="webchat") == accepted_before + 1
    assert (
        edge("clinicbot_webhook_latency_seconds_count", endpoint="/chat/api/messages") == latency_before + 1
    )


def test_handoff_queue_depth_and_oldest_wait(make_app) -> None:
    harness = make_app()
    client = harness.client
    client.get("/chat")
    say(client, "I want to speak to a person")
    harness.settle()
    with session_scope() as session:
        session.execute(update(Handoff).values(created_at=utcnow() - timedelta(hours=2)))
    figures = scrape(client)
    assert figures[("clinicbot_handoff_queue_depth", (("reason", "human"),))] == 1
    assert 7200 <= figures[("clinicbot_handoff_oldest_waiting_seconds", ())] < 7200 + 600
    with session_scope() as session:
        session.execute(update(Handoff).values(claimed_at=utcnow()))
    figures = scrape(client)
    assert ("clinicbot_handoff_queue_depth", (("reason", "human"),)) not in figures
    assert figures[("clinicbot_handoff_oldest_waiting_seconds", ())] == 0


def test_late_promises_updates_and_outbox_failures(make_app) -> None:
    harness = make_app()
    client = harness.client
    client.get("/chat")
    say(client, "I want to speak to a person")
    harness.settle()
    with session_scope() as session:
        promise = session.scalars(select(Promise).where(Promise.kind == PromiseKind.HANDOFF_REPLY)).one()
        assert session.scalars(select(OutboxMessage)).all()
        promise.due_at = utcnow() - timedelta(minutes=5)
        session.add(
            PromiseUpdate(promise_id=promise.id, local_date=utcnow().date(), kind=UpdateKind.LATE_UPDATE)
        )
        session.execute(update(OutboxMessage).values(status=OutboxStatus.FAILED, error_code="test"))
        failed = len(session.scalars(select(OutboxMessage)).all())
    figures = scrape(client)
    assert figures[("clinicbot_promises_late", (("kind", "handoff_reply"),))] == 1
    assert figures[("clinicbot_promise_updates_total", (("kind", "late_update"),))] == 1
    assert figures[("clinicbot_outbox_failures_total", (("channel", "webchat"),))] == failed


def test_only_known_webhook_posts_are_timed(make_app) -> None:
    client = make_app().client
    before = scrape(client)
    client.get("/chat/api/messages")
    client.post("/webhooks/nothing-here", content=b"x")
    client.post("/webhooks/twilio/sms", content=b"x")  # SMS off here: 404, still timed
    after = scrape(client)
    key = ("clinicbot_webhook_latency_seconds_count", (("endpoint", "/webhooks/twilio/sms"),))
    assert after[key] == before.get(key, 0) + 1
    assert not any("nothing-here" in str(labels) for _, labels in after)
    chat = ("clinicbot_webhook_latency_seconds_count", (("endpoint", "/chat/api/messages"),))
    assert after.get(chat, 0) == before.get(chat, 0)


@pytest.mark.usefixtures("database_url")
def test_an_unreadable_database_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import reset_caches

    monkeypatch.setenv("CLINICBOT_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    reset_caches()
    families = list(metrics.DatabaseCollector().collect())
    assert [(family.name, family.samples[0].value) for family in families] == [
        ("clinicbot_metrics_database_up", 0.0)
    ]


def test_a_scrape_reads_beside_the_writer_and_never_waits_for_its_turn(demo_db: str) -> None:
    # A scrape counts whole tables. Queued for SQLite's writer it would hold every acknowledgement
    # behind it; it must read while a long write is in progress, on both backends.
    finished_while_writing, scraped = run_beside_open_write(metrics.render)
    assert finished_while_writing
    assert b"clinicbot_metrics_database_up 1.0" in scraped[0]
