"""Detect whether a message is English or Spanish, and share text features with the intent model."""

from __future__ import annotations

import logging
import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path

import numpy as np

from bot.nlu.data import Example, load_training

log = logging.getLogger(__name__)

MAX_CHARS = 1000
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "dialogues"

# ---------------------------------------------------------------------------
# Text cleaning shared by the language and intent models.
# ---------------------------------------------------------------------------

# Control chars, lone surrogates, zero-width/bidi marks: never meaningful, and
# surrogates make str.encode() raise further down the stack.
_JUNK_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_APOSTROPHES = str.maketrans({c: "'" for c in "\u2018\u2019\u201b\u0060\u00b4\u02bc\u02b9\u2032\uff07"})
_COMBINING_RE = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_REPEAT_RE = re.compile(r"([^\W\d_]|[^\w\s])\1{2,}")
_DIGIT_RE = re.compile(r"\d")
_SPACE_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def sanitize(text: object) -> str:
    """Return text truncated to MAX_CHARS with control chars and lone surrogates blanked."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return _JUNK_RE.sub(" ", text[:MAX_CHARS])


def _common(text: str) -> str:
    text = text.translate(_APOSTROPHES)
    text = _DIGIT_RE.sub("0", text)
    # "holaaaa" and "hola" should share n-grams; keep two so "ll"/"ee" survive.
    text = _REPEAT_RE.sub(r"\1\1", text)
    return _SPACE_RE.sub(" ", text).strip()


def normalize_for_language(text: object) -> str:
    """Normalise text for language detection, keeping diacritics (they are evidence)."""
    return _common(unicodedata.normalize("NFC", sanitize(text)).casefold())


def normalize_for_intent(text: object) -> str:
    """Normalise text for intent features: lowercase, accents stripped, digits as 0."""
    text = unicodedata.normalize("NFKD", sanitize(text).translate(_APOSTROPHES))
    return _common(_COMBINING_RE.sub("", text).casefold())


def strip_accents(text: str) -> str:
    """Remove combining diacritics from text."""
    return _COMBINING_RE.sub("", unicodedata.normalize("NFKD", text))


def words(text: str) -> list[str]:
    """Return word tokens (letters/digits, inner apostrophes kept)."""
    return _WORD_RE.findall(text)


# ---------------------------------------------------------------------------
# Analyzers: module-level so vectorizers using them pickle, and so the numpy
# fast path and sklearn's TfidfVectorizer see exactly the same features.
# ---------------------------------------------------------------------------


def char_wb_ngrams(text: str, lo: int, hi: int) -> list[str]:
    """Return word-bounded char n-grams, identical to sklearn's analyzer="char_wb"."""
    grams: list[str] = []
    append = grams.append
    for w in text.split():
        w = " " + w + " "
        w_len = len(w)
        for n in range(lo, hi + 1):
            offset = 0
            append(w[offset : offset + n])
            while offset + n < w_len:
                offset += 1
                append(w[offset : offset + n])
            if offset == 0:
                break
    return grams


