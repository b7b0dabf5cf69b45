"""The background workers of an app process: inbound processing and outbox delivery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import timedelta

from bot.channels.base import Channel
from bot.channels.inbound import InboundProcessor
from bot.channels.outbox import OutboxSender
from bot.config import Settings
from bot.conversations.engine import Engine
from bot.staff.alerts import run_sla_sweeps

log = logging.getLogger(__name__)


class Workers:
    """Run the inbound processor and the outbox sender in threads, woken as work arrives."""

    def __init__(self, *, engine: Engine, channels: Mapping[str, Channel], settings: Settings) -> None:
        self.sender = OutboxSender(
            channels=channels,
            max_attempts=settings.outbox_max_attempts,
            pacing=settings.outbox_pacing,
            stale_after=timedelta(seconds=settings.outbox_stale_seconds),
        )
        self.processor = InboundProcessor(engine=engine, on_replies=self.sender.wake)
        self.channels = dict(channels)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def notify_inbound(self) -> None:
        """Wake the processor: a message was stored."""
        self.processor.wake.set()

    def notify_outbox(self) -> None:
        """Wake the sender: a text was queued outside the processor (staff replies, updates)."""
        self.sender.wake.set()

    def start(self) -> None:
        """Start both loops; messages stored before a crash are picked up at once."""
        for name, target in (("inbound", self.processor.run_forever), ("outbox", self.sender.run_forever)):
            thread = threading.Thread(target=target, args=(self._stop,), name=f"clinicbot-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        # Hand-offs past their response time raise alerts (a plain sweep the scheduler may also call).
        sweep = threading.Thread(target=run_sla_sweeps, args=(self._stop,), kwargs={"on_queued": self.sender.wake.set},
                                 name="clinicbot-sla", daemon=True)  # fmt: skip
        sweep.start()
        self._threads.append(sweep)
        log.info("workers started; channels: %s", ", ".join(sorted(self.channels)))

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop both loops after their current item."""
        self._stop.set()
        self.processor.wake.set()
        self.sender.wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        self._threads.clear()
        self.sender.close()
