"""/healthz, /readyz (database, migrations, scheduler heartbeat) on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.db import session_scope, utcnow
from bot.db.migrate import head_revision
from bot.promises.models import SchedulerHeartbeat
from bot.web.routers.health import check_readiness
from tests.ops.conftest import stamp


def beat(seconds_ago: float) -> None:
    with session_scope() as session:
        session.merge(
            SchedulerHeartbeat(
                name="scheduler", holder="test", beat_at=utcnow() - timedelta(seconds=seconds_ago)
            )
        )


def test_healthz_answers_ok_without_touching_anything(make_app) -> None:
    response = make_app().client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok")


def test_readyz_is_ready_without_a_scheduler_when_none_is_required(make_app) -> None:
    response = make_app(CLINICBOT_REQUIRE_SCHEDULER="false").client.get("/readyz")
    assert (response.status_code, response.json()) == (
        200,
        {"status": "ready", "checks": {"database": "ok", "migrations": "ok", "scheduler": "ok"}},
    )


def test_readyz_waits_for_the_first_scheduler_heartbeat(make_app) -> None:
    client = make_app().client
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["scheduler: no heartbeat yet; start `clinicbot scheduler run`"]
    beat(5)
    assert client.get("/readyz").status_code == 200


def test_readyz_refuses_a_stale_heartbeat_with_its_age(make_app) -> None:
    client = make_app().client
    beat(200)  # default sweep 60 s: the limit is max(3 x 60, 180) = 180 s
    response = client.get("/readyz")
    assert response.status_code == 503
    (reason,) = response.json()["reasons"]
    assert reason.startswith("scheduler: heartbeat 20") and reason.endswith("s old (limit 180 s)")
    assert response.json()["checks"]["database"] == "ok"


def test_heartbeat_limit_follows_a_longer_sweep(make_app) -> None:
    client = make_app(CLINICBOT_SCHEDULER_SWEEP_SECONDS="150").client
    beat(400)  # 3 x 150 = 450 s
    assert client.get("/readyz").status_code == 200
    beat(460)
    assert client.get("/readyz").json()["checks"]["scheduler"].endswith("(limit 450 s)")


def test_readyz_names_pending_migrations(make_app, database_url: str) -> None:
    client = make_app(CLINICBOT_REQUIRE_SCHEDULER="false").client
    from bot.db import get_engine

    head = head_revision(get_engine())
    stamp("0006")
    try:
        response = client.get("/readyz")
    finally:
        stamp("head")
    assert response.status_code == 503
    assert response.json()["reasons"] == [
        f"migrations: database at 0006, code at {head}; run `clinicbot init`"
    ]


def test_readiness_reports_an_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import get_settings
    from tests.conftest import reset_caches

    monkeypatch.setenv("CLINICBOT_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    reset_caches()
    try:
        readiness = check_readiness(settings=get_settings())
    finally:
        reset_caches()
    assert readiness.checks == {"database": "unreachable (OperationalError)"}
    assert not readiness.ready
