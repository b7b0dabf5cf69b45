"""Workers in another process are woken through a UNIX datagram socket by the web process."""

from __future__ import annotations

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
    waker = Waker([str(tmp_path / "nobody.sock")])
    waker.send(WAKE_INBOUND)  # the worker's poll finds the message anyway
    waker.close()
