"""The analyser: safety first, routes, and retraining when the clinic edits dialogues/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from bot.config import REPO_ROOT
from bot.conversations.models import Route
from bot.nlu.pipeline import Nlu, get_nlu


@pytest.fixture(scope="module")
def nlu(model_dir: Path) -> Nlu:
    return get_nlu(dialogues_dir=REPO_ROOT / "dialogues", cache_dir=model_dir / "models", clarify_threshold=0.45)


@pytest.mark.parametrize(
    ("text", "route", "intent"),
    [
        ("what time do you close today", Route.ANSWER, "hours"),
        ("can i speak to a real person", Route.HANDOFF, "speak_to_human"),
        ("i have chest pain", Route.EMERGENCY, "emergency"),
        ("no chest pain anymore, just need my refill", Route.ANSWER, "prescription_refill"),
        ("had a seizure years ago, need records", Route.ANSWER, "records_request"),
        ("", Route.CLARIFY, "out_of_scope"),
        ("🙂🙂", Route.CLARIFY, "out_of_scope"),
    ],
)
def test_routes(nlu: Nlu, text: str, route: Route, intent: str) -> None:
    analysis = nlu.analyse(text)
    assert (analysis.route, analysis.intent) == (route, intent)


def test_safety_layer_overrides_the_classifier(nlu: Nlu) -> None:
    analysis = nlu.analyse("what are your hours, also my wife is not breathing")
    assert (analysis.route, analysis.confidence) == (Route.EMERGENCY, 1.0)
    assert analysis.safety.is_emergency


def test_an_edit_to_dialogues_retrains_in_the_background(tmp_path: Path) -> None:
    root = tmp_path / "dialogues"
    shutil.copytree(REPO_ROOT / "dialogues", root)
    nlu = get_nlu(dialogues_dir=root, cache_dir=tmp_path / "models", clarify_threshold=0.45)
    before = nlu.model.trained_on
    nlu_file = root / "en" / "data" / "nlu.yml"
    nlu_file.write_text(
        nlu_file.read_text(encoding="utf-8").replace(
            "- intent: hours\n  examples: |\n", "- intent: hours\n  examples: |\n    - when does the clinic shut its doors\n", 1
        ),
        encoding="utf-8",
    )
    nlu._checked_at = 0.0  # pretend the refresh interval has passed
    nlu.analyse("hello")
    deadline = time.monotonic() + 60
    while nlu.model.trained_on == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nlu.model.trained_on != before
    assert list((tmp_path / "models").iterdir()) and len(list((tmp_path / "models").glob("*"))) == 1


def test_an_unsure_emergency_goes_to_a_nurse_not_to_an_answer(nlu: Nlu, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.nlu.classifier import Prediction

    unsure = Prediction(lang="en", intent="emergency", confidence=0.55, ranking=(("emergency", 0.55),))
    monkeypatch.setattr(nlu.model, "predict", lambda text: unsure)
    analysis = nlu.analyse("something feels really off")
    assert (analysis.route, analysis.intent) == (Route.HANDOFF, "emergency")
