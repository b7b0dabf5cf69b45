"""SMS opt-out keywords (carrier rules) and plain-language requests to stop."""

from __future__ import annotations

import re
from enum import StrEnum

from bot.nlu.language import strip_accents


class Keyword(StrEnum):
    """What an SMS keyword asks for."""

    STOP = "stop"
    START = "start"
    HELP = "help"
    STOP_PHRASE = "stop_phrase"  # "stop texting me": confirm before opting out


STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})

_STOP_PHRASE = re.compile(
    r"\b(?:stop|quit|no more)\s+(?:texting|messaging|sending|contacting)\b"
    r"|\bno more (?:texts|messages|sms)\b|\bunsubscribe me\b|\bdon'?t (?:text|message) me\b"
    r"|\bremove me from (?:your|the) (?:list|texts)\b"
    r"|\bdej(?:en|e) de (?:escribirme|mandarme|enviarme)\b|\bno (?:me )?(?:manden|envien|escriban) mas\b"
    r"|\bno mas mensajes\b|\bdarme de baja\b"
)


def classify_keyword(text: str, *, opted_out: bool) -> Keyword | None:
    """Return the opt-out keyword a whole message is, if any."""
    word = re.sub(r"[^A-Za-z]", "", text.strip()).upper()
    if text.strip().upper().strip(".!") in STOP_WORDS or (word in STOP_WORDS and len(text.split()) == 1):
        return Keyword.STOP
    if word in START_WORDS and len(text.split()) == 1:
        # A bare "yes" is an answer in conversation; it opts in only a number that opted out.
        return Keyword.START if word != "YES" or opted_out else None
    if word in HELP_WORDS and len(text.split()) == 1:
        return Keyword.HELP
    if _STOP_PHRASE.search(strip_accents(text.lower())):
        return Keyword.STOP_PHRASE
    return None
