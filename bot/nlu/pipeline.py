"""The safety layer and the classifier together, and the stateless route they imply."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bot.conversations.models import Route
from bot.nlu.classifier import IntentModel, load_or_train
from bot.nlu.clinical import clinical_question
from bot.nlu.data import fingerprint
from bot.nlu.safety import SafetyResult, check

log = logging.getLogger(__name__)

HANDOFF_INTENTS = frozenset({"speak_to_human", "complaint", "medical_question"})
# The classifier is a second net under the rules (it catches bare "EMERGENCY HELP"): an emergency it is
# sure of is treated as one. 0.7 keeps held-out recall at 100% while cutting its false alarms to one.
CLASSIFIER_EMERGENCY_THRESHOLD = 0.7


@dataclass(frozen=True, slots=True)
class Analysis:
    """What one message means, before conversation state is considered."""

    lang: str
    lang_confidence: float
    intent: str
    confidence: float
    ranking: tuple[tuple[str, float], ...]
    safety: SafetyResult
    route: Route
    # The rule that found a question only a clinician may answer (bot.nlu.clinical), if any.
    clinical: str | None = None


def has_words(text: str) -> bool:
    """Return whether a message has any letters or digits at all."""
    return any(ch.isalnum() for ch in text)


class Nlu:
    """Analyse messages with the safety rules first, then the intent model."""

    def __init__(
        self,
        *,
        model: IntentModel,
        clarify_threshold: float,
        dialogues_dir: Path | None = None,
        cache_dir: Path | None = None,
        refresh_seconds: float = 30.0,
    ) -> None:
        self.model = model
        self.clarify_threshold = clarify_threshold
        self._source = (dialogues_dir, cache_dir) if dialogues_dir and cache_dir else None
        self._refresh_seconds = refresh_seconds
        self._checked_at = time.monotonic()
        self._retraining = threading.Lock()

    def refresh_if_changed(self) -> None:
        """Retrain in the background when dialogues/ changed; keep answering with the old model meanwhile."""
        if self._source is None or time.monotonic() - self._checked_at < self._refresh_seconds:
            return
        self._checked_at = time.monotonic()
        dialogues_dir, cache_dir = self._source
        try:
            current = fingerprint(root=dialogues_dir)
        except OSError:
            return
        if current == self.model.trained_on or not self._retraining.acquire(blocking=False):
            return

        def retrain() -> None:
            try:
                self.model = load_or_train(root=dialogues_dir, cache_dir=cache_dir)
                log.info("classifier retrained for dialogues %s", current[:12])
            except Exception:
                # A broken edit must not take the bot down: keep the last good model.
                log.exception("retraining failed; keeping the previous classifier")
            finally:
                self._retraining.release()

        threading.Thread(target=retrain, name="nlu-retrain", daemon=True).start()

    def analyse(self, text: str) -> Analysis:
        """Return language, intent, confidence and the route for one message."""
        self.refresh_if_changed()
        safety = check(text)
        prediction = self.model.predict(text)  # the language is detected once, inside
        lang, lang_confidence = prediction.lang, prediction.lang_confidence
        intent, confidence = prediction.intent, prediction.confidence
        clinical = None
        if safety.is_emergency:
            route, intent, confidence = Route.EMERGENCY, "emergency", 1.0
        elif intent == "emergency" and confidence >= CLASSIFIER_EMERGENCY_THRESHOLD:
            route = Route.EMERGENCY
        elif not has_words(text):
            route, intent, confidence = Route.CLARIFY, "out_of_scope", 0.0
        elif intent == "emergency":
            # A possible emergency the rules did not see goes to a nurse (the reply still says call 911),
            # never to an automatic answer or a "did you mean" question, however unsure the classifier is.
            route = Route.HANDOFF
        elif (clinical := clinical_question(text, intent=intent)) is not None:
            # A question only a clinician may answer, whatever topic its words borrow.
            route, intent = Route.HANDOFF, "medical_question"
        elif intent == "out_of_scope" or confidence < self.clarify_threshold:
            route = Route.CLARIFY
        elif intent in HANDOFF_INTENTS:
            route = Route.HANDOFF
        else:
            route = Route.ANSWER
        return Analysis(
            lang=lang,
            lang_confidence=lang_confidence,
            intent=intent,
            confidence=round(float(confidence), 4),
            ranking=prediction.ranking,
            safety=safety,
            route=route,
            clinical=clinical,
        )


_lock = threading.Lock()
_cache: dict[tuple[str, str, float], Nlu] = {}


def get_nlu(*, dialogues_dir: Path, cache_dir: Path, clarify_threshold: float) -> Nlu:
    """Return the process's analyser, training the model if dialogues/ changed."""
    key = (str(dialogues_dir.resolve()), str(cache_dir.resolve()), clarify_threshold)
    with _lock:
        if key not in _cache:
            model = load_or_train(root=dialogues_dir, cache_dir=cache_dir)
            _cache[key] = Nlu(
                model=model, clarify_threshold=clarify_threshold, dialogues_dir=dialogues_dir, cache_dir=cache_dir
            )
        return _cache[key]
