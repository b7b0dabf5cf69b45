"""The analyser: safety first, routes, and retraining when the clinic edits dialogues/."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from bot.config import REPO_ROOT
from bot.conversations.models import Route
from bot.nlu.classifier import Prediction
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


@pytest.mark.parametrize(
    "text",
    [
        "¿debo ir a urgencias?",  # read as billing by the classifier
        "I ran out of my seizure meds, can I skip a few days?",  # read as a refill
        "are my results normal?",  # read as lab status
        "my test results came back positive what does that mean",
        "do I need to fast before my blood test? can I take my insulin?",  # read as test preparation
        "is this covid?",  # read as a greeting
        "¿puedo tomar ibuprofeno con mi presión alta?",
    ],
)
def test_clinical_questions_go_to_a_nurse_whatever_topic_they_borrow(nlu: Nlu, text: str) -> None:
    analysis = nlu.analyse(text)
    assert (analysis.route, analysis.intent) == (Route.HANDOFF, "medical_question"), analysis
    assert analysis.clinical is not None


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("can i take my usual pills the morning of my blood test", "test_preparation"),
        ("can I take my son to his appointment tomorrow", None),
        ("puedo cambiar la cita para la tarde", "reschedule_appointment"),
        ("is it ok if i come at 3pm", None),
    ],
)
def test_routine_questions_stay_with_their_topic(nlu: Nlu, text: str, intent: str | None) -> None:
    analysis = nlu.analyse(text)
    assert analysis.clinical is None  # (what the classifier makes of it is its own business)
    if intent is not None:
        assert analysis.intent == intent


class _Unsure:
    """An intent model that reads everything as a possible emergency, without confidence."""

    trained_on = "fixed"

    def __init__(self, confidence: float) -> None:
        self.confidence = confidence

    def predict(self, text: str) -> Prediction:
        return Prediction(lang="es", intent="emergency", confidence=self.confidence,
                          ranking=(("emergency", self.confidence), ("greeting", 0.2)), lang_confidence=0.9)  # fmt: skip


@pytest.mark.parametrize("confidence", [0.2, 0.36, 0.6])
def test_a_possible_emergency_goes_to_a_nurse_however_unsure_the_classifier_is(confidence: float) -> None:
    # Below the clarify threshold it used to get "did you mean...?" (e.g. "me voy a colgar" at 0.36).
    analysis = Nlu(model=_Unsure(confidence), clarify_threshold=0.45).analyse("algo que las reglas no ven")  # type: ignore[arg-type]
    assert (analysis.route, analysis.intent) == (Route.HANDOFF, "emergency")


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
