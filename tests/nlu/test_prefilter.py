"""The regex prefilter: lead strings, and that skipping by them never hides a match or changes a result."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import yaml

from bot.config import REPO_ROOT
from bot.nlu import clinical, safety
from bot.nlu.data import load_heldout, load_training
from bot.nlu.prefilter import Prefilter, lead_strings

HERE = Path(__file__).parent


@pytest.mark.parametrize(
    ("pattern", "leads"),
    [
        (r"\bkill(?:ing|ed)?\s*myself\b", {"kil"}),
        (r"\b(?:took|swallowed)\s+pills", {"too", "swa"}),
        (r"\b(?:me|se)\s+duele", {"me", "se"}),  # \s is not followed: the lead ends before it
        (r"[89] pills", {"8 p", "9 p"}),
        (r"\bkms\b(?<!\d kms)", {"kms"}),  # assertions are stepped over
        (r"^(?:help |please )?(?:a |an )?stroke", {"hel", "ple", "a s", "an ", "str"}),
        (r"(?:ab)*c", {"ab", "c"}),  # a repeat may be skipped; its first round starts the match
        (r"(?:ab){2}c", {"ab"}),
        (r"(?:ab)?cd", {"abc", "cd"}),  # an optional part is read through
        (r"x(?=yz)", {"x"}),
        (r"\w+ing", None),  # a class: the lead is empty, so the pattern always runs
        (r"a|\d", None),
        (r"x?", None),
        (r"[^a]bc", None),
        (r"(?i:abc)", None),  # scoped flags change what a literal matches
    ],
)
def test_lead_strings(pattern: str, leads: set[str] | None) -> None:
    assert lead_strings(re.compile(pattern)) == (None if leads is None else frozenset(leads))


def test_ignorecase_patterns_have_no_leads() -> None:
    assert lead_strings(re.compile("abc", re.IGNORECASE)) is None


def test_prefilter_keeps_patterns_whose_lead_is_present() -> None:
    prefilter = Prefilter({"a": re.compile(r"\bchest pain"), "b": re.compile(r"\bme\s+duele"), "c": re.compile(r"\d")})
    assert prefilter.possible("my chest hurts") == {"a", "c"}
    assert prefilter.possible("ayer me duele") == {"b", "c"}
    assert prefilter.possible("") == {"c"}


def _texts() -> list[str]:
    cases = yaml.safe_load((HERE / "safety_cases.yml").read_text(encoding="utf-8"))
    blind = yaml.safe_load((HERE / "safety_blind.yml").read_text(encoding="utf-8"))
    texts = [c["text"] for doc in (cases, blind) for c in doc["emergency"]]
    texts += [t for doc in (cases, blind) for t in doc["not_emergency"]]
    dialogues = REPO_ROOT / "dialogues"
    texts += [e.text for e in load_heldout(root=dialogues) + load_training(root=dialogues)]
    return texts


TEXTS = _texts()
# Both rule tables, under one name each.
PATTERNS = {rule.name: rule.pattern for rule in safety._RULES} | {
    f"clinical.{name}": pattern for name, pattern in clinical._RULES
}


def test_every_match_starts_with_a_lead_string() -> None:
    forms = [form for text in TEXTS for form in safety.normalised_forms(text)]
    # Word soup from the case texts' own words, so that matches (and near misses) are common.
    rng, vocab = random.Random(7), [w for form in forms[:400] for w in form.split()]
    forms += [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    checked = 0
    for name, pattern in PATTERNS.items():
        leads = lead_strings(pattern)
        if leads is None:
            continue
        for form in forms:
            for m in pattern.finditer(form):
                assert form.startswith(tuple(leads), m.start()), (name, form)
                checked += 1
    assert checked > 1000


def test_the_safety_prefilter_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    forms = [form for text in TEXTS for form in safety.normalised_forms(text)]
    filtered = [safety._evaluate(form) for form in forms]
    monkeypatch.setattr(safety._PREFILTER, "possible", lambda text: {rule.name for rule in safety._RULES})
    assert [safety._evaluate(form) for form in forms] == filtered
    assert sum(result.is_emergency for result in filtered) > 100
