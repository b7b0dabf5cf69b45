"""Fixtures for channel tests: the real app on the demo clinic, with workers driven by the test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from bot.channels.workers import Workers


@dataclass
class AppHarness:
    """The app under test and its workers, which the test runs step by step."""

    client: TestClient
    workers: Workers

    def settle(self) -> None:
        """Process every stored message and deliver everything due, as the background threads would."""
        for _ in range(10):
            processed = self.workers.processor.drain()
            sent = self.workers.sender.drain()
            if processed == 0 and sent == 0:
                return


@pytest.fixture
def make_app(demo_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator:  # type: ignore[type-arg]
    """Return a factory: set env vars (e.g. provider URLs and tokens), then build the app harness."""
    from tests.conftest import reset_caches

    clients: list[TestClient] = []

    def factory(**env: str) -> AppHarness:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("CLINICBOT_OUTBOX_PACING", "false")
        reset_caches()
        from bot.web.app import create_app

        client = TestClient(create_app(start_workers=False), base_url="http://testserver")
        client.__enter__()
        clients.append(client)
        return AppHarness(client=client, workers=client.app.state.workers)

    yield factory
    for client in clients:
        client.__exit__(None, None, None)
