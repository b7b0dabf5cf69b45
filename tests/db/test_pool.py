"""PostgreSQL connections are pinged after sitting idle in the pool, not on every checkout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

import bot.db
from bot.db import make_engine

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_migrated: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    engine = make_engine(postgres_migrated)
    pings: list[object] = []
    real_ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    engine.info_pings = pings  # type: ignore[attr-defined]
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_connection_used_again_at_once_is_not_pinged(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend_pid(engine)
    assert [_backend_pid(engine) for _ in range(5)] == [first] * 5
    assert engine.info_pings == []  # type: ignore[attr-defined]

    monkeypatch.setattr(bot.db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every connection now counts as idle
    assert _backend_pid(engine) == first
    assert len(engine.info_pings) == 1  # type: ignore[attr-defined]


def test_a_connection_lost_while_idle_is_replaced_before_use(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend_pid(engine)
    with make_engine(str(engine.url.render_as_string(hide_password=False))).begin() as admin:
        assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one() is True
    monkeypatch.setattr(bot.db, "PING_AFTER_IDLE_SECONDS", 0.0)

    # The ping finds the connection gone; the checkout gets a new one, and the statement runs.
    second = _backend_pid(engine)

    assert second != first
    assert len(engine.info_pings) == 1  # type: ignore[attr-defined]
    monkeypatch.setattr(bot.db, "PING_AFTER_IDLE_SECONDS", 60.0)
    assert _backend_pid(engine) == second  # used again at once: no second ping
    assert len(engine.info_pings) == 1  # type: ignore[attr-defined]
