"""A helper for tests of reads that must not queue behind SQLite's single writer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import update

from bot.channels.models import OutboxMessage
from bot.db import session_scope

T = TypeVar("T")


def run_beside_open_write(read: Callable[[], T], *, wait: float = 5.0) -> tuple[bool, list[T]]:
    """Run `read` while another thread holds a write transaction open; return whether it finished meanwhile, and its result."""
    holding, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with session_scope() as session:
            session.execute(update(OutboxMessage).where(OutboxMessage.id < 0).values(attempts=0))
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=long_write, daemon=True)
    writer.start()
    assert holding.wait(10)
    results: list[T] = []
    reader = threading.Thread(target=lambda: results.append(read()), daemon=True)
    reader.start()
    reader.join(wait)
    finished_while_writing = not reader.is_alive()
    release.set()
    writer.join(10)
    reader.join(10)
    return finished_while_writing, results
