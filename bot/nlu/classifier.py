"""Embedded intent classifier: tf-idf char/word n-grams, linear model, calibrated probabilities."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.nlu.data import LANGS, DialoguesError, Example, fingerprint, load_training
from bot.nlu.language import (
    LanguageModel,
    TfidfBlock,
    make_vectorizer,
    normalize_for_intent,
    train_language_model,
)

log = logging.getLogger(__name__)

# Bump when features, math or the pickled layout change so cached models retrain.
MODEL_FORMAT = 1
FALLBACK_INTENT = "out_of_scope"
TOP_K = 5
_CACHE_PREFIX = "intent-"
_CACHE_SUFFIX = ".joblib"
_TMP_PREFIX = ".intent-"
_STALE_TMP_SECONDS = 3600
_ALNUM_RE = re.compile(r"[^\W_]")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Hyper-parameters of the intent model (chosen by cross-validation on training data)."""

    clf: str = "svc"  # "svc" (LinearSVC) | "lr" (LogisticRegression)
    c: float = 1.0
    # Temperature scaling: one parameter per fold, keeps argmax, and in CV gave
    # ECE ~0.04 vs ~0.19 for per-class sigmoid (which is underconfident over 18 classes).
    calibration: str = "temperature"  # "temperature" | "sigmoid" | "isotonic"
    cv: int = 5
    char_range: tuple[int, int] = (2, 5)
    word_range: tuple[int, int] | None = (1, 2)
    min_df: int = 1
    per_language: bool = False


DEFAULT_CONFIG = ModelConfig()


@dataclass(frozen=True, slots=True)
class Prediction:
    """Intent prediction for one message."""

    lang: str
    intent: str
    confidence: float
    ranking: tuple[tuple[str, float], ...]
    # How sure the language detector was of `lang` (the analyser reports it; detected once per message).
    lang_confidence: float = 0.5


