"""SMS text rules: the GSM-7 alphabet, segment counting, and splitting long texts."""

from __future__ import annotations

import re

# GSM 03.38 default alphabet (the escape code itself is not a character anyone types).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Reached through the escape code: each costs two septets.
GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")

# Look-alikes that editors and phones insert; one of them alone would switch a text to UCS-2.
GSM7_REPLACEMENTS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ", "\u2007": " ", "\u2009": " ", "\u202f": " ",
}  # fmt: skip

MAX_SEGMENTS = 3
GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

_SENTENCE_END = re.compile(r"(?<=[.!?])(\s+)")
_SPACE = re.compile(r"(\s+)")


_GSM7 = GSM7_BASIC | GSM7_EXTENDED
_REPLACE = str.maketrans(GSM7_REPLACEMENTS)


def is_gsm7(text: str) -> bool:
    """Return whether a text fits the GSM-7 alphabet (with its extension table)."""
    return _GSM7.issuperset(text)


def gsm7_normalise(text: str) -> str:
    """Replace typographic look-alikes with GSM-7 characters, when that makes the whole text GSM-7."""
    replaced = text.translate(_REPLACE)
    # A text that stays UCS-2 anyway keeps its original punctuation: nothing would be saved.
    return replaced if is_gsm7(replaced) else text


def _units(text: str) -> list[int]:
    """Return the cost of each character: septets for GSM-7, UTF-16 code units for UCS-2."""
    if is_gsm7(text):
        return [2 if ch in GSM7_EXTENDED else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def segments(text: str) -> int:
    """Return how many SMS segments a text takes (at least one)."""
    gsm = is_gsm7(text)
    single, part = (GSM7_SINGLE, GSM7_PART) if gsm else (UCS2_SINGLE, UCS2_PART)
    units = _units(text)
    if sum(units) <= single:
        return 1
    # An escaped character or a surrogate pair is never split across two parts.
    count, used = 1, 0
    for cost in units:
        if used + cost > part:
            count, used = count + 1, 0
        used += cost
    return count


def _fits(text: str, max_segments: int) -> bool:
    return segments(text) <= max_segments


def _pack(pieces: list[str], max_segments: int, finer: re.Pattern[str] | None) -> list[str]:
    """Greedily join pieces (text, separator, text, ...) into texts that fit; split oversized pieces finer."""
    texts: list[str] = []
    current = ""
    for index in range(0, len(pieces), 2):
        piece = pieces[index]
        separator = pieces[index - 1] if index else ""
        if not piece:
            continue
        candidate = current + separator + piece if current else piece
        if _fits(candidate, max_segments):
            current = candidate
            continue
        if current:
            texts.append(current.strip())
            current = ""
        if _fits(piece, max_segments):
            current = piece
            continue
        parts = _split_piece(piece, max_segments, finer)
        texts.extend(parts[:-1])
        current = parts[-1]
    if current.strip():
        texts.append(current.strip())
    return texts


def _split_piece(piece: str, max_segments: int, finer: re.Pattern[str] | None) -> list[str]:
    if finer is not None:
        return _pack(finer.split(piece), max_segments, None)
    # One "word" longer than the limit (a pasted link): cut it where it must be cut.
    parts, current = [], ""
    for ch in piece:
        if current and not _fits(current + ch, max_segments):
            parts.append(current)
            current = ""
        current += ch
    return [*parts, current]


def split_text(text: str, *, max_segments: int = MAX_SEGMENTS) -> list[str]:
    """Split a text into texts of at most max_segments each, at sentence, then word boundaries."""
    text = text.strip()
    if _fits(text, max_segments):
        return [text]
    return [part for part in _pack(_SENTENCE_END.split(text), max_segments, _SPACE) if part]
