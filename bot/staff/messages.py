"""Staff-facing system texts (English): alerts sent to the staff Telegram group."""

from __future__ import annotations

# No patient details ever: the kind, the priority and a link that requires a staff sign-in.
ALERT_TELEGRAM = {
    "emergency": "URGENT ({priority}): a patient message was flagged as an emergency. Open: {link}",
    "sla_breach": "Overdue ({priority}): a hand-off has passed its response time with no staff reply. Open: {link}",
}

# Queue priority names staff see, by Priority value.
PRIORITY_LABELS = {40: "emergency", 30: "complaint", 20: "medical", 10: "normal"}


def alert_telegram_text(*, kind: str, priority: int, link: str) -> str:
    """Return the staff group text for an alert."""
    return ALERT_TELEGRAM[kind].format(priority=PRIORITY_LABELS.get(priority, str(priority)), link=link)
