"""Skip the regex rules a text cannot match, by the literal strings every match of a rule starts with.

Running a few dozen rule patterns over every message costs more than the rest of the safety layer: each
pattern is tried at every position. Yet a pattern like ``\\b(?:took|swallowed)\\s+...`` can only match
where "too" or "swa" appears. The lead strings of a pattern are read off its parse tree: characters the
pattern fixes are followed from its start, up to WIDTH of them, until the first one it does not fix
(a class such as ``\\w``, the rest of a repeat); zero-width assertions (``\\b``, ``^``, lookarounds) are
stepped over, which can only add leads. Every match starts with one of them, so a text containing none
cannot match, and skipping that pattern changes no result. Whatever the reader does not understand ends
the lead there, and a pattern left without leads always runs: a surprise costs speed, never a match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

try:  # CPython's own parser for re (3.11+); without it every pattern simply runs
    from re import _constants as _c
    from re import _parser
except ImportError:  # pragma: no cover - other Python implementations
    _parser = None

__all__ = ["WIDTH", "Prefilter", "lead_strings"]

WIDTH = 3
# Partial leads one part of a pattern may spell out; past it that part adds no characters (still correct).
_LIMIT = 512

# A partial lead is (characters known so far, whether later items may still extend it).
_Leads = set[tuple[str, bool]]


def lead_strings(pattern: re.Pattern[str], *, width: int = WIDTH) -> frozenset[str] | None:
    """Return strings of at most `width` characters one of which starts every match, or None if unknown."""
    if _parser is None or not isinstance(pattern.pattern, str) or pattern.flags & re.IGNORECASE:
        return None
    try:
        leads = _sequence(_parser.parse(pattern.pattern, pattern.flags), width)
    except Exception:  # noqa: BLE001 - an unexpected tree only costs the shortcut
        return None
    strings = frozenset(lead for lead, _ in leads)
    # An empty lead means a match can start anywhere.
    return None if "" in strings else strings


def _sequence(items: Iterable[tuple[Any, Any]], width: int) -> _Leads:
    """Return the leads of a concatenation: each item extends the leads the items before it left open."""
    leads: _Leads = {("", True)}
    for op, av in items:
        by_room: dict[int, _Leads] = {}
        grown: _Leads = set()
        for lead, is_open in leads:
            if not is_open:
                grown.add((lead, False))
                continue
            room = width - len(lead)
            if room not in by_room:
                by_room[room] = _item(op, av, room)
            for more, more_open in by_room[room]:
                grown.add((lead + more, more_open and len(lead + more) < width))
        if len(grown) > _LIMIT:
            return {("", False)}
        leads = grown
    return leads


def _item(op: Any, av: Any, room: int) -> _Leads:
    """Return the leads of one parse-tree item, with `room` characters left to fill."""
    if op is _c.LITERAL:
        return {(chr(av), room > 1)}
    if op is _c.IN and av and all(kind is _c.LITERAL for kind, _ in av):
        return {(chr(code), room > 1) for _, code in av}
    if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
        return {("", True)}  # zero-width: consumes nothing, whatever it asserts
    if op is _c.BRANCH:
        return {lead for alternative in av[1] for lead in _sequence(alternative, room)}
    if op is _c.SUBPATTERN:
        _group, add_flags, del_flags, body = av
        if add_flags or del_flags:  # e.g. (?i:...) changes what a literal matches
            return {("", False)}
        return _sequence(body, room)
    if op is _c.ATOMIC_GROUP:
        return _sequence(av, room)
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        low, high, body = av
        # The first repetition starts the match; unless it is the only one, what follows it is not read.
        first = _sequence(body, room)
        if high != 1:
            first = {(lead, False) for lead, _ in first}
        return first | {("", True)} if low == 0 else first
    return {("", False)}  # a character class, any character, a group reference...: the lead ends here


class Prefilter:
    """Tell which of a set of named patterns can match a text, from their lead strings."""

    def __init__(self, patterns: Mapping[str, re.Pattern[str]], *, width: int = WIDTH) -> None:
        self.width = width
        by_lead: dict[str, set[str]] = {}
        always = set()
        for name, pattern in patterns.items():
            leads = lead_strings(pattern, width=width)
            if leads is None:
                always.add(name)
                continue
            for lead in leads:
                by_lead.setdefault(lead, set()).add(name)
        self.always = frozenset(always)
        # Leads of the full width are looked up among the text's substrings of that width; the few shorter
        # ones (a pattern that fixes only "me" before a space class) are searched for one by one.
        self.full = {lead: frozenset(names) for lead, names in by_lead.items() if len(lead) == width}
        self.short = tuple((lead, frozenset(names)) for lead, names in by_lead.items() if len(lead) < width)

    def possible(self, text: str) -> set[str]:
        """Return the names of the patterns that may match text (the others certainly do not)."""
        names = set(self.always)
        width = self.width
        for lead in self.full.keys() & {text[i : i + width] for i in range(len(text) - width + 1)}:
            names.update(self.full[lead])
        for lead, with_lead in self.short:
            if lead in text:
                names.update(with_lead)
        return names
