"""The web chat's rate limits: moving windows, counted in the process or in a Redis app replicas share."""

from __future__ import annotations

import logging

import pytest
import time_machine

from bot.config import Settings
from bot.web.ratelimit import RateLimiter
from bot.web.routers.webchat import COOKIE_NAME
from tests.channels.webchat.conftest import Visitor
from tests.e2e.server import free_port


def test_the_window_moves_and_refused_hits_do_not_count() -> None:
    limiter = RateLimiter(per_minute=2)
    with time_machine.travel(1_800_000_000, tick=False) as clock:
        assert [limiter.hit("messages", "a"), limiter.hit("messages", "a")] == [None, None]
        assert limiter.hit("messages", "a") == 60
        assert limiter.hit("messages", "b") is None, "another key has its own window"
        assert limiter.hit("verify", "a") is None, "another scope has its own window"
        clock.shift(30)
        assert limiter.hit("messages", "a") == 30  # refused again: still two hits in the last minute
        clock.shift(30.5)
        # The first two hits left the window; the refused ones never entered it.
        assert limiter.hit("messages", "a") is None
        assert limiter.hit("messages", "a") is None
        assert limiter.hit("messages", "a") == 60


def test_a_scope_may_have_a_limit_of_its_own() -> None:
    limiter = RateLimiter(per_minute=1)
    with time_machine.travel(1_800_000_000, tick=False):
        assert [limiter.hit("messages", "a"), limiter.hit("messages", "a")] == [None, 60]
        hits = [limiter.hit("messages:emergency", "a", per_minute=3) for _ in range(4)]
        assert hits == [None, None, None, 60]


def test_replicas_sharing_a_redis_share_each_visitor_s_limit(make_app, redis_url: str) -> None:
    first = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="3", CLINICBOT_RATE_LIMIT_STORAGE_URL=redis_url)
    second = make_app()  # the same settings: another replica of the same deployment
    assert first.client.get("/chat").status_code == 200
    cookie = first.client.cookies[COOKIE_NAME]
    second.client.cookies.set(COOKIE_NAME, cookie, path="/chat")
    replicas = [Visitor(first), Visitor(second)]
    # Alternating replicas, the visitor gets three messages a minute in all, not three from each.
    statuses = [replicas[n % 2].say("hi").status_code for n in range(4)]
    assert statuses == [202, 202, 202, 429]
    refused = replicas[0].say("hi")
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    first.settle()


def test_replicas_counting_in_memory_each_count_their_own(make_app) -> None:
    # The contrast that makes the test above mean something: without a shared store, each replica
    # counts only what it saw.
    first = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="3", CLINICBOT_RATE_LIMIT_STORAGE_URL="memory://")
    second = make_app()
    assert first.client.get("/chat").status_code == 200
    second.client.cookies.set(COOKIE_NAME, first.client.cookies[COOKIE_NAME], path="/chat")
    replicas = [Visitor(first), Visitor(second)]
    assert [replicas[n % 2].say("hi").status_code for n in range(4)] == [202, 202, 202, 202]
    first.settle()


def test_an_unreachable_redis_lets_visitors_through_and_warns_once(make_app, caplog) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    harness = make_app(CLINICBOT_WEBCHAT_RATE_PER_MINUTE="1", CLINICBOT_RATE_LIMIT_STORAGE_URL=url)
    with caplog.at_level(logging.WARNING, logger="bot.web.ratelimit"):
        assert harness.client.get("/chat").status_code == 200
        visitor = Visitor(harness)
        assert [visitor.say("hi").status_code for _ in range(3)] == [202, 202, 202]
    warnings = [record for record in caplog.records if record.name == "bot.web.ratelimit"]
    assert len(warnings) == 1, "one warning a minute, not one per request"
    assert "unreachable (ConnectionError)" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text and str(url) not in caplog.text
    harness.settle()


def test_the_storage_setting_names_the_problem_and_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import SettingsError, get_settings

    monkeypatch.setenv("CLINICBOT_RATE_LIMIT_STORAGE_URL", "memcached://:s3cret@cache:11211")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as raised:
        get_settings()
    get_settings.cache_clear()
    assert "CLINICBOT_RATE_LIMIT_STORAGE_URL" in str(raised.value) and "redis://" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    settings = Settings(_env_file=None, rate_limit_storage_url="redis://:s3cret@cache:6379/0")  # type: ignore[call-arg]
    assert "s3cret" not in repr(settings)
