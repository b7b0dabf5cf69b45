"""Benchmark the embedded intent classifier: train time, latency, held-out accuracy, calibration.

Usage:
    python bench/bench_classifier.py [--out FILE] [--root DIR] [--compare]

--compare additionally cross-validates alternative configurations on the
TRAINING data only (never the held-out set) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bot.nlu.classifier import DEFAULT_CONFIG, ModelConfig, evaluate, fit_model, train  # noqa: E402
from bot.nlu.data import Example, load_heldout, load_training  # noqa: E402

DEFAULT_ROOT = REPO / "dialogues"
REPEATS = 20


def _percentile_us(samples_ns: Sequence[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q)) / 1000.0


def run(*, root: Path = DEFAULT_ROOT, repeats: int = REPEATS) -> list[tuple[str, str]]:
    """Train, then measure latency and held-out quality; return (metric, value) rows."""
    started = time.perf_counter()
    model = train(root=root)
    train_s = time.perf_counter() - started
    heldout = load_heldout(root=root)
    rows: list[tuple[str, str]] = [
        ("config", _describe(DEFAULT_CONFIG)),
        ("training examples", str(model.n_examples)),
        ("train time (s)", f"{train_s:.2f}"),
    ]
    if not heldout:
        rows.append(("held-out examples", "0 (dialogues/heldout missing)"))
        return rows
    texts = [e.text for e in heldout]
    for t in texts[:50]:  # warm caches before timing
        model.predict(t)
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for t in texts:
            t0 = clock()
            model.predict(t)
            samples.append(clock() - t0)
    report = evaluate(model=model, examples=heldout)
    rows += [
        (
            "held-out examples",
            f"{report['n']} ({', '.join(f'{k}={v}' for k, v in report['n_by_lang'].items())})",
        ),
        ("predict latency p50 (µs)", f"{_percentile_us(samples, 50):.0f}"),
        ("predict latency p99 (µs)", f"{_percentile_us(samples, 99):.0f}"),
        ("intent accuracy (all)", f"{report['accuracy']:.3f}"),
    ]
    rows += [(f"intent accuracy ({k})", f"{v:.3f}") for k, v in report["accuracy_by_lang"].items()]
    rows += [
        ("intent macro-F1", f"{report['macro_f1']:.3f}"),
        ("language accuracy", f"{report['language_accuracy']:.3f}"),
        ("ECE (10 bins)", f"{report['ece']:.3f}"),
        ("mean confidence", f"{report['mean_confidence']:.3f}"),
        ("top confusions", "; ".join(f"{g}→{p}×{n}" for g, p, n in report["confusions"][:5]) or "-"),
    ]
    return rows


def _describe(config: ModelConfig) -> str:
    word = "none" if config.word_range is None else f"{config.word_range[0]}-{config.word_range[1]}"
    return (
        f"{config.clf} C={config.c} {config.calibration} char={config.char_range[0]}-{config.char_range[1]} "
        f"word={word} min_df={config.min_df} {'per-lang' if config.per_language else 'joint'}"
    )


def cross_validate(*, examples: Sequence[Example], config: ModelConfig, folds: int = 5) -> dict[str, float]:
    """Return mean CV accuracy (all/en/es), ECE and fit time for a config on training data."""
    from sklearn.model_selection import StratifiedKFold

    strata = [f"{e.intent}/{e.lang}" for e in examples]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=1)
    acc: list[float] = []
    acc_lang: dict[str, list[float]] = {}
    ece: list[float] = []
    fit_s: list[float] = []
    lang_acc: list[float] = []
    for train_idx, test_idx in splitter.split(np.zeros(len(examples)), strata):
        t0 = time.perf_counter()
        model = fit_model(examples=[examples[i] for i in train_idx], config=config)
        fit_s.append(time.perf_counter() - t0)
        report = evaluate(model=model, examples=[examples[i] for i in test_idx])
        acc.append(report["accuracy"])
        ece.append(report["ece"])
        lang_acc.append(report["language_accuracy"])
        for k, v in report["accuracy_by_lang"].items():
            acc_lang.setdefault(k, []).append(v)
    out = {"acc": float(np.mean(acc)), "ece": float(np.mean(ece)), "fit_s": float(np.mean(fit_s))}
    out["lang_acc"] = float(np.mean(lang_acc))
    out |= {f"acc_{k}": float(np.mean(v)) for k, v in acc_lang.items()}
    return out


_R = dataclasses.replace
CANDIDATES: tuple[ModelConfig, ...] = (
    DEFAULT_CONFIG,
    _R(DEFAULT_CONFIG, calibration="sigmoid"),
    _R(DEFAULT_CONFIG, calibration="isotonic"),
    _R(DEFAULT_CONFIG, c=0.1),
    _R(DEFAULT_CONFIG, c=2.0),
    _R(DEFAULT_CONFIG, word_range=None),
    _R(DEFAULT_CONFIG, word_range=(1, 3)),
    _R(DEFAULT_CONFIG, char_range=(1, 4)),
    _R(DEFAULT_CONFIG, char_range=(3, 5)),
    _R(DEFAULT_CONFIG, min_df=2),
    _R(DEFAULT_CONFIG, per_language=True),
    _R(DEFAULT_CONFIG, clf="lr", c=20.0),
)


def compare(*, root: Path = DEFAULT_ROOT, configs: Sequence[ModelConfig] = CANDIDATES) -> list[list[str]]:
    """Cross-validate candidate configs on the training data; return table rows."""
    examples = load_training(root=root)
    table = []
    for config in configs:
        r = cross_validate(examples=examples, config=config)
        table.append(
            [
                _describe(config),
                f"{r['acc']:.3f}",
                f"{r.get('acc_en', float('nan')):.3f}",
                f"{r.get('acc_es', float('nan')):.3f}",
                f"{r['ece']:.3f}",
                f"{r['lang_acc']:.3f}",
                f"{r['fit_s']:.2f}",
            ]
        )
        print(" | ".join(table[-1]), file=sys.stderr, flush=True)
    return table


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print markdown tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="append the markdown tables to this file")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="dialogues/ directory")
    parser.add_argument("--compare", action="store_true", help="also cross-validate alternative configs")
    args = parser.parse_args(argv)
    text = "## Intent classifier benchmark\n\n" + _markdown(["metric", "value"], run(root=args.root))
    if args.compare:
        header = [
            "config (5-fold CV on training data)",
            "acc",
            "acc en",
            "acc es",
            "ECE",
            "lang acc",
            "fit s",
        ]
        text += "\n### Cross-validated alternatives\n\n" + _markdown(header, compare(root=args.root))
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