class _Scorer:
    """Calibrated linear classifier over tf-idf blocks, evaluated with plain numpy."""

    __slots__ = ("blocks", "offsets", "classes", "weights", "bias", "method", "params", "n_folds")

    def __init__(
        self,
        *,
        blocks: tuple[TfidfBlock, ...],
        classes: tuple[str, ...],
        weights: np.ndarray,
        bias: np.ndarray,
        method: str,
        params: dict[str, np.ndarray],
        n_folds: int,
    ) -> None:
        self.blocks = blocks
        offsets = [0]
        for block in blocks:
            offsets.append(offsets[-1] + block.size)
        self.offsets = tuple(offsets[:-1])
        self.classes = classes
        self.weights = weights  # (n_features, n_folds * n_cols), row-gatherable
        self.bias = bias  # (n_folds * n_cols,)
        self.method = method
        self.params = params
        self.n_folds = n_folds

    def features(self, norm: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (global feature ids, values) of the block-wise l2-normalised tf-idf vector."""
        id_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        for offset, block in zip(self.offsets, self.blocks, strict=True):
            ids, vals = block.transform_one(norm)
            if len(ids):
                id_parts.append(ids + offset)
                val_parts.append(vals)
        if not id_parts:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        if len(id_parts) == 1:
            return id_parts[0], val_parts[0]
        return np.concatenate(id_parts), np.concatenate(val_parts)

    def proba(self, ids: np.ndarray, vals: np.ndarray) -> np.ndarray:
        """Return calibrated class probabilities (averaged over CV folds) for one feature vector."""
        decision = (vals @ self.weights[ids] + self.bias).reshape(self.n_folds, -1)
        n_classes = len(self.classes)
        if self.method == "temperature":
            logits = decision if n_classes > 2 else np.concatenate([-decision, decision], axis=1)
            z = logits * self.params["beta"][:, None]
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
        else:
            if self.method == "sigmoid":
                p = 1.0 / (1.0 + np.exp(self.params["a"] * decision + self.params["b"]))
            else:  # isotonic: piecewise-linear, clipped at the ends
                p = np.empty_like(decision)
                xs, ys = self.params["x"], self.params["y"]
                for k in range(self.n_folds):
                    for j in range(decision.shape[1]):
                        p[k, j] = np.interp(decision[k, j], xs[k][j], ys[k][j])
            if n_classes == 2:
                p = np.concatenate([1.0 - p, p], axis=1)
            else:
                total = p.sum(axis=1, keepdims=True)
                uniform = np.full_like(p, 1.0 / n_classes)
                p = np.divide(p, total, out=uniform, where=total != 0)
        return p.mean(axis=0)

    @classmethod
    def from_sklearn(
        cls, *, blocks: tuple[TfidfBlock, ...], calibrated: Any, labels: Sequence[str]
    ) -> _Scorer:
        """Extract weights and calibrators from a CalibratedClassifierCV fitted on label indices."""
        classes = tuple(labels[int(c)] for c in calibrated.classes_)
        weights, biases, a, b, beta, xs, ys = [], [], [], [], [], [], []
        for fold in calibrated.calibrated_classifiers_:
            est = fold.estimator
            if tuple(labels[int(c)] for c in est.classes_) != classes:
                raise RuntimeError("a CV fold lacks some intents; cannot build the fast path")
            weights.append(np.asarray(est.coef_, dtype=np.float64).T)
            biases.append(np.asarray(est.intercept_, dtype=np.float64).reshape(-1))
            if calibrated.method == "sigmoid":
                a.append([c.a_ for c in fold.calibrators])
                b.append([c.b_ for c in fold.calibrators])
            elif calibrated.method == "temperature":
                beta.append(float(fold.calibrators[0].beta_))
            else:
                xs.append([np.asarray(c.X_thresholds_, dtype=np.float64) for c in fold.calibrators])
                ys.append([np.asarray(c.y_thresholds_, dtype=np.float64) for c in fold.calibrators])
        params: dict[str, Any]
        if calibrated.method == "sigmoid":
            params = {"a": np.asarray(a, dtype=np.float64), "b": np.asarray(b, dtype=np.float64)}
        elif calibrated.method == "temperature":
            params = {"beta": np.asarray(beta, dtype=np.float64)}
        else:
            params = {"x": xs, "y": ys}
        return cls(
            blocks=blocks,
            classes=classes,
            weights=np.ascontiguousarray(np.hstack(weights)),
            bias=np.concatenate(biases),
            method=calibrated.method,
            params=params,
            n_folds=len(weights),
        )


@dataclass(slots=True)
class _SklearnParts:
    """Fitted sklearn objects of one scorer, kept in memory only (for verification)."""

    vectorizers: list[Any]
    calibrated: Any

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Return sklearn's predict_proba for raw texts."""
        return self.calibrated.predict_proba(
            _stack(self.vectorizers, [normalize_for_intent(t) for t in texts])
        )


def _stack(vectorizers: Sequence[Any], norms: Sequence[str]) -> Any:
    from scipy import sparse

    return sparse.hstack([v.transform(norms) for v in vectorizers], format="csr")


class IntentModel:
    """Trained intent + language model; predict() is pure numpy and never raises."""

    def __init__(
        self,
        *,
        scorers: dict[str, _Scorer],
        language: LanguageModel,
        trained_on: str,
        config: ModelConfig,
        n_examples: int,
    ) -> None:
        self._scorers = scorers
        self.language = language
        self.trained_on = trained_on
        self.config = config
        self.n_examples = n_examples
        self.format = MODEL_FORMAT
        self.intents: tuple[str, ...] = tuple(sorted({c for s in scorers.values() for c in s.classes}))
        self.sklearn: dict[str, _SklearnParts] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # sklearn objects are for in-process checks only; the cache stays sklearn-version independent.
        state["sklearn"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def predict_language(self, text: str) -> tuple[str, float]:
        """Return ("en"|"es", probability) for a message."""
        try:
            return self.language.detect(text)
        except Exception as exc:  # advisory signal; never fail a conversation over it
            # Class name only: exception messages can quote the patient's text.
            log.error("language detection failed (%s)", exc.__class__.__name__)
            return "en", 0.5

    def _fallback(self, lang: str, lang_confidence: float = 0.5) -> Prediction:
        # No usable evidence: uniform over intents, reported as out_of_scope.
        n = max(len(self.intents), 1)
        others = [i for i in self.intents if i != FALLBACK_INTENT]
        ranking = ((FALLBACK_INTENT, 1.0 / n),) + tuple((i, 1.0 / n) for i in others[: TOP_K - 1])
        return Prediction(lang=lang, intent=FALLBACK_INTENT, confidence=1.0 / n, ranking=ranking,
                          lang_confidence=lang_confidence)  # fmt: skip

    def predict_proba(self, texts: Sequence[str], *, lang: str | None = None) -> np.ndarray:
        """Return calibrated probabilities (columns = scorer classes) via the numpy fast path, no fallbacks."""
        scorer = self._scorer_for(lang)
        rows = [scorer.proba(*scorer.features(normalize_for_intent(t))) for t in texts]
        return np.vstack(rows) if rows else np.empty((0, len(scorer.classes)))

    def _scorer_for(self, lang: str | None) -> _Scorer:
        if lang is not None and lang in self._scorers:
            return self._scorers[lang]
        return self._scorers.get("*") or next(iter(self._scorers.values()))

    def predict(self, text: str) -> Prediction:
        """Return the most likely intent with calibrated confidence and top-5 ranking; never raises."""
        lang, lang_confidence = "en", 0.5
        try:
            lang, lang_confidence = self.predict_language(text)
            scorer = self._scorer_for(lang)
            norm = normalize_for_intent(text)
            if not _ALNUM_RE.search(norm):
                return self._fallback(lang, lang_confidence)
            ids, vals = scorer.features(norm)
            if len(ids) == 0:
                return self._fallback(lang, lang_confidence)
            p = scorer.proba(ids, vals)
            order = np.argsort(-p, kind="stable")[:TOP_K]
            ranking = tuple((scorer.classes[i], float(p[i])) for i in order)
            return Prediction(lang=lang, intent=ranking[0][0], confidence=ranking[0][1], ranking=ranking,
                              lang_confidence=lang_confidence)  # fmt: skip
        except Exception as exc:
            # Class name only: exception messages can quote the patient's text.
            log.error("intent prediction failed (%s)", exc.__class__.__name__)
            return self._fallback(lang, lang_confidence)


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def _fit_scorer(*, examples: Sequence[Example], config: ModelConfig) -> tuple[_Scorer, _SklearnParts]:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import LinearSVC

    counts = Counter(e.intent for e in examples)
    if len(counts) < 2:
        raise DialoguesError(f"training data has {len(counts)} intent(s); need at least 2")
    smallest = min(counts.values())
    if smallest < 2:
        rare = sorted(i for i, n in counts.items() if n < 2)
        raise DialoguesError(f"intent(s) {rare} need at least 2 training examples")
    norms = [normalize_for_intent(e.text) for e in examples]
    # Integer labels: CalibratedClassifierCV label-encodes strings only for some methods.
    labels = sorted(counts)
    y = np.array([labels.index(e.intent) for e in examples])
    vectorizers = [
        make_vectorizer(
            kind="char_wb", lo=config.char_range[0], hi=config.char_range[1], min_df=config.min_df
        )
    ]
    if config.word_range is not None:
        vectorizers.append(
            make_vectorizer(
                kind="word", lo=config.word_range[0], hi=config.word_range[1], min_df=config.min_df
            )
        )
    from scipy import sparse

    x = sparse.hstack([v.fit_transform(norms) for v in vectorizers], format="csr")  # type: ignore[attr-defined]
    if config.clf == "svc":
        base: Any = LinearSVC(C=config.c, random_state=0)
    elif config.clf == "lr":
        base = LogisticRegression(C=config.c, max_iter=3000, random_state=0)
    else:
        raise ValueError(f"unknown classifier {config.clf!r}")
    # Every fold must see every intent, or the fast path's class columns would not line up.
    splitter = StratifiedKFold(n_splits=min(config.cv, smallest), shuffle=True, random_state=0)
    calibrated = CalibratedClassifierCV(base, method=config.calibration, cv=splitter, ensemble=True)
    calibrated.fit(x, y)
    blocks = tuple(TfidfBlock.from_vectorizer(v) for v in vectorizers)
    scorer = _Scorer.from_sklearn(blocks=blocks, calibrated=calibrated, labels=labels)
    return scorer, _SklearnParts(vectorizers, calibrated)


def fit_model(
    *, examples: Sequence[Example], config: ModelConfig = DEFAULT_CONFIG, trained_on: str = ""
) -> IntentModel:
    """Fit language and intent models on examples (exposed for cross-validation)."""
    groups: dict[str, list[Example]] = {"*": list(examples)}
    if config.per_language:
        groups = {lang: [e for e in examples if e.lang == lang] for lang in LANGS}
        groups = {k: v for k, v in groups.items() if v}
    scorers: dict[str, _Scorer] = {}
    parts: dict[str, _SklearnParts] = {}
    for key, group in groups.items():
        scorers[key], parts[key] = _fit_scorer(examples=group, config=config)
    model = IntentModel(
        scorers=scorers,
        language=train_language_model(examples=examples),
        trained_on=trained_on,
        config=config,
        n_examples=len(examples),
    )
    model.sklearn = parts
    return model


def train(*, root: Path) -> IntentModel:
    """Fit the intent model from dialogues/ training files only."""
    started = time.perf_counter()
    # Fingerprint first: if files change mid-load, the next start sees a new fingerprint and retrains.
    fp = fingerprint(root=root)
    examples = load_training(root=root)
    model = fit_model(examples=examples, trained_on=fp)
    log.info(
        "trained intent model fp=%s examples=%d intents=%d in %.2fs",
        fp[:16],
        len(examples),
        len(model.intents),
        time.perf_counter() - started,
    )
    return model


def _cache_path(*, cache_dir: Path, fp: str) -> Path:
    return cache_dir / f"{_CACHE_PREFIX}{fp[:16]}{_CACHE_SUFFIX}"


def _load_cached(*, path: Path, fp: str) -> IntentModel | None:
    import joblib

    if not path.is_file():
        return None
    try:
        # Pickle: cache_dir must be as trusted as the code (it is written only by this process).
        model = joblib.load(path)
    except Exception as exc:  # corrupt/truncated/incompatible cache: retrain instead
        log.warning("ignoring unreadable model cache %s (%s)", path.name, exc.__class__.__name__)
        return None
    if (
        not isinstance(model, IntentModel)
        or getattr(model, "format", None) != MODEL_FORMAT
        or getattr(model, "trained_on", None) != fp
        or getattr(model, "config", None) != DEFAULT_CONFIG
    ):
        log.info("model cache %s is stale; retraining", path.name)
        return None
    return model


def _write_cache(*, model: IntentModel, path: Path) -> None:
    import joblib

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX, suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            joblib.dump(model, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale(*, cache_dir: Path, keep: Path) -> None:
    now = time.time()
    for p in cache_dir.glob(f"{_CACHE_PREFIX}*{_CACHE_SUFFIX}"):
        if p.name != keep.name:
            p.unlink(missing_ok=True)
    for p in cache_dir.glob(f"{_TMP_PREFIX}*.tmp"):
        # Young temp files may belong to a concurrent writer.
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                p.unlink(missing_ok=True)
        except OSError:
            pass


def load_or_train(*, root: Path, cache_dir: Path) -> IntentModel:
    """Return the cached model for the current dialogues/, retraining (and re-caching) when they changed."""
    fp = fingerprint(root=root)
    path = _cache_path(cache_dir=cache_dir, fp=fp)
    model = _load_cached(path=path, fp=fp)
    if model is None:
        model = train(root=root)
        try:
            # Cache under the fingerprint the model was actually trained on.
            path = _cache_path(cache_dir=cache_dir, fp=model.trained_on)
            _write_cache(model=model, path=path)
            log.info("cached intent model as %s", path.name)
        except OSError as exc:  # a read-only cache only costs a retrain next start
            log.warning("could not write model cache in %s (%s)", cache_dir, exc.__class__.__name__)
            return model
    try:
        _remove_stale(cache_dir=cache_dir, keep=path)
    except OSError as exc:
        log.warning("could not prune model cache (%s)", exc.__class__.__name__)
    return model


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def expected_calibration_error(
    *, confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """Return ECE of top-1 confidence over equal-width bins."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(hit[mask].mean() - conf[mask].mean())
    return float(ece)


def evaluate(*, model: IntentModel, examples: list[Example]) -> dict[str, Any]:
    """Return intent accuracy (overall, per lang), per-intent precision/recall, ECE and top confusions."""
    preds = [model.predict(e.text) for e in examples]
    gold = [e.intent for e in examples]
    guess = [p.intent for p in preds]
    correct = [g == p for g, p in zip(gold, guess, strict=True)]
    lang_ok = [p.lang == e.lang for p, e in zip(preds, examples, strict=True)]

    def _rate(flags: Sequence[bool]) -> float:
        return float(sum(flags) / len(flags)) if flags else float("nan")

    by_lang: dict[str, float] = {}
    lang_by_lang: dict[str, float] = {}
    n_by_lang: dict[str, int] = {}
    for lang in sorted({e.lang for e in examples}):
        idx = [i for i, e in enumerate(examples) if e.lang == lang]
        n_by_lang[lang] = len(idx)
        by_lang[lang] = _rate([correct[i] for i in idx])
        lang_by_lang[lang] = _rate([lang_ok[i] for i in idx])
    per_intent: dict[str, dict[str, float]] = {}
    for intent in sorted(set(gold) | set(guess)):
        tp = sum(g == intent and p == intent for g, p in zip(gold, guess, strict=True))
        n_pred = sum(p == intent for p in guess)
        n_gold = sum(g == intent for g in gold)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_intent[intent] = {"precision": precision, "recall": recall, "f1": f1, "support": n_gold}
    confusions = Counter((g, p) for g, p in zip(gold, guess, strict=True) if g != p)
    supported = [v["f1"] for v in per_intent.values() if v["support"]]
    return {
        "n": len(examples),
        "n_by_lang": n_by_lang,
        "accuracy": _rate(correct),
        "accuracy_by_lang": by_lang,
        "macro_f1": float(np.mean(supported)) if supported else float("nan"),
        "language_accuracy": _rate(lang_ok),
        "language_accuracy_by_lang": lang_by_lang,
        "ece": expected_calibration_error(confidences=[p.confidence for p in preds], correct=correct),
        "mean_confidence": float(np.mean([p.confidence for p in preds])) if preds else float("nan"),
        "per_intent": per_intent,
        "confusions": [(g, p, n) for (g, p), n in confusions.most_common(10)],
    }