def word_ngrams(text: str, lo: int, hi: int) -> list[str]:
    """Return word n-grams of lengths lo..hi."""
    tokens = words(text)
    grams: list[str] = []
    for n in range(lo, hi + 1):
        grams.extend(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return grams


ANALYZERS: dict[str, Callable[[str, int, int], list[str]]] = {"char_wb": char_wb_ngrams, "word": word_ngrams}


class Analyzer:
    """Picklable analyzer callable: kind ("char_wb"|"word") and n-gram range."""

    __slots__ = ("kind", "lo", "hi")

    def __init__(self, *, kind: str, lo: int, hi: int) -> None:
        if kind not in ANALYZERS:
            raise ValueError(f"unknown analyzer kind {kind!r}")
        self.kind, self.lo, self.hi = kind, lo, hi

    def __call__(self, text: str) -> list[str]:
        return ANALYZERS[self.kind](text, self.lo, self.hi)

    def __getstate__(self) -> tuple[str, int, int]:
        return (self.kind, self.lo, self.hi)

    def __setstate__(self, state: tuple[str, int, int]) -> None:
        self.kind, self.lo, self.hi = state

    def __repr__(self) -> str:
        return f"Analyzer(kind={self.kind!r}, lo={self.lo}, hi={self.hi})"


# Per-block memo of word -> in-vocabulary feature ids of its char_wb n-grams. Words recur across messages,
# so most n-grams are sliced and looked up once per word, not once per message; bounded (a few MB) so odd
# input cannot grow it.
_MEMO_WORDS = 8192
_MEMO_WORD_CHARS = 24


class TfidfBlock:
    """Frozen tf-idf vocabulary; transforms one text without sklearn's per-call overhead."""

    __slots__ = ("analyzer", "vocab", "idf", "sublinear", "_memo")

    def __init__(
        self, *, analyzer: Analyzer, vocab: dict[str, int], idf: np.ndarray, sublinear: bool
    ) -> None:
        self.analyzer = analyzer
        self.vocab = vocab
        self.idf = np.asarray(idf, dtype=np.float64)
        self.sublinear = sublinear
        self._memo: dict[str, tuple[int, ...]] = {}

    def __getstate__(self) -> tuple[None, dict[str, object]]:
        # The layout pickle wrote before the memo existed, so cached models still load and MODEL_FORMAT stands.
        return None, {"analyzer": self.analyzer, "vocab": self.vocab, "idf": self.idf, "sublinear": self.sublinear}

    def __setstate__(self, state: tuple[None, dict[str, object]]) -> None:
        for name, value in state[1].items():
            setattr(self, name, value)
        self._memo = {}

    @classmethod
    def from_vectorizer(cls, vectorizer: object) -> TfidfBlock:
        """Copy the fitted state out of a sklearn TfidfVectorizer built with an Analyzer."""
        return cls(
            analyzer=vectorizer.analyzer,  # type: ignore[attr-defined]
            vocab={str(k): int(v) for k, v in vectorizer.vocabulary_.items()},  # type: ignore[attr-defined]
            idf=vectorizer.idf_,  # type: ignore[attr-defined]
            sublinear=bool(vectorizer.sublinear_tf),  # type: ignore[attr-defined]
        )

    @property
    def size(self) -> int:
        """Return the number of features."""
        return len(self.idf)

    def _word_ids(self, word: str) -> tuple[int, ...]:
        """Return the in-vocabulary feature ids of one word's char_wb n-grams, in n-gram order, memoised."""
        found = self._memo.get(word)
        if found is None:
            vocab = self.vocab
            found = tuple([j for j in map(vocab.get, self.analyzer(word)) if j is not None])
            if len(word) <= _MEMO_WORD_CHARS:
                if len(self._memo) >= _MEMO_WORDS:
                    self._memo.clear()
                self._memo[word] = found
        return found

    def transform_one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (feature ids, l2-normalised tf-idf values) for one normalised text."""
        counts: Counter[int | None]
        if self.analyzer.kind == "char_wb":
            # char_wb n-grams never cross a space: a text's n-grams are its words' n-grams, word by word.
            counts = Counter(chain.from_iterable(map(self._word_ids, text.split())))
        else:
            counts = Counter(map(self.vocab.get, self.analyzer(text)))
            counts.pop(None, None)  # out-of-vocabulary n-grams
        # A Counter keeps its keys in order of first occurrence, so the sums below add in n-gram order.
        if not counts:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        ids = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self.sublinear:
            tf = np.log(tf) + 1.0
        vals = tf * self.idf[ids]
        norm = math.sqrt(float(vals @ vals))
        return ids, vals / norm


def make_vectorizer(*, kind: str, lo: int, hi: int, min_df: int = 1) -> object:
    """Return an unfitted sklearn TfidfVectorizer over one of our analyzers."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer=Analyzer(kind=kind, lo=lo, hi=hi), sublinear_tf=True, min_df=min_df, dtype=np.float64
    )


# ---------------------------------------------------------------------------
# Language detection.
# ---------------------------------------------------------------------------

_ES_CHARS = frozenset("ñáéíóúü¿¡")
# Accent-stripped words that are (nearly) never English: Spanish evidence even in
# one-word messages. Deliberately excludes homographs like "me", "son", "hay", "no".
_ES_WORDS = frozenset(
    """
    hola gracias cita citas receta recetas necesito quiero quisiera puedo puede pueden podria tengo tiene
    tienen estoy esta estan el la los las del al de que y en por para con una unos unas mi mis su sus
    te se le lo nos como cuando donde cual cuales cuanto cuanta porque pero muy mas bien buenos buenas
    dias tardes noches si senor senora senorita usted ustedes ayuda favor hacer hoy manana ayer semana
    medico medica doctora consulta clinica horario abren cierran factura pago resultados analisis dolor
    llamar hablar cancelar cambiar vale claro adios bueno buen tambien algo ahora jaja jajaja holi
    """.split()  # noqa: SIM905 - a word list reads better as prose
)
# Words common in both languages: alone they are no evidence, so they fall back to "en".
_AMBIGUOUS = frozenset(
    """
    no ok okay doctor hospital portal menu normal general final total hotel radio error chat email
    covid mri sos
    """.split()  # noqa: SIM905 - a word list reads better as prose
)
_EN_WORDS = frozenset(
    """
    the and is are am my i i'm im you your to of for what when where how can could would should need want
    have has do does did hi hello hey thanks thank ok okay yes please with this that it in on at be will
    get not don't dont morning afternoon evening who which there here about from just
    """.split()  # noqa: SIM905 - a word list reads better as prose
)
_LETTER_RE = re.compile(r"[^\W\d_]")
_CUE_WEIGHT = 1.2
_ES_CHAR_WEIGHT = 2.0
_EN_PRIOR = 0.0
_SHORT_EN_PRIOR = 0.5  # extra pull towards "en" for <= 2 words without Spanish cues (CV-tuned)
_AMBIGUOUS_CAP = -0.5  # log-odds cap when every word is English or ambiguous


