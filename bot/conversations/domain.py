"""Load the clinic's words (Rasa 3.x domain and rules) and render responses."""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LANGUAGES = ("en", "es")

INTENTS = (
    "greeting", "thanks", "hours", "location", "book_appointment", "reschedule_appointment",
    "cancel_appointment", "prescription_refill", "lab_results", "test_preparation", "billing",
    "portal_help", "records_request", "speak_to_human", "complaint", "medical_question", "emergency",
    "out_of_scope",
)  # fmt: skip


class DomainError(ValueError):
    """The dialogues files are inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class Variation:
    """One wording of a response, with the slot values it requires."""

    text: str
    conditions: tuple[tuple[str, Any], ...] = ()


@dataclass
class LanguageDomain:
    """One language's domain.yml and rules.yml, parsed."""

    lang: str
    raw: dict[str, Any]
    responses: dict[str, list[Variation]]
    forms: dict[str, list[str]]
    intent_steps: dict[str, list[str]] = field(default_factory=dict)
    form_submit: dict[str, str] = field(default_factory=dict)


# libyaml's safe loader when PyYAML was built with it: the same documents, parsed several times faster.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)
    except FileNotFoundError:
        raise DomainError(f"{path}: file is missing") from None
    except yaml.YAMLError as error:
        raise DomainError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise DomainError(f"{path}: expected a mapping at the top level")
    return data


def _parse_responses(path: Path, data: dict[str, Any]) -> dict[str, list[Variation]]:
    responses: dict[str, list[Variation]] = {}
    for key, variations in (data.get("responses") or {}).items():
        if not isinstance(variations, list) or not variations:
            raise DomainError(f"{path}: response {key} needs a list of variations")
        parsed = []
        for variation in variations:
            if not isinstance(variation, dict) or not isinstance(variation.get("text"), str):
                raise DomainError(f"{path}: response {key} has a variation without text")
            conditions = tuple(
                (c["name"], c.get("value")) for c in variation.get("condition") or [] if c.get("type") == "slot"
            )
            parsed.append(Variation(text=variation["text"], conditions=conditions))
        responses[key] = parsed
    return responses


def _parse_rules(path: Path, data: dict[str, Any], domain: LanguageDomain) -> None:
    for rule in data.get("rules") or []:
        steps = rule.get("steps") or []
        name = rule.get("rule", "?")
        condition_loops = [c.get("active_loop") for c in rule.get("condition") or [] if "active_loop" in c]
        actions = [s["action"] for s in steps if "action" in s]
        if condition_loops:
            # A submit rule: the form finished, then its action runs.
            form = condition_loops[0]
            after = [a for a in actions if a != form]
            if form not in domain.forms or not after:
                raise DomainError(f"{path}: rule '{name}' submits unknown form {form!r}")
            domain.form_submit[form] = after[0]
            continue
        intents = [s["intent"] for s in steps if "intent" in s]
        if len(intents) != 1:
            raise DomainError(f"{path}: rule '{name}' must start with exactly one intent")
        domain.intent_steps[intents[0]] = actions


def load_language(*, root: Path, lang: str) -> LanguageDomain:
    """Parse and check one language's domain and rules."""
    domain_path = root / lang / "domain.yml"
    rules_path = root / lang / "data" / "rules.yml"
    raw = _read_yaml(domain_path)
    forms = {
        name: list((spec or {}).get("required_slots") or []) for name, spec in (raw.get("forms") or {}).items()
    }
    domain = LanguageDomain(lang=lang, raw=raw, responses=_parse_responses(domain_path, raw), forms=forms)
    _parse_rules(rules_path, _read_yaml(rules_path), domain)
    return domain


@dataclass
class Domain:
    """Both languages' domains, with one place to render a response."""

    languages: dict[str, LanguageDomain]

    def language(self, lang: str) -> LanguageDomain:
        """Return a language's domain, falling back to English."""
        return self.languages.get(lang) or self.languages["en"]

    def has_response(self, key: str) -> bool:
        """Return whether a response key exists (checked in English)."""
        return key in self.languages["en"].responses

    def render(self, key: str, *, lang: str, slots: dict[str, Any], values: dict[str, Any]) -> str:
        """Fill the first variation whose slot conditions hold."""
        variations = self.language(lang).responses.get(key) or self.languages["en"].responses[key]
        chosen = next(
            (v for v in variations if v.conditions and all(slots.get(n) == val for n, val in v.conditions)),
            None,
        ) or next((v for v in variations if not v.conditions), variations[0])
        return chosen.text.format_map(values).strip()


def placeholders(text: str) -> set[str]:
    """Return the placeholder names used in a response text."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def load_domain(*, root: Path, actions: set[str]) -> Domain:
    """Load every language and check the files agree with each other and with the code."""
    languages = {lang: load_language(root=root, lang=lang) for lang in LANGUAGES}
    english = languages["en"]
    for lang, domain in languages.items():
        where = root / lang
        missing = set(english.responses) - set(domain.responses)
        if missing:
            raise DomainError(f"{where}/domain.yml: responses missing in {lang}: {', '.join(sorted(missing))}")
        unruled = [i for i in INTENTS if i not in domain.intent_steps]
        if unruled:
            raise DomainError(f"{where}/data/rules.yml: no rule for intent(s) {', '.join(unruled)}")
        for intent, steps in domain.intent_steps.items():
            for step in steps:
                known = step in domain.responses or step in actions or step in domain.forms
                if not known:
                    raise DomainError(f"{where}/data/rules.yml: intent {intent} runs unknown step {step!r}")
        for form in domain.forms:
            if form not in domain.form_submit:
                raise DomainError(f"{where}/data/rules.yml: form {form} has no submit rule")
    return Domain(languages=languages)
