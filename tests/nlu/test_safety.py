"""Tests for the rule-based emergency safety layer."""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from bot.nlu import safety
from bot.nlu.safety import EmergencyKind, SafetyResult, check

HERE = Path(__file__).parent
CASES = yaml.safe_load((HERE / "safety_cases.yml").read_text(encoding="utf-8"))
BLIND = yaml.safe_load((HERE / "safety_blind.yml").read_text(encoding="utf-8"))
RULE_NAMES = {rule.name for rule in safety._RULES}


def _id(text: str) -> str:
    return text[:60]


def _assert_emergency(text: str, kind: str) -> None:
    result = check(text)
    assert result.is_emergency, f"missed emergency: {text!r}"
    assert result.kind == EmergencyKind(kind), f"{text!r}: got {result.kind} via {result.matched}"


def _assert_quiet(text: str) -> None:
    result = check(text)
    assert not result.is_emergency, f"false alarm on {text!r}: {result.kind} via {result.matched}"
    assert result.kind is None


# --- case files --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES["emergency"], ids=lambda c: _id(c["text"]))
def test_emergency_cases_are_detected_with_kind(case: dict[str, str]) -> None:
    _assert_emergency(case["text"], case["kind"])


@pytest.mark.parametrize("text", CASES["not_emergency"], ids=_id)
def test_not_emergency_cases_stay_quiet(text: str) -> None:
    _assert_quiet(text)


@pytest.mark.parametrize("case", BLIND["emergency"], ids=lambda c: _id(c["text"]))
def test_blind_emergencies_are_detected_with_kind(case: dict[str, str]) -> None:
    _assert_emergency(case["text"], case["kind"])


@pytest.mark.parametrize("text", BLIND["not_emergency"], ids=_id)
def test_blind_not_emergencies_stay_quiet(text: str) -> None:
    _assert_quiet(text)


def test_case_file_coverage() -> None:
    emergencies = CASES["emergency"]
    assert len(emergencies) >= 120
    assert len(CASES["not_emergency"]) >= 150
    assert {c["kind"] for c in emergencies} == {k.value for k in EmergencyKind}
    assert len(BLIND["emergency"]) == 30
    assert len(BLIND["not_emergency"]) == 30


_SPANISH = re.compile(
    r"[áéíóúñ¿¡]|\b(?:el|la|los|las|que|mi|me|se|tengo|esta|una|para|ya|quiero|tiene|hay|le|lo|con"
    r"|hola|gracias)\b",
    re.I,
)
_ENGLISH = re.compile(r"\b(?:the|my|and|is|i|to|he|she|it|a|can|for)\b", re.I)


def _looks_spanish(text: str) -> bool:
    return bool(_SPANISH.search(text)) and not _ENGLISH.search(text)


def test_case_file_has_enough_spanish() -> None:
    assert sum(_looks_spanish(c["text"]) for c in CASES["emergency"]) >= 40
    assert sum(_looks_spanish(t) for t in CASES["not_emergency"]) >= 40


def test_blind_set_is_disjoint_from_tuning_cases() -> None:
    def texts(data: dict) -> set[str]:
        return {c["text"].lower() for c in data["emergency"]} | {t.lower() for t in data["not_emergency"]}

    assert not texts(CASES) & texts(BLIND)


def test_cases_are_unique() -> None:
    texts = [c["text"] for c in CASES["emergency"]] + CASES["not_emergency"]
    assert len(texts) == len(set(texts))


# --- result shape and audit ids ---------------------------------------------


@pytest.mark.parametrize(
    "text", [c["text"] for c in CASES["emergency"][::7]] + CASES["not_emergency"][::9], ids=_id
)
def test_result_is_consistent_and_matched_is_a_rule_id(text: str) -> None:
    result = check(text)
    assert isinstance(result, SafetyResult)
    if result.is_emergency:
        assert isinstance(result.kind, EmergencyKind)
        assert result.matched is not None
        assert result.matched.split("+")[0] in RULE_NAMES
    else:
        assert result.kind is None and result.matched is None


def test_rule_names_are_unique_ids() -> None:
    names = [rule.name for rule in safety._RULES]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z_]+\.[a-z_]+", n) for n in names)


def test_result_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        check("i cant breathe").is_emergency = False  # type: ignore[misc]


def test_check_is_pure() -> None:
    texts = ["no chest pain anymore, just need my refill", "i cant breathe", "quiero morirme"]
    first = [check(t) for t in texts]
    assert [check(t) for t in reversed(texts)][::-1] == first


# --- specific behaviour -------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind",
    [
        ("I took all my pills to end it", "self_harm"),
        ("took 30 tylenol on purpose", "self_harm"),
        ("took 30 tylenol", "overdose"),
        ("me tomé todas las pastillas para no despertar", "self_harm"),
    ],
)
def test_overdose_with_intent_is_self_harm(text: str, kind: str) -> None:
    _assert_emergency(text, kind)


@pytest.mark.parametrize(
    "text",
    [
        "no chest pain yesterday but now i cant breathe",
        "not suicidal, but i want to hurt myself",
        "had a seizure years ago. he is having a seizure right now",
        "ya no me duele la cabeza pero ahora me duele el pecho",
        "i had chest pain this morning, it went away, and now it's back",
    ],
)
def test_current_signal_beats_negated_or_past_mention(text: str) -> None:
    assert check(text).is_emergency


