"""Workers in another process are woken through a UNIX datagram socket by the web process."""

from __future__ import annotations

import socket
from pathlib import Path

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
