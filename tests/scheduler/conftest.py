"""Fixtures for the scheduler: the fake Twilio and the app wired to it (shared with the SMS channel tests)."""

from __future__ import annotations

import pytest

from tests.channels.conftest import make_app  # noqa: F401
from tests.channels.twilio.conftest import fake_twilio, sms_app  # noqa: F401


@pytest.fixture
def clinic_db_sched(demo_db: str) -> str:
    """The demo clinic's database, configured for this process."""
    return demo_db
