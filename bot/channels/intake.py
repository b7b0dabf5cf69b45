"""Group commit for the acknowledgement path: the webhooks that arrive together are stored together.

A provider waits for our answer, and it may come only after the message is durably stored. Storing
each webhook in its own transaction made every request pay for a commit and, on SQLite, for its own
turn at the single writer. Here one writer thread takes every store that is waiting, runs them in
one transaction, commits once, and only then answers each request: durability before
acknowledgement is unchanged, the commit and the writer's turn are shared.

A job that fails rolls the whole group back; the group is then run again one job per transaction,
so a bad job fails only its own request (which answers 500, and the provider retries) and never
takes another request's message with it. Jobs must therefore be database work only (storing, never
sending), which is what the intake paths are.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from bot.db import session_scope

log = logging.getLogger(__name__)

T = TypeVar("T")

# Enough to take a burst from every concurrent request in one turn; bounded so a group stays short.
MAX_GROUP = 64


@dataclass
class _Job:
    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def settle(self, *, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()
        if self.loop is not None and self.future is not None:
            self.loop.call_soon_threadsafe(_resolve, self.future, result, error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the request was cancelled: nothing to answer
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Intake:
    """One writer thread that stores waiting jobs in shared transactions (see the module docstring)."""

    def __init__(self, *, max_group: int = MAX_GROUP) -> None:
        self.max_group = max_group
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.groups = 0  # for tests and the benchmark: how many transactions stored how many jobs
        self.jobs = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="clinicbot-intake", daemon=True)
                self._thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Store every job already queued, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=timeout)
        # A job queued while the writer was leaving is still stored and answered, never left waiting.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._run_alone(job)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` inside a shared transaction; return once it is committed."""
        if self._thread is None:
            # Not started (stopping, or a bare test app): its own transaction, off the event loop.
            return await run_in_threadpool(self.run_blocking, fn, *args, **kwargs)
        loop = asyncio.get_running_loop()
        job = _Job(fn=lambda: fn(*args, **kwargs), loop=loop, future=loop.create_future())
        self._queue.put(job)
        assert job.future is not None
        return await job.future

    def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """The same from a plain thread (Telegram long polling)."""
        job = _Job(fn=lambda: fn(*args, **kwargs), loop=None)
        if self._thread is None:
            self._run_alone(job)
        else:
            self._queue.put(job)
            job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stopping = False
            while len(group) < self.max_group:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                group.append(job)
            self._run_group(group)
            if stopping:
                return

    def _run_group(self, group: list[_Job]) -> None:
        if len(group) == 1:
            self._run_alone(group[0])
            return
        results: list[Any] = []
        try:
            # Someone is waiting on every one of these: on SQLite they go before background writers.
            with session_scope(urgent=True):
                for job in group:
                    results.append(job.fn())
        except Exception:
            # Which job failed is known only by running them apart; a rolled-back group stored nothing.
            log.warning("a group of %d inbound stores failed; storing them one by one", len(group))
            for job in group:
                self._run_alone(job)
            return
        self.groups += 1
        self.jobs += len(group)
        for job, result in zip(group, results, strict=True):
            job.settle(result=result)

    def _run_alone(self, job: _Job) -> None:
        try:
            with session_scope(urgent=True):
                result = job.fn()
        except Exception as error:
            job.settle(error=error)
            return
        self.groups += 1
        self.jobs += 1
        job.settle(result=result)
