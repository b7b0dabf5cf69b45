"""Liveness (/healthz), readiness (/readyz) and Prometheus metrics (/metrics)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import select, text

from bot import metrics
from bot.config import Settings
from bot.db import get_engine, read_scope, utcnow
from bot.db.migrate import current_revision, head_revision
from bot.promises.models import SchedulerHeartbeat
from bot.web.deps import SettingsDep

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

SCHEDULER_NAME = "scheduler"
# A heartbeat is fresh within three sweeps, and never less than this (one missed beat is not an outage).
MIN_HEARTBEAT_SECONDS = 180.0


@dataclass
class Readiness:
    """Each check's result; ready when every check says ok."""

    checks: dict[str, str] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        """Return the failed checks as 'name: why'."""
        return [f"{name}: {result}" for name, result in self.checks.items() if result != "ok"]

    @property
    def ready(self) -> bool:
        """Return whether every check passed."""
        return not self.reasons


def heartbeat_limit(settings: Settings) -> timedelta:
    """Return how old the scheduler's heartbeat may be: three sweeps, at least 180 s."""
    sweep = settings.scheduler_sweep_seconds
    return timedelta(seconds=max(MIN_HEARTBEAT_SECONDS, 3 * sweep))


def check_readiness(*, settings: Settings, now: datetime | None = None) -> Readiness:
    """Check the database, the migrations and (when required) the scheduler heartbeat."""
    now = now or utcnow()
    result = Readiness()
    engine = get_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        log.warning("readyz: database unreachable (%s)", type(error).__name__)
        result.checks["database"] = f"unreachable ({type(error).__name__})"
        return result
    result.checks["database"] = "ok"
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        result.checks["migrations"] = (
            f"database at {current or 'no revision'}, code at {head}; run `clinicbot init`"
        )
        return result
    result.checks["migrations"] = "ok"
    if not settings.require_scheduler:
        result.checks["scheduler"] = "ok"
        return result
    with read_scope() as session:
        beat = session.scalar(
            select(SchedulerHeartbeat.beat_at).where(SchedulerHeartbeat.name == SCHEDULER_NAME)
        )
    limit = heartbeat_limit(settings)
    if beat is None:
        result.checks["scheduler"] = "no heartbeat yet; start `clinicbot scheduler run`"
    elif now - beat > limit:
        age = int((now - beat).total_seconds())
        result.checks["scheduler"] = f"heartbeat {age} s old (limit {int(limit.total_seconds())} s)"
    else:
        result.checks["scheduler"] = "ok"
    return result


@router.get("/healthz", response_class=PlainTextResponse)
def healthz() -> str:
    """Answer ok while the process serves requests (liveness: no database involved)."""
    return "ok"


@router.get("/readyz")
def readyz(settings: SettingsDep) -> JSONResponse:
    """Answer 200 when this process can do its work, else 503 with the reasons."""
    readiness = check_readiness(settings=settings)
    if readiness.ready:
        return JSONResponse({"status": "ready", "checks": readiness.checks})
    return JSONResponse(
        {"status": "not ready", "reasons": readiness.reasons, "checks": readiness.checks}, status_code=503
    )


@router.get("/metrics")
def prometheus_metrics() -> Response:
    """Return the metrics in the Prometheus text format."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
