"""Measure the whole analyser (safety layer + classifier) on held-out examples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bot.conversations.models import Route
from bot.nlu.data import Example
from bot.nlu.pipeline import HANDOFF_INTENTS, Nlu


def expected_route(intent: str) -> Route:
    """Return the route a correctly understood message of this intent takes."""
    if intent == "emergency":
        return Route.EMERGENCY
    if intent in HANDOFF_INTENTS:
        return Route.HANDOFF
    if intent == "out_of_scope":
        return Route.CLARIFY
    return Route.ANSWER


@dataclass
class PipelineReport:
    """Accuracy figures, overall and per language."""

    total: int = 0
    intent_correct: int = 0
    route_correct: int = 0
    emergencies: int = 0
    emergencies_caught: int = 0
    non_emergencies: int = 0
    false_alarms: int = 0
    by_lang: dict[str, Counter[str]] = field(default_factory=dict)
    missed_emergencies: list[str] = field(default_factory=list)
    false_alarm_texts: list[str] = field(default_factory=list)
    route_confusions: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def intent_accuracy(self) -> float:
        return self.intent_correct / self.total if self.total else 0.0

    @property
    def route_accuracy(self) -> float:
        return self.route_correct / self.total if self.total else 0.0

    @property
    def emergency_recall(self) -> float:
        return self.emergencies_caught / self.emergencies if self.emergencies else 1.0

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.non_emergencies if self.non_emergencies else 0.0

    def lang_accuracy(self, lang: str, what: str) -> float:
        """Return intent or route accuracy for one language."""
        counts = self.by_lang.get(lang, Counter())
        return counts[what] / counts["total"] if counts["total"] else 0.0


def evaluate_pipeline(*, nlu: Nlu, examples: list[Example]) -> PipelineReport:
    """Run every example through the analyser and count what it got right."""
    report = PipelineReport()
    for example in examples:
        analysis = nlu.analyse(example.text)
        want = expected_route(example.intent)
        counts = report.by_lang.setdefault(example.lang, Counter())
        report.total += 1
        counts["total"] += 1
        if analysis.intent == example.intent:
            report.intent_correct += 1
            counts["intent"] += 1
        if analysis.route == want:
            report.route_correct += 1
            counts["route"] += 1
        else:
            report.route_confusions[(str(want), str(analysis.route))] += 1
        if analysis.lang == example.lang:
            counts["lang"] += 1
        if example.intent == "emergency":
            report.emergencies += 1
            if analysis.route == Route.EMERGENCY:
                report.emergencies_caught += 1
            else:
                report.missed_emergencies.append(example.text)
        else:
            report.non_emergencies += 1
            if analysis.route == Route.EMERGENCY:
                report.false_alarms += 1
                report.false_alarm_texts.append(example.text)
    return report
