"""The clinic's words: both languages complete, every response renders short and safe."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot.config import REPO_ROOT
from bot.conversations.domain import INTENTS, DomainError, load_domain, placeholders
from bot.conversations.engine import build_executor

DIALOGUES = REPO_ROOT / "dialogues"
GLOBAL = {"clinic_name", "phone", "address", "portal_url", "hours_today", "hours_week",
          "emergency_number", "crisis_line", "name"}  # fmt: skip
SAMPLE = {
    "clinic_name": "Riverside Family Clinic",
    "phone": "+1 (617) 555-0100",
    "address": "120 Riverside Ave, Cambridge, MA 02139",
    "portal_url": "https://portal.riverside-clinic.example",
    "hours_today": "8 am-6 pm",
    "hours_week": "Mon-Fri 8 am-6 pm; Sat-Sun closed",
    "emergency_number": "911",
    "crisis_line": "988",
    "name": "Maria",
    "due": "by 10:30 am on Wednesday",
    "team": "our nursing team",
    "topics": "opening hours, a prescription refill or lab results",
    "pharmacy": "Walgreens on Mass Ave",
    "ordered_day": "Monday, Nov 23",
    "expected": "by Thursday",
    "next_update": "by 4 pm on Friday",
    "code": "123456",  # the one-time code in utter_otp_code
    "staff_name": "Sam Lee",  # the staff inbox's texts
    "actions": "We spoke with the front desk team about wait times.",
    "correction": "Your appointment is on Tuesday, not Monday.",
}
# Characters of the GSM 03.38 basic set that matter for English texts.
GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)


@pytest.fixture(scope="module")
def domain():  # type: ignore[no-untyped-def]
    return load_domain(root=DIALOGUES, actions=set(build_executor().actions))


def test_every_intent_has_a_rule_in_both_languages(domain) -> None:
    for lang in ("en", "es"):
        assert set(INTENTS) <= set(domain.language(lang).intent_steps)


def test_responses_render_short_with_known_placeholders(domain) -> None:
    for lang in ("en", "es"):
        for key, variations in domain.language(lang).responses.items():
            for variation in variations:
                unknown = placeholders(variation.text) - set(SAMPLE)
                assert not unknown, f"{lang} {key} uses unknown placeholders {unknown}"
                rendered = variation.text.format_map(SAMPLE)
                assert len(rendered) <= 320, f"{lang} {key} is {len(rendered)} characters"


def test_english_responses_fit_gsm7(domain) -> None:
    for key, variations in domain.language("en").responses.items():
        for variation in variations:
            outside = set(variation.text.format_map(SAMPLE)) - GSM7 - {"{", "}"}
            assert not outside, f"en {key} has non-GSM-7 characters {outside}"


def test_emergency_instructions_lead_with_the_number(domain) -> None:
    for lang in ("en", "es"):
        for key in ("utter_emergency", "utter_emergency_self_harm"):
            text = domain.render(key, lang=lang, slots={}, values=SAMPLE)
            assert "911" in text[:60], f"{lang} {key} buries the emergency number"
        assert "988" in domain.render("utter_emergency_self_harm", lang=lang, slots={}, values=SAMPLE)


def test_personalised_variation_needs_a_known_patient(domain) -> None:
    known = domain.render("utter_greet", lang="en", slots={"known": True}, values=SAMPLE)
    unknown = domain.render("utter_greet", lang="en", slots={"known": False}, values={**SAMPLE, "name": ""})
    assert "Maria" in known and "Maria" not in unknown


def test_a_rule_naming_an_unknown_step_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "dialogues"
    shutil.copytree(DIALOGUES, root)
    rules = root / "es" / "data" / "rules.yml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("utter_hours", "utter_horas"), encoding="utf-8")
    with pytest.raises(DomainError, match=r"es/data/rules.yml: intent hours runs unknown step 'utter_horas'"):
        load_domain(root=root, actions=set(build_executor().actions))


def test_a_missing_translation_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "dialogues"
    shutil.copytree(DIALOGUES, root)
    domain_file = root / "es" / "domain.yml"
    domain_file.write_text(
        domain_file.read_text(encoding="utf-8").replace("utter_billing:", "utter_facturas:"), encoding="utf-8"
    )
    with pytest.raises(DomainError, match="responses missing in es: utter_billing"):
        load_domain(root=root, actions=set(build_executor().actions))


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "dialogues"
    shutil.copytree(DIALOGUES, root)
    (root / "en" / "domain.yml").write_text("responses: [unclosed", encoding="utf-8")
    with pytest.raises(DomainError, match=r"en/domain.yml: not valid YAML"):
        load_domain(root=root, actions=set(build_executor().actions))
