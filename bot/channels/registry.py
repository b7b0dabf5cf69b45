"""Build the channels this process can deliver on, from settings (a channel without credentials is off)."""

from __future__ import annotations

from bot.channels.base import Channel
from bot.config import Settings


def build_channels(settings: Settings) -> dict[str, Channel]:
    """Return the enabled channels by name."""
    from bot.channels.webchat import WebChatChannel

    channels: dict[str, Channel] = {"webchat": WebChatChannel()}
    if settings.twilio_enabled:
        from bot.channels.twilio_sms import TwilioSmsChannel

        channels["sms"] = TwilioSmsChannel.from_settings(settings)
    if settings.telegram_enabled:
        from bot.channels.telegram import TelegramChannel

        channels["telegram"] = TelegramChannel.from_settings(settings)
    return channels
