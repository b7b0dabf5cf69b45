"""Leadership: one process at a time does a job (the scheduler's sweeps, the outbox sender).

On PostgreSQL the leader holds a session-level advisory lock on a dedicated connection, so the lock
goes away with the process (a crash frees it at once). On SQLite, whose database is one local file,
an exclusive flock on a file beside it plays the same part. Leadership only saves wasted work: the
UNIQUE keys on updates and outbox texts keep every effect exactly-once even without it; for the
sender it also keeps provider rate limits (per sending number, per Telegram chat) across app replicas.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text


def lock_key(name: str) -> int:
    """Return a stable signed 64-bit advisory-lock key for a name."""
    digest = hashlib.sha256(f"clinicbot:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def holder_name() -> str:
    """Return this process's name for heartbeats: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


class Leadership:
    """Try to become the one process doing a job; release when done."""

    def __init__(self, *, engine: Engine, name: str = "scheduler") -> None:
        self.engine = engine
        self.name = name
        self._connection: Connection | None = None
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        """Return whether this process holds the leadership now."""
        return self._connection is not None or self._file is not None

    def try_acquire(self) -> bool:
        """Take the leadership if no other process holds it; never waits."""
        if self.held:
            return True
        if self.engine.dialect.name == "postgresql":
            return self._try_postgres()
        return self._try_file()

    def acquire(self, *, timeout: float, poll: float = 0.2) -> bool:
        """Wait up to timeout seconds for the leadership."""
        deadline = time.monotonic() + timeout
        while True:
            if self.try_acquire():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def alive(self) -> bool:
        """Return whether the leadership is still held; give it up when it was lost.

        A PostgreSQL restart or a dropped connection ends the session and with it the advisory lock,
        though this process still holds a connection object: a leader that goes on without asking
        would share the job with whoever took the lock since.
        """
        if self._connection is None:
            return self._file is not None
        try:
            self._connection.execute(text("SELECT 1"))
            self._connection.commit()
        except Exception:
            self.release()
            return False
        return True

    def release(self) -> None:
        """Give the leadership up."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(self.name)})
                connection.commit()
            connection.close()
        if self._file is not None:
            handle, self._file = self._file, None
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _try_postgres(self) -> bool:
        # A dedicated connection: a pooled one would carry the lock to whoever borrows it next.
        connection = self.engine.connect()
        try:
            got = bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(self.name)}
                ).scalar()
            )
            connection.commit()
        except Exception:
            connection.close()
            raise
        if not got:
            connection.close()
            return False
        self._connection = connection
        return True

    def _lock_path(self) -> Path | None:
        database = self.engine.url.database
        if not database or database == ":memory:":
            return None
        return Path(f"{database}.{self.name}.lock")

    def _try_file(self) -> bool:
        path = self._lock_path()
        if path is None:
            # An in-memory database lives in one process: that process leads.
            self._file = open(os.devnull, "rb")  # noqa: SIM115 - held until release
            return True
        handle = open(path, "ab")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True
