"""Fixtures for the promise sweeps: the demo clinic without its demo lab orders."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
import time_machine

from bot.db import session_scope
from bot.promises.sweeps import SweepCounts
from tests.promises.factories import clear_demo_orders


@pytest.fixture
def clinic_db(demo_db: str) -> str:
    """The demo clinic (America/New_York, Mon-Fri, US holidays, updates at 16:00) with no lab orders."""
    with session_scope() as session:
        clear_demo_orders(session)
    return demo_db


@pytest.fixture
def sweep() -> Callable[[datetime], SweepCounts]:
    """Run one scheduler pass with the wall clock travelled to an instant (the job reads the real clock)."""
    from scheduler.jobs import sweep_pass

    def run(at: datetime) -> SweepCounts:
        with time_machine.travel(at, tick=False):
            counts = sweep_pass()
        assert counts is not None
        return counts

    return run
