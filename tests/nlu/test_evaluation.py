"""The analyser on the held-out set: route and intent accuracy, and no emergency missed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import REPO_ROOT
from bot.nlu.data import load_heldout
from bot.nlu.evaluation import PipelineReport, evaluate_pipeline
from bot.nlu.pipeline import get_nlu

# Thresholds sit a few points under the measured figures (see README) so a real regression fails.
MIN_ROUTE_ACCURACY = {"en": 0.93, "es": 0.92}
MIN_INTENT_ACCURACY = {"en": 0.93, "es": 0.92}
MAX_FALSE_ALARM_RATE = 0.02


@pytest.fixture(scope="module")
def report(model_dir: Path) -> PipelineReport:
    nlu = get_nlu(dialogues_dir=REPO_ROOT / "dialogues", cache_dir=model_dir / "models", clarify_threshold=0.45)
    examples = load_heldout(root=REPO_ROOT / "dialogues")
    assert len(examples) >= 400, "the held-out set is missing or too small"
    return evaluate_pipeline(nlu=nlu, examples=examples)


def test_no_emergency_is_missed(report: PipelineReport) -> None:
    assert report.missed_emergencies == []
    assert report.emergency_recall == 1.0


def test_false_alarms_stay_rare(report: PipelineReport) -> None:
    assert report.false_alarm_rate <= MAX_FALSE_ALARM_RATE, report.false_alarm_texts


@pytest.mark.parametrize("lang", ["en", "es"])
def test_route_accuracy(report: PipelineReport, lang: str) -> None:
    assert report.lang_accuracy(lang, "route") >= MIN_ROUTE_ACCURACY[lang], report.route_confusions


@pytest.mark.parametrize("lang", ["en", "es"])
def test_intent_accuracy(report: PipelineReport, lang: str) -> None:
    assert report.lang_accuracy(lang, "intent") >= MIN_INTENT_ACCURACY[lang]


@pytest.mark.parametrize("lang", ["en", "es"])
def test_language_detection(report: PipelineReport, lang: str) -> None:
    assert report.lang_accuracy(lang, "lang") >= 0.97
