"""What every channel adapter provides to the outbox sender."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Delivery(StrEnum):
    """How one send attempt ended."""

    SENT = "sent"  # the provider accepted it
    RETRY = "retry"  # a transient failure (5xx, 429, network before the request left)
    FAILED = "failed"  # permanent: invalid number, opted out, bot blocked
    UNKNOWN = "unknown"  # the request may have left (timeout): reconcile, never blindly resend


@dataclass(frozen=True)
class SendResult:
    """The outcome of one attempt, as the provider told it."""

    outcome: Delivery
    provider_message_id: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    # Set on permanent failures that say something about the recipient ("opted_out", "blocked").
    recipient_state: str | None = None
    # A text sent as several messages and cut short: how many leading parts reached the provider (with
    # the first one's id in provider_message_id). The next attempt sends only the rest.
    parts_sent: int = 0
    # A text sent as several provider messages: (part number from 0, provider id) of each part this attempt
    # sent or found, which the sender stores with the row (outbox_part) so that no other row's reconcile
    # takes them for its own. Only for providers whose ids are unique across all recipients (Twilio's).
    part_ids: tuple[tuple[int, str], ...] = ()


# Staff open a patient's attachment through the server; MMS files are at most 5 MB, Telegram's bots 20 MB.
MAX_MEDIA_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class Media:
    """A file a patient attached, fetched from the provider for staff."""

    content: bytes
    content_type: str


class MediaError(Exception):
    """An attachment could not be fetched; the message says why, for staff (no link, no file id)."""


@dataclass(frozen=True)
class OutgoingText:
    """One outbox row, as a channel sees it."""

    outbox_id: int
    key: str
    channel: str
    address: str
    text: str
    buttons: tuple[dict[str, str], ...] = field(default_factory=tuple)
    attempt: int = 1
    first_attempt_at: datetime | None = None
    # An earlier attempt's outcome is unknown: ask the provider before sending again.
    reconcile: bool = False
    identity_id: int | None = None
    bypass_opt_out: bool = False
    # Leading parts an earlier attempt already delivered (see SendResult.parts_sent): not to be sent again.
    parts_sent: int = 0
    # The recipient opted out after an attempt whose outcome is unknown: only ask the provider (see
    # `find`), never send; a text the provider has is recorded as sent, else it is cancelled.
    look_up_only: bool = False


class Channel(Protocol):
    """A way to reach patients; domain code is handed one and never imports a provider SDK."""

    name: str
    # Pacing: seconds between texts to one address, and texts per second overall (None = unlimited).
    min_interval_per_address: float
    max_per_second: float | None

    def send(self, text: OutgoingText) -> SendResult:
        """Send one text; never raise for provider errors, report them."""
        ...

    def reconcile(self, text: OutgoingText) -> SendResult | None:
        """Find out whether an earlier attempt with an unknown outcome was delivered; None if still unknown."""
        ...


@runtime_checkable
class LooksUp(Protocol):
    """A channel whose provider can say whether it has a text, without sending anything (Twilio can)."""

    def find(self, text: OutgoingText) -> SendResult | None:
        """Return SENT (with the provider's ids) when the provider has the text, RETRY when it has no trace, None
        when it cannot be asked; never send."""
        ...
