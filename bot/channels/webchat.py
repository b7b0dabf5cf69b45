"""The web chat channel: replies are stored and the visitor's page reads them (no provider in between)."""

from __future__ import annotations

from bot.channels.base import Delivery, OutgoingText, SendResult


class WebChatChannel:
    """Deliver web chat replies; the page streams them from the database, so any app process can serve it."""

    name = "webchat"
    min_interval_per_address = 0.0
    max_per_second: float | None = None

    def send(self, text: OutgoingText) -> SendResult:
        """Mark the reply deliverable; the visitor's event stream picks it up."""
        return SendResult(Delivery.SENT, provider_message_id=f"webchat:{text.outbox_id}")

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        """Nothing leaves the process, so an unknown outcome is simply sent."""
        return self.send(text)