def test_choking_on_an_allergen_stays_breathing() -> None:
    _assert_emergency("my son is choking on a peanut", "breathing")


def test_breathing_trouble_with_allergen_is_anaphylaxis() -> None:
    _assert_emergency("ate some walnuts and now it's hard to breathe", "anaphylaxis")


# --- normalisation and robustness --------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "can't breathe",
        "can’t breathe",
        "CAN'T BREATHE",
        "cant   breathe",
        "c\u0301ant breathe",
        "caaaaant breeeeathe",
        "cantttt breathe!!!",
        "can\u200bt breathe",
        "i\tcant\nbreathe",
        "ｃａｎｔ ｂｒｅａｔｈｅ",
    ],
)
def test_normalisation_variants(text: str) -> None:
    _assert_emergency(text, "breathing")


@pytest.mark.parametrize(
    "text", ["no puedo respirar", "NO PUEDO RESPIRAR", "no puedó respirár", "está inconsciente", "esta inconsciente"]
)
def test_accents_are_optional(text: str) -> None:
    assert check(text).is_emergency


def test_stretched_letters_in_double_letter_words() -> None:
    _assert_emergency("bleeeeding a lot", "bleeding")
    _assert_emergency("heeelp i cant breatheee", "breathing")


@pytest.mark.parametrize("case", CASES["emergency"][::3], ids=lambda c: _id(c["text"]))
def test_emergencies_survive_casing_punctuation_and_greetings(case: dict[str, str]) -> None:
    text = case["text"]
    for variant in (text.upper(), f"hi, {text}", f"hola doctor. {text}!!!", f"  {text}  \n"):
        _assert_emergency(variant, case["kind"])


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\t\r",
        "\x00\x01\x02\x1b[31m",
        "\udcff",
        "chest pain \udcff\ud800",
        "🙂🙂🚑💔",
        "هل يمكنني حجز موعد",
        "我胸口痛",
        "a" * 10_000,
        "x" * 100_000,
        "no chest pain " * 700,
        "\u0301" * 1000,
        "ﷺ" * 500,
    ],
    ids=lambda t: repr(t[:20]),
)
def test_check_never_raises_on_odd_input(text: str) -> None:
    result = check(text)
    assert isinstance(result, SafetyResult)


def test_non_string_input_does_not_raise() -> None:
    for value in (None, 42, b"i cant breathe", ["chest pain"]):
        assert check(value) == SafetyResult(False, None, None)  # type: ignore[arg-type]


def test_internal_error_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_: str) -> SafetyResult:
        raise RuntimeError("bug")

    monkeypatch.setattr(safety, "_evaluate", boom)
    result = check("i cant breathe")
    assert result == SafetyResult(False, None, "internal_error")


def test_long_message_with_emergency_at_the_end() -> None:
    text = ("please refill my meds and send the bill " * 300)[:9_980] + " i cant breathe"
    _assert_emergency(text, "breathing")
    _assert_quiet(("please refill my meds and send the bill " * 300)[:10_000])


def test_mixed_language() -> None:
    _assert_emergency("hola doctor, my mom no puede respirar", "breathing")
    _assert_emergency("hi, tengo dolor de pecho", "cardiac")


def _random_text(rng: random.Random) -> str:
    vocab = ["chest", "pain", "no", "not", "cant", "breathe", "had", "years ago", "?", ",", "pecho",
             "me duele", "kill", "myself", "took", "20", "pills", "seizure", "now", "but", "'", "’"]
    parts: list[str] = []
    for _ in range(rng.randint(0, 30)):
        if rng.random() < 0.5:
            parts.append(rng.choice(vocab))
        else:
            parts.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 6))))
    return " ".join(parts)


def test_random_unicode_never_raises_seeded() -> None:
    rng = random.Random(1234)
    for _ in range(2_000):
        result = check(_random_text(rng))
        assert isinstance(result, SafetyResult)
        assert result.is_emergency == (result.kind is not None)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the seeded fuzz test above still runs
    pass
else:
    _any_char = st.characters(exclude_categories=())  # includes lone surrogates
    _words = st.sampled_from(
        ["chest", "pain", "no", "cant", "breathe", "had", "ago", "pecho", "kms", "took", "30",
         "pills", "seizure", "not", "responding", "ya", "no", "quiero", "vivir", ",", ".", "?"]
    )

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=_any_char, max_size=400))
    def test_hypothesis_random_unicode_never_raises(text: str) -> None:
        result = check(text)
        assert isinstance(result, SafetyResult)
        assert result.is_emergency == (result.kind is not None)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(_words, st.text(alphabet=_any_char, max_size=5)), max_size=40))
    def test_hypothesis_word_soup_never_raises(parts: list[str]) -> None:
        result = check(" ".join(parts))
        assert result.is_emergency == (result.kind is not None)
        if result.is_emergency:
            assert result.matched is not None and result.matched.split("+")[0] in RULE_NAMES


def test_normalise_strips_accents_like_nfkd() -> None:
    text = "Está inconsciente, ¿qué hago?"
    expected = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    assert safety._normalise(text)[0] == re.sub(r"[^a-z0-9.,!?;: ]", " ", expected).replace("  ", " ").strip()