class LanguageModel:
    """Char n-gram logistic model for en-vs-es plus Spanish function-word/diacritic cues."""

    __slots__ = ("block", "coef", "intercept")

    def __init__(self, *, block: TfidfBlock | None, coef: np.ndarray | None, intercept: float) -> None:
        self.block = block
        self.coef = coef
        self.intercept = intercept

    def model_logit(self, norm: str) -> float:
        """Return the n-gram model's log-odds of Spanish for normalised text (0 without a model)."""
        if self.block is None or self.coef is None:
            return 0.0
        ids, vals = self.block.transform_one(norm)
        return float(vals @ self.coef[ids]) + self.intercept

    def detect(self, text: str) -> tuple[str, float]:
        """Return ("en"|"es", probability of that language) for raw text; never raises."""
        norm = normalize_for_language(text)
        if not _LETTER_RE.search(norm):
            return "en", 0.5
        tokens = words(norm)
        # ASCII has nothing to strip (NFKD leaves it as it is): most tokens skip the Unicode pass.
        plain = [t if t.isascii() else strip_accents(t) for t in tokens]
        n_es = sum(t in _ES_WORDS for t in plain)
        n_en = sum(t in _EN_WORDS for t in plain)
        has_es_chars = not _ES_CHARS.isdisjoint(norm)
        z = self.model_logit(norm)
        z += _CUE_WEIGHT * (n_es - n_en) + (_ES_CHAR_WEIGHT if has_es_chars else 0.0) - _EN_PRIOR
        if n_es == 0 and not has_es_chars:
            if len(tokens) <= 2:
                z -= _SHORT_EN_PRIOR
            if all(t in _AMBIGUOUS or t in _EN_WORDS for t in plain):
                z = min(z, _AMBIGUOUS_CAP)
        z = max(-30.0, min(30.0, z))
        p_es = 1.0 / (1.0 + math.exp(-z))
        return ("es", p_es) if p_es > 0.5 else ("en", 1.0 - p_es)


def train_language_model(*, examples: Sequence[Example], c: float = 10.0) -> LanguageModel:
    """Fit the en-vs-es n-gram model on training examples (label = example language)."""
    from sklearn.linear_model import LogisticRegression

    texts = [normalize_for_language(e.text) for e in examples]
    y = np.array([1 if e.lang == "es" else 0 for e in examples])
    if len(set(y.tolist())) < 2:
        return LanguageModel(block=None, coef=None, intercept=0.0)
    vectorizer = make_vectorizer(kind="char_wb", lo=1, hi=4)
    x = vectorizer.fit_transform(texts)  # type: ignore[attr-defined]
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=0)
    clf.fit(x, y)
    return LanguageModel(
        block=TfidfBlock.from_vectorizer(vectorizer),
        coef=np.ascontiguousarray(clf.coef_[0], dtype=np.float64),
        intercept=float(clf.intercept_[0]),
    )


_default_lock = threading.Lock()
_default_model: LanguageModel | None = None


def install_language_model(model: LanguageModel) -> None:
    """Make detect_language() use this model (e.g. the one inside the loaded IntentModel)."""
    global _default_model
    with _default_lock:
        _default_model = model


def _get_default() -> LanguageModel:
    global _default_model
    with _default_lock:
        if _default_model is None:
            try:
                _default_model = train_language_model(examples=load_training(root=DEFAULT_ROOT))
            except Exception as exc:  # missing/bad dialogues must not break detection
                log.warning("language model unavailable (%s); using cue rules only", exc.__class__.__name__)
                _default_model = LanguageModel(block=None, coef=None, intercept=0.0)
        return _default_model


def detect_language(text: str) -> tuple[str, float]:
    """Return ("en"|"es", probability); short or ambiguous text defaults to "en"."""
    try:
        return _get_default().detect(text)
    except Exception as exc:  # detection is advisory; never take the conversation down
        # Class name only: exception messages can quote the patient's text.
        log.error("language detection failed (%s)", exc.__class__.__name__)
        return "en", 0.5
