"""The background workers of an app process: inbound processing and outbox delivery."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import timedelta

from bot.channels.base import Channel
from bot.channels.inbound import InboundProcessor
from bot.channels.intake import Intake
from bot.channels.outbox import OutboxSender
from bot.config import Settings, child_environment
from bot.conversations.engine import Engine
from bot.metrics import MULTIPROCESS_DIR_ENV
from bot.staff.alerts import run_sla_sweeps

log = logging.getLogger(__name__)

# One byte per wake-up datagram: what was stored. A lost datagram costs at most one poll interval.
WAKE_INBOUND, WAKE_OUTBOX = b"i", b"o"


class Waker:
    """Wake worker processes from the web process: one UNIX datagram each, never blocking the sender."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, what: bytes) -> None:
        for path in self.paths:
            # A worker still starting (or restarting) polls the table anyway: a missed wake-up is harmless.
            with contextlib.suppress(OSError):
                self._sock.sendto(what, path)

    def close(self) -> None:
        self._sock.close()


class _WakeSender:
    """Stand in for the sender's wake event when the sender runs in another worker process."""

    def __init__(self, waker: Waker) -> None:
        self.waker = waker

    def set(self) -> None:
        self.waker.send(WAKE_OUTBOX)


class Workers:
    """Run the inbound processor and the outbox sender in threads, woken as work arrives."""

    def __init__(
        self, *, engine: Engine, channels: Mapping[str, Channel], settings: Settings, waker: Waker | None = None
    ) -> None:
        self.sender = OutboxSender(
            channels=channels,
            max_attempts=settings.outbox_max_attempts,
            pacing=settings.outbox_pacing,
            stale_after=timedelta(seconds=settings.outbox_stale_seconds),
        )
        self.processor = InboundProcessor(engine=engine, on_replies=self.sender.wake)
        # The acknowledgement path's writer: webhooks that arrive together are stored in one transaction.
        self.intake = Intake()
        self.channels = dict(channels)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Set when the loops run in other processes: notifications go to them instead.
        self.waker = waker
        self._listener: socket.socket | None = None

    def notify_inbound(self) -> None:
        """Wake the processor: a message was stored."""
        if self.waker is not None:
            self.waker.send(WAKE_INBOUND)
        else:
            self.processor.wake.set()

    def notify_outbox(self) -> None:
        """Wake the sender: a text was queued outside the processor (staff replies, updates)."""
        if self.waker is not None:
            self.waker.send(WAKE_OUTBOX)
        else:
            self.sender.wake.set()

    def listen(self, path: str) -> None:
        """Take wake-ups from a web process on a UNIX datagram socket at `path`."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(path)
        listener.settimeout(0.5)
        self._listener = listener

        def receive() -> None:
            while not self._stop.is_set():
                try:
                    what = listener.recv(16)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if WAKE_INBOUND in what:
                    self.processor.wake.set()
                if WAKE_OUTBOX in what:
                    self.sender.wake.set()

        thread = threading.Thread(target=receive, name="clinicbot-wake", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self, *, send: bool = True) -> None:
        """Start the loops; messages stored before a crash are picked up at once.

        `send=False` runs only the inbound processor: one sender per server keeps a patient's texts
        in order (two senders could each claim one of a patient's consecutive texts).
        """
        loops = [("inbound", self.processor.run_forever)]
        if send:
            loops.append(("outbox", self.sender.run_forever))
        for name, target in loops:
            thread = threading.Thread(target=target, args=(self._stop,), name=f"clinicbot-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not send:
            log.info("workers started: routing only, another process sends")
            return
        # Hand-offs past their response time raise alerts (a plain sweep the scheduler may also call).
        sweep = threading.Thread(target=run_sla_sweeps, args=(self._stop,), kwargs={"on_queued": self.sender.wake.set},
                                 name="clinicbot-sla", daemon=True)  # fmt: skip
        sweep.start()
        self._threads.append(sweep)
        log.info("workers started; channels: %s", ", ".join(sorted(self.channels)))

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop both loops after their current item."""
        self.intake.stop(timeout=timeout)
        self._stop.set()
        self.processor.wake.set()
        self.sender.wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads.clear()
        self.sender.close()
        for name, channel in self.channels.items():
            # Provider clients hold connections (and Telegram's a private event loop): release them.
            close = getattr(channel, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.warning("closing the %s channel failed", name, exc_info=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.waker is not None:
            self.waker.close()


class WorkerProcesses:
    """Start `serve --processors N`'s worker processes and restart any that dies while the server runs.

    Routing (emergency instructions included) and sending live in these processes: one that crashed
    (a native library fault, the kernel's OOM killer) must not leave the web process acknowledging
    messages nobody answers. Its messages stay stored and are routed once it is back; a worker that
    keeps dying is restarted with a growing delay (up to `max_delay`), each exit logged as an error.
    """

    def __init__(self, count: int, *, parent_pid: int | None = None, poll: float = 0.5, max_delay: float = 30.0) -> None:
        self.wake_dir = tempfile.mkdtemp(prefix="clinicbot-wake-") if count else None
        self.wake_paths = [os.path.join(self.wake_dir, f"worker-{n}.sock") for n in range(count)] if self.wake_dir else []
        # Where the workers' counters live (bot.metrics): the web process scrapes them for /metrics.
        self.metrics_dir = os.path.join(self.wake_dir, "metrics") if self.wake_dir else None
        if self.metrics_dir is not None:
            os.mkdir(self.metrics_dir, 0o700)
        self.parent_pid = parent_pid or os.getpid()
        self.poll, self.max_delay = poll, max_delay
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = [0] * count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self, n: int) -> subprocess.Popen[bytes]:
        # The first worker also sends (one sender keeps each patient's texts in order); the others wake it.
        command = [sys.executable, "-m", "bot.channels.workers", self.wake_paths[n], str(self.parent_pid)]
        env = child_environment(**{MULTIPROCESS_DIR_ENV: str(self.metrics_dir)})
        return subprocess.Popen([*command, *([self.wake_paths[0]] if n else [])], env=env)  # noqa: S603 - our own module

    def start(self) -> None:
        """Start every worker, and the thread that watches them."""
        self.processes = [self._spawn(n) for n in range(len(self.wake_paths))]
        if self.processes:
            self._thread = threading.Thread(target=self._supervise, name="clinicbot-supervisor", daemon=True)
            self._thread.start()

    def _supervise(self) -> None:
        due: dict[int, float] = {}  # worker -> when to restart it
        started = {n: time.monotonic() for n in range(len(self.processes))}
        while not self._stop.wait(self.poll):
            for n, process in enumerate(self.processes):
                if n in due:
                    if time.monotonic() >= due[n] and not self._stop.is_set():
                        del due[n]
                        self.processes[n], started[n] = self._spawn(n), time.monotonic()
                        self.restarts[n] += 1
                        log.warning("worker %s restarted as pid %s (restart %s)", n, self.processes[n].pid, self.restarts[n])
                    continue
                code = process.poll()
                if code is None or self._stop.is_set():
                    continue
                # A worker that ran a while is restarted at once; one that keeps dying, less and less often.
                quick = time.monotonic() - started[n] < 60
                delay = min(self.max_delay, 2 ** min(self.restarts[n], 5)) if quick and self.restarts[n] else 0.0
                log.error("worker %s (pid %s) exited with code %s; restarting in %.0f s", n, process.pid, code, delay)
                due[n] = time.monotonic() + delay

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop watching, then stop every worker (SIGTERM, then SIGKILL after `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.wake_dir is not None:
            shutil.rmtree(self.wake_dir, ignore_errors=True)


def run_worker_process(*, wake_path: str, parent_pid: int, sender_path: str | None = None) -> int:
    """Run the inbound processor and the outbox sender in this process until told to stop.

    `clinicbot serve --processors N` starts N of these beside the web server, so routing and sending
    get their own core and interpreter lock while the web process only verifies, stores and acknowledges.
    Several may route at once (claims are per row and per conversation: SKIP LOCKED on PostgreSQL,
    one writer on SQLite); only the one given no `sender_path` sends, and the others wake it there.
    """
    from bot.channels.registry import build_channels
    from bot.config import get_settings
    from bot.runtime import get_runtime, settle_heap

    settings = get_settings()
    runtime = get_runtime()
    workers = Workers(engine=runtime.engine, channels=build_channels(settings), settings=settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    peer = Waker([sender_path]) if sender_path else None
    if peer is not None:
        workers.processor.on_replies = _WakeSender(peer)  # type: ignore[assignment]
    workers.listen(wake_path)
    settle_heap()
    workers.start(send=peer is None)
    # Without its web process nothing wakes this one: it leaves with it, even after a kill -9.
    while not stop.wait(0.5):
        if os.getppid() != parent_pid:
            log.warning("web process %s is gone; worker %s stops", parent_pid, os.getpid())
            break
    workers.stop()
    if peer is not None:
        peer.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(wake_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker process: `python -m bot.channels.workers WAKE_PATH PARENT_PID [SENDER_PATH]`."""
    import sys

    from bot.config import get_settings
    from bot.logging_setup import configure_logging

    args = sys.argv[1:] if argv is None else argv
    settings = get_settings()
    # Logged like `clinicbot serve`, its parent: JSON lines unless text was asked for.
    configure_logging(level=settings.log_level, json_lines=settings.log_format in {"json", "auto"})
    return run_worker_process(wake_path=args[0], parent_pid=int(args[1]), sender_path=args[2] if len(args) > 2 else None)


if __name__ == "__main__":
    raise SystemExit(main())
