"""Tests for language detection and the shared text features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bot.nlu import language as lang_mod
from bot.nlu.data import Example, load_heldout, load_training
from bot.nlu.language import (
    LanguageModel,
    TfidfBlock,
    char_wb_ngrams,
    detect_language,
    make_vectorizer,
    normalize_for_intent,
    normalize_for_language,
    sanitize,
    train_language_model,
)

REPO = Path(__file__).resolve().parents[2]
DIALOGUES = REPO / "dialogues"

SMALL_TRAINING = [
    Example(text=t, intent="x", lang="en")
    for t in [
        "what time do you open",
        "i need an appointment",
        "can you refill my prescription",
        "thank you so much",
        "where is the clinic",
        "i want to talk to a person",
        "my test results please",
        "how much do i owe",
    ]
] + [
    Example(text=t, intent="x", lang="es")
    for t in [
        "a qué hora abren",
        "necesito una cita",
        "me pueden renovar la receta",
        "muchas gracias",
        "dónde está la clínica",
        "quiero hablar con una persona",
        "mis resultados por favor",
        "cuánto debo",
    ]
]

SHORT_CASES = [
    ("hola", "es"),
    ("Hola!", "es"),
    ("gracias", "es"),
    ("muchas gracias", "es"),
    ("cita", "es"),
    ("receta", "es"),
    ("sí", "es"),
    ("buenos días", "es"),
    ("¿?", "en"),
    ("ok", "en"),
    ("OK", "en"),
    ("okay thanks", "en"),
    ("hi", "en"),
    ("hello", "en"),
    ("thanks", "en"),
    ("yes", "en"),
    ("no", "en"),
    ("doctor", "en"),
    ("", "en"),
    ("   ", "en"),
    ("🙂", "en"),
    ("👍🏽", "en"),
    ("12345", "en"),
    ("\udcff", "en"),
    ("hi necesito una cita", "es"),
    ("what time do you open tomorrow", "en"),
    ("¿a qué hora abren mañana?", "es"),
    ("necesito renovar mi receta", "es"),
    ("can i get my lab results", "en"),
]


@pytest.fixture(scope="module")
def small_model() -> LanguageModel:
    return train_language_model(examples=SMALL_TRAINING)


@pytest.mark.parametrize(("text", "expected"), SHORT_CASES)
def test_short_messages_with_cue_rules_only(text: str, expected: str) -> None:
    lang, prob = LanguageModel(block=None, coef=None, intercept=0.0).detect(text)
    assert lang == expected
    assert 0.5 <= prob <= 1.0


@pytest.mark.parametrize(("text", "expected"), SHORT_CASES)
def test_short_messages_with_small_model(small_model: LanguageModel, text: str, expected: str) -> None:
    lang, prob = small_model.detect(text)
    assert lang == expected
    assert 0.5 <= prob <= 1.0


@pytest.mark.parametrize(("text", "expected"), SHORT_CASES)
def test_detect_language_default_model(text: str, expected: str) -> None:
    lang, prob = detect_language(text)
    assert lang == expected
    assert 0.5 <= prob <= 1.0


def test_empty_and_symbols_are_uncertain_english() -> None:
    for text in ["", "🙂", "...", "\x00"]:
        assert detect_language(text) == ("en", 0.5)


@pytest.mark.parametrize("text", ["a" * 10_000, "\udcff" * 50, "\x00\x1f\x7f", "ñ" * 2000, "中文", None, 42])
def test_detect_language_never_raises(text: object) -> None:
    lang, prob = detect_language(text)  # type: ignore[arg-type]
    assert lang in ("en", "es")
    assert 0.5 <= prob <= 1.0


def test_install_language_model(monkeypatch: pytest.MonkeyPatch, small_model: LanguageModel) -> None:
    monkeypatch.setattr(lang_mod, "_default_model", None)
    lang_mod.install_language_model(small_model)
    assert lang_mod._get_default() is small_model


def test_default_model_falls_back_to_cues_without_dialogues(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lang_mod, "_default_model", None)
    monkeypatch.setattr(lang_mod, "DEFAULT_ROOT", tmp_path / "nowhere")
    assert detect_language("necesito una cita")[0] == "es"
    assert lang_mod._get_default().block is None


def test_language_accuracy_on_heldout() -> None:
    if not (DIALOGUES / "heldout" / "en.yml").is_file():
        pytest.skip("dialogues/heldout/en.yml does not exist yet (training data still being written)")
    model = train_language_model(examples=load_training(root=DIALOGUES))
    heldout = load_heldout(root=DIALOGUES)
    hits = [model.detect(e.text)[0] == e.lang for e in heldout]
    accuracy = sum(hits) / len(hits)
    assert accuracy >= 0.97, f"language accuracy {accuracy:.3f} on {len(hits)} held-out examples"


# --------------------------------------------------------------------------- shared features


def test_sanitize_and_normalize() -> None:
    assert sanitize("a\udcffb\x00c") == "a b c"
    assert len(sanitize("x" * 5000)) == 1000
    assert sanitize(None) == ""
    assert normalize_for_intent("¿Cuándo   ABREN? Holaaaaa ’til 2024") == "¿cuando abren? holaa 'til 0000"
    assert normalize_for_language("¿Cuándo ABREN?") == "¿cuándo abren?"
    assert normalize_for_intent("\u200b\ufeff") == ""


@pytest.mark.parametrize(
    "text", ["what time do you open", "a", "  spaced   out  ", "¿qué? ok!", "", "x" * 40]
)
def test_char_wb_matches_sklearn(text: str) -> None:
    from sklearn.feature_extraction.text import CountVectorizer

    reference = CountVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=False).build_analyzer()
    assert char_wb_ngrams(text, 2, 5) == reference(text)


def test_tfidf_block_matches_sklearn_transform() -> None:
    corpus = [normalize_for_intent(e.text) for e in SMALL_TRAINING]
    for kind, lo, hi in (("char_wb", 2, 5), ("word", 1, 2)):
        vectorizer = make_vectorizer(kind=kind, lo=lo, hi=hi)
        vectorizer.fit(corpus)  # type: ignore[attr-defined]
        block = TfidfBlock.from_vectorizer(vectorizer)
        for text in corpus + ["unseen words entirely", "necesito necesito necesito cita"]:
            dense = vectorizer.transform([text]).toarray()[0]  # type: ignore[attr-defined]
            ids, vals = block.transform_one(text)
            fast = np.zeros_like(dense)
            fast[ids] = vals
            np.testing.assert_allclose(fast, dense, atol=1e-12)


def test_tfidf_block_word_memo_changes_no_feature() -> None:
    corpus = [normalize_for_intent(e.text) for e in SMALL_TRAINING]
    vectorizer = make_vectorizer(kind="char_wb", lo=2, hi=5)
    vectorizer.fit(corpus)  # type: ignore[attr-defined]
    block = TfidfBlock.from_vectorizer(vectorizer)
    texts = corpus + ["necesito necesito necesito cita", "  cita  ", "a", "", "x" * 200 + " cita"]
    for text in texts:
        # The reference: every n-gram of the whole text looked up in turn, ids in first-occurrence order.
        counts: dict[int, int] = {}
        for gram in char_wb_ngrams(text, 2, 5):
            if gram in block.vocab:
                counts[block.vocab[gram]] = counts.get(block.vocab[gram], 0) + 1
        for _ in ("cold", "warm"):
            ids, vals = block.transform_one(text)
            assert ids.tolist() == list(counts)
            tf = np.log(np.array(list(counts.values()), dtype=np.float64)) + 1.0
            expected = tf * block.idf[ids]
            assert vals.tobytes() == (expected / np.sqrt(expected @ expected)).tobytes()
    assert "x" * 200 not in block._memo  # long words are not kept


def test_tfidf_block_pickles_without_its_memo() -> None:
    import pickle

    vectorizer = make_vectorizer(kind="char_wb", lo=2, hi=5)
    vectorizer.fit([normalize_for_intent(e.text) for e in SMALL_TRAINING])  # type: ignore[attr-defined]
    block = TfidfBlock.from_vectorizer(vectorizer)
    block.transform_one("necesito una cita")
    assert block._memo
    state = block.__getstate__()
    assert state == (None, {"analyzer": block.analyzer, "vocab": block.vocab, "idf": block.idf, "sublinear": True})
    copy = pickle.loads(pickle.dumps(block))
    assert copy._memo == {}
    assert [a.tobytes() for a in copy.transform_one("necesito una cita")] == [
        a.tobytes() for a in block.transform_one("necesito una cita")
    ]
