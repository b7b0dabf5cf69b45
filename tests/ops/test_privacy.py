"""Privacy operations on real data: export, erasure (keeping its audit), and the retention purge."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, update

from bot.channels import outbox
from bot.channels.models import OutboxMessage, OutboxStatus
from bot.cli import main
from bot.conversations.models import Conversation, Direction, Message
from bot.db import get_engine, session_scope, utcnow
from bot.patients.models import ChannelIdentity, Patient
from bot.patients.service import get_or_create_identity
from bot.privacy import TABLES
from bot.staff.models import AuditEvent, StaffNote, StaffUser
from tests.channels.twilio.conftest import JIM, SmsApp, twilio_env
from tests.ops.conftest import count

JIM_NAME = "James Wilson"
TEXTS = ("I want to speak to a person about my hedgehog bill", "are my lab results ready")
NOTE = "Jim prefers calls after 3pm re: hedgehog"


@pytest.fixture
def jim_app(make_app, fake_twilio) -> SmsApp:  # type: ignore[no-untyped-def]
    """Jim has texted twice over SMS, been answered, and staff left a note on his conversation."""
    app = SmsApp(harness=make_app(**twilio_env(fake_twilio)), fake=fake_twilio)
    for text in TEXTS:
        assert app.text_in(text).status_code == 200
    app.settle()
    with session_scope() as session:
        conversation = session.scalars(select(Conversation)).first()
        staff_id = session.scalars(select(StaffUser.id)).first()
        session.add(
            StaffNote(
                conversation_id=conversation.id,
                patient_id=conversation.patient_id,
                author_id=staff_id,
                body=NOTE,
            )
        )
    return app


def export(capsys: pytest.CaptureFixture[str], *args: str) -> dict:  # type: ignore[type-arg]
    assert main(["patient", "export", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_holds_everything_about_the_patient_and_is_audited(
    jim_app: SmsApp, capsys, tmp_path: Path
) -> None:
    out = tmp_path / "jim.json"
    assert main(["patient", "export", "--phone", "(617) 555-0142", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert (data["patient"]["name"], data["patient"]["phone"], data["patient"]["date_of_birth"]) == (
        JIM_NAME, JIM, "1957-11-02",
    )  # fmt: skip
    assert [(i["channel"], i["address"]) for i in data["identities"]] == [("sms", JIM)]
    bodies = [m["body"] for c in data["conversations"] for m in c["messages"] if m["direction"] == "in"]
    assert bodies == list(TEXTS)
    assert all(m["body"] for c in data["conversations"] for m in c["messages"])
    assert len(data["outbox"]) >= 1 and all(row["body"] for row in data["outbox"])
    assert [n["body"] for n in data["notes"]] == [NOTE]
    assert len(data["lab_orders"]) == 2 and all(order["test_name"] for order in data["lab_orders"])
    assert len(data["handoffs"]) == 1 and len(data["promises"]) >= 1
    assert set(data) >= {"requests", "complaints", "incidents", "promise_updates", "audit"}
    with session_scope() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "patient.export")).one()
        patient_id = session.scalars(select(Patient.id).where(Patient.phone == JIM)).one()
    assert (event.actor_kind, event.patient_id, event.subject_id) == ("cli", patient_id, str(patient_id))
    assert event.details["notes"] == 1 and event.details["identities"] == 1
    assert export(capsys, "--id", str(patient_id))["patient"]["name"] == JIM_NAME


def test_export_refuses_what_it_cannot_find(demo_db: str, capsys, tmp_path: Path) -> None:
    for args, message in [
        ([], "patient export: give exactly one of --phone or --id"),
        (["--phone", JIM, "--id", "1"], "patient export: give exactly one of --phone or --id"),
        (["--phone", "+16175550100"], "patient export: no patient has this phone number"),
        (["--phone", "not a phone"], "patient export: --phone: not a phone number: "),
        (["--id", "999"], "patient export: no patient with id 999"),
    ]:
        assert main(["patient", "export", *args]) == 2
        assert capsys.readouterr().err.startswith(f"clinicbot: error: {message}")
    existing = tmp_path / "taken.json"
    existing.write_text("keep", encoding="utf-8")
    assert main(["patient", "export", "--phone", JIM, "--out", str(existing)]) == 2
    assert existing.read_text(encoding="utf-8") == "keep"
    assert count(AuditEvent, AuditEvent.action == "patient.export") == 1  # the refused write was still a read


def test_erase_needs_yes_then_leaves_nothing_personal_and_keeps_the_audit(jim_app: SmsApp, capsys) -> None:
    with session_scope() as session:
        patient_id = session.scalars(select(Patient.id).where(Patient.phone == JIM)).one()
    # Jim's Telegram chat, with a text sent when the provider id still carried the chat id.
    with session_scope() as session:
        telegram = get_or_create_identity(session=session, channel="telegram", address="987654321")
        telegram.patient_id = patient_id
        session.flush()
        session.add(OutboxMessage(key="old-telegram-text", channel="telegram", identity_id=telegram.id, body="Hi Jim",
                                  status="sent", provider_message_id="987654321:42"))  # fmt: skip
    before = export(capsys, "--id", str(patient_id))
    messages_before = count(Message)

    assert main(["patient", "erase", "--phone", JIM]) == 2
    assert "add --yes to erase" in capsys.readouterr().err
    assert count(AuditEvent, AuditEvent.action == "patient.erase") == 0

    assert main(["patient", "erase", "--phone", JIM, "--yes"]) == 0
    assert capsys.readouterr().out.startswith(f"patient {patient_id} erased: 2 identities, 1 conversations, ")

    after = export(capsys, "--id", str(patient_id))
    text = json.dumps(after)
    personal = [JIM_NAME, "James", JIM, "6175550142", "1957-11-02", "RFC-1002", "hedgehog", NOTE, "987654321"]
    personal += [order["test_name"] for order in before["lab_orders"]]
    personal += [row["body"] for row in before["outbox"]]
    assert [value for value in personal if value in text] == []
    assert after["patient"]["name"] == "erased"
    assert [i["address"] for i in after["identities"]] == [f"erased-{i['id']}" for i in before["identities"]]
    # Metadata stays: the same rows, with times, intents and routes.
    assert count(Message) == messages_before
    assert [m["intent"] for c in after["conversations"] for m in c["messages"]] == [
        m["intent"] for c in before["conversations"] for m in c["messages"]
    ]
    assert [row["status"] for row in after["outbox"]] == [row["status"] for row in before["outbox"]]
    actions = [e["action"] for e in after["audit"]]
    assert actions == ["patient.export", "patient.erase"]  # this export is audited after it is read
    with session_scope() as session:
        erase = session.scalars(select(AuditEvent).where(AuditEvent.action == "patient.erase")).one()
    assert (erase.actor_kind, erase.patient_id, erase.details["notes"], erase.details["identities"]) == (
        "cli", patient_id, 1, 2,
    )  # fmt: skip

    # The number is now a stranger's: a new text opens a new, unlinked identity.
    assert jim_app.text_in("hello again").status_code == 200
    with session_scope() as session:
        identity = session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == JIM)).one()
    assert identity.patient_id is None


def test_erase_cancels_texts_not_yet_sent(jim_app: SmsApp, capsys) -> None:
    with session_scope() as session:
        patient_id = session.scalars(select(Patient.id).where(Patient.phone == JIM)).one()
        identity = session.scalars(select(ChannelIdentity).where(ChannelIdentity.address == JIM)).one()
        outbox.enqueue(
            session=session, key="staff:test:1", identity=identity, body="Hi Jim, about the hedgehog"
        )
    assert count(OutboxMessage, OutboxMessage.status == OutboxStatus.PENDING) == 1
    assert main(["patient", "erase", "--id", str(patient_id), "--yes"]) == 0
    sent = len(jim_app.fake.messages)
    jim_app.settle()
    assert len(jim_app.fake.messages) == sent
    assert count(OutboxMessage, OutboxMessage.status == OutboxStatus.PENDING) == 0
    assert count(OutboxMessage, OutboxMessage.error_code == "erased") == 1


def test_retention_purges_old_bodies_only_and_is_audited(jim_app: SmsApp, capsys, monkeypatch) -> None:
    old = utcnow() - timedelta(days=400)
    with session_scope() as session:
        first_conversation = session.scalars(select(Message.conversation_id)).first()
        session.execute(update(Message).values(created_at=old))
        session.execute(update(OutboxMessage).values(created_at=old))
        stale = count(Message)
        stale_outbox = count(OutboxMessage)
    # A recent message, and an old one still waiting to be processed: both keep their bodies.
    assert jim_app.text_in("where are you located").status_code == 200
    assert jim_app.text_in("unprocessed old one").status_code == 200
    with session_scope() as session:
        waiting = session.scalars(select(Message).order_by(Message.id.desc())).first()
        waiting.created_at = old
    jim_app.harness.workers.processor.process_one()

    monkeypatch.setenv("CLINICBOT_RETENTION_DAYS", "365")
    from tests.conftest import reset_caches

    reset_caches()
    assert main(["retention", "purge"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("purged bodies older than 365 days (before ")
    assert out.rstrip().endswith(f": {stale} messages, {stale_outbox} outbox texts")
    with session_scope() as session:
        rows = session.scalars(select(Message).order_by(Message.id)).all()
        old_rows = [m for m in rows if m.created_at < utcnow() - timedelta(days=365)]
        recent = [m for m in rows if m.created_at >= utcnow() - timedelta(days=365)]
        assert [m.body for m in old_rows] == [None] * (len(old_rows) - 1) + ["unprocessed old one"]
        assert recent[0].body == "where are you located" and all(m.body for m in recent)
        assert [m.direction for m in recent[1:]] == [Direction.OUT] * (len(recent) - 1)
        assert session.scalars(select(Message.conversation_id)).first() == first_conversation
        assert count(OutboxMessage, OutboxMessage.body.is_(None)) == stale_outbox
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "retention.purge")).one()
    assert (event.actor_kind, event.details["days"], event.details["messages"], event.details["outbox"]) == (
        "cli", 365, stale, stale_outbox,
    )  # fmt: skip
    assert main(["retention", "purge", "--days", "0"]) == 2
    assert "argument --days: must be 1 to 36500, not 0" in capsys.readouterr().err


def test_every_table_is_placed_in_the_privacy_map(database_url: str) -> None:
    tables = set(inspect(get_engine()).get_table_names()) - {"alembic_version"}
    assert tables == set(TABLES)


def test_retention_and_erasure_clear_attachment_references_with_the_bodies(jim_app: SmsApp, capsys, monkeypatch) -> None:
    old_picture = jim_app.fake.add_media(b"old", "image/jpeg")
    assert jim_app.text_in("my rash last year", extra=(("NumMedia", "1"), ("MediaUrl0", old_picture))).status_code == 200
    jim_app.settle()
    with session_scope() as session:
        session.execute(update(Message).values(created_at=utcnow() - timedelta(days=400)))
    monkeypatch.setenv("CLINICBOT_RETENTION_DAYS", "365")
    from tests.conftest import reset_caches

    reset_caches()
    assert main(["retention", "purge"]) == 0
    with session_scope() as session:
        assert session.scalars(select(Message.media).where(Message.media.is_not(None))).all() == []
    new_picture = jim_app.fake.add_media(b"new", "image/jpeg")
    assert jim_app.text_in("and today", extra=(("NumMedia", "1"), ("MediaUrl0", new_picture))).status_code == 200
    jim_app.settle()
    with session_scope() as session:
        assert session.scalars(select(Message.media).where(Message.media.is_not(None))).all() == [[new_picture]]
    assert main(["patient", "erase", "--phone", JIM, "--yes"]) == 0
    with session_scope() as session:
        assert session.scalars(select(Message.media).where(Message.media.is_not(None))).all() == []
