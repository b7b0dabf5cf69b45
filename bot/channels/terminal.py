"""The terminal channel used by `clinicbot chat`: delivering a text prints it."""

from __future__ import annotations

from collections.abc import Callable

from bot.channels.base import Delivery, OutgoingText, SendResult


class TerminalChannel:
    """Print texts for the person at the terminal."""

    name = "terminal"
    min_interval_per_address = 0.0
    max_per_second: float | None = None

    def __init__(self, *, show: Callable[[OutgoingText], None]) -> None:
        self.show = show

    def send(self, text: OutgoingText) -> SendResult:
        """Show the text; it cannot fail."""
        self.show(text)
        return SendResult(Delivery.SENT, provider_message_id=f"terminal:{text.outbox_id}")

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        """Show it again rather than lose it; the terminal has no other record."""
        return self.send(text)
