"""Workers in another process are woken through a UNIX datagram socket by the web process."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from bot.channels.workers import WAKE_INBOUND, WAKE_OUTBOX, Waker


def test_a_wake_up_from_the_web_process_reaches_the_workers_loops(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workers = make_app().workers
    path = str(tmp_path / "worker-0.sock")
    workers.listen(path)
    waker = Waker([path])
    try:
        waker.send(WAKE_INBOUND)
        assert workers.processor.wake.wait(30) is True
        waker.send(WAKE_OUTBOX)
        assert workers.sender.wake.wait(30) is True
    finally:
        waker.close()
        workers.stop()


def test_waking_a_worker_that_is_not_listening_is_harmless(tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    waker = Waker([path])
    try:
        waker.send(WAKE_INBOUND)  # nobody listens yet: no error; the worker's poll finds the message anyway
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(path)
            listener.settimeout(5)
            waker.send(WAKE_INBOUND)  # a worker that starts later gets the next wake-up
            assert listener.recv(16) == WAKE_INBOUND
    finally:
        waker.close()


def test_stopping_the_workers_releases_each_channels_client(demo_db: str) -> None:
    from bot.channels.workers import Workers
    from bot.config import get_settings
    from bot.runtime import get_runtime

    class Provider:
        name = "sms"
        min_interval_per_address = 0.0
        max_per_second = None
        closed = 0

        def close(self) -> None:
            self.closed += 1

    class Failing(Provider):
        name = "telegram"

        def close(self) -> None:
            raise OSError("already gone")

    sms, telegram = Provider(), Failing()
    workers = Workers(engine=get_runtime().engine, channels={"sms": sms, "telegram": telegram}, settings=get_settings())
    workers.stop()  # a channel that fails to close does not keep the others open
    assert sms.closed == 1


def test_a_worker_process_that_keeps_dying_is_restarted_less_and_less_often() -> None:
    import subprocess
    import sys
    import time

    from bot.channels.workers import WorkerProcesses

    class Dying(WorkerProcesses):
        def _spawn(self, n: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    workers = Dying(1, poll=0.05)
    workers.start()
    time.sleep(2.5)
    workers.stop()
    # At once the first time, then after 2 s, 4 s, ...: not a restart loop that eats a core.
    assert 1 <= workers.restarts[0] <= 2
    assert workers.wake_dir is not None and not os.path.exists(workers.wake_dir)


class _StopArrivesAtTheClear:
    """A wake-up event whose next `clear` comes just after a stop (and its wake-up) was signalled.

    That is the order a shutdown can take while a loop is between its stop check and its claim: the
    loop's own clear then spends the stop's wake-up.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop, self.event = stop, threading.Event()

    def clear(self) -> None:
        self.stop.set()
        self.event.set()
        self.event.clear()

    def set(self) -> None:
        self.event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


@pytest.mark.parametrize("loop", ["inbound", "outbox"])
def test_a_stop_that_comes_while_a_loop_claims_is_not_kept_waiting_for_the_next_poll(loop: str, demo_db: str) -> None:
    from bot.channels.workers import Workers
    from bot.config import get_settings
    from bot.runtime import get_runtime

    workers = Workers(engine=get_runtime().engine, channels={}, settings=get_settings())
    stop = threading.Event()
    owner = workers.processor if loop == "inbound" else workers.sender
    owner.wake = _StopArrivesAtTheClear(stop)  # type: ignore[assignment]
    # An hour's poll: a loop that waited it out would still be running when the join gives up.
    thread = threading.Thread(target=owner.run_forever, args=(stop,), kwargs={"poll_seconds": 3600.0}, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    workers.stop()
