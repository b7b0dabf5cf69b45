"""Load Rasa 3.x NLU training and held-out examples from dialogues/."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LANGS: tuple[str, ...] = ("en", "es")

# Rasa entity markup: [text](entity), [text](entity:value), [text]{"entity": ...}.
_ENTITY_RE = re.compile(r"\[([^\[\]]+)\](?:\([^()]*\)|\{[^{}]*\})")
_SPACE_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled utterance."""

    text: str
    intent: str
    lang: str


class DialoguesError(ValueError):
    """Bad dialogues file; message names file and problem (and intent/line when known)."""


def strip_entities(text: str) -> str:
    """Replace Rasa entity markup with its surface text."""
    return _ENTITY_RE.sub(r"\1", text)


def _item_lines(text: str) -> list[int]:
    """Return the 1-based start line of every item of the top-level `nlu` list."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "nlu" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _example_texts(raw: Any, *, where: str) -> list[str]:
    """Return example strings from a block scalar or a list (Rasa allows both)."""
    texts: list[str] = []
    if isinstance(raw, str):
        for offset, line in enumerate(raw.splitlines()):
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("-"):
                raise DialoguesError(
                    f"{where}: example line {offset + 1} does not start with '- ': {stripped[:40]!r}"
                )
            texts.append(stripped[1:].strip())
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, dict):
                entry = entry.get("text")
            if not isinstance(entry, str):
                raise DialoguesError(f"{where}: example entries must be strings or {{text: ...}} mappings")
            texts.append(entry.strip())
    else:
        raise DialoguesError(f"{where}: 'examples' must be a block string of '- ...' lines")
    return texts


def load_examples(*, path: Path, lang: str) -> list[Example]:
    """Load labelled examples from one Rasa NLU YAML file."""
    if lang not in LANGS:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGS}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DialoguesError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DialoguesError(f"{path}: cannot read ({exc.__class__.__name__})") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise DialoguesError(f"{path}:{line} invalid YAML ({problem})") from exc
    if not isinstance(doc, dict) or "nlu" not in doc:
        raise DialoguesError(f"{path}: missing top-level 'nlu' key")
    items = doc["nlu"]
    if not isinstance(items, list):
        raise DialoguesError(f"{path}: 'nlu' must be a list of '- intent: ...' items")
    lines = _item_lines(text)
    seen: dict[str, str] = {}
    examples: list[Example] = []
    for index, item in enumerate(items):
        line = lines[index] if index < len(lines) else None
        at = f"{path}:{line}" if line else f"{path}: item {index + 1}"
        # synonym/regex/lookup items are legal Rasa but irrelevant to intents.
        if not isinstance(item, dict) or "intent" not in item:
            continue
        intent = item["intent"]
        if not isinstance(intent, str) or not intent.strip():
            raise DialoguesError(f"{at}: intent name must be a non-empty string")
        intent = intent.strip()
        where = f"{at}: intent {intent!r}"
        raw = item.get("examples")
        texts = [] if raw is None else _example_texts(raw, where=where)
        texts = [_SPACE_RE.sub(" ", strip_entities(t)).strip() for t in texts]
        texts = [t for t in texts if t]
        if not texts:
            raise DialoguesError(f"{where} has no examples")
        for t in texts:
            key = t.casefold()
            previous = seen.get(key)
            if previous is None:
                seen[key] = intent
                examples.append(Example(text=t, intent=intent, lang=lang))
            elif previous != intent:
                # Identical text under two labels teaches the model nothing but noise.
                raise DialoguesError(f"{where}: example {t[:40]!r} is also listed under intent {previous!r}")
    if not examples:
        raise DialoguesError(f"{path}: no intents with examples")
    return examples


def load_training(*, root: Path) -> list[Example]:
    """Load training examples from root/{en,es}/data/nlu.yml."""
    examples: list[Example] = []
    for lang in LANGS:
        examples.extend(load_examples(path=root / lang / "data" / "nlu.yml", lang=lang))
    return examples


def load_heldout(*, root: Path) -> list[Example]:
    """Load held-out evaluation examples from root/heldout/{en,es}.yml, skipping missing files."""
    examples: list[Example] = []
    for lang in LANGS:
        path = root / "heldout" / f"{lang}.yml"
        if path.is_file():
            examples.extend(load_examples(path=path, lang=lang))
    return examples


def fingerprint(*, root: Path) -> str:
    """Return a sha256 over the relative paths and bytes of every training *.yml file."""
    digest = hashlib.sha256()
    files = sorted(p for lang in LANGS for p in (root / lang).rglob("*.yml") if p.is_file())
    for path in files:
        rel = path.relative_to(root).as_posix().encode("utf-8")
        body = path.read_bytes()
        # Length prefixes keep (path, body) boundaries unambiguous.
        digest.update(len(rel).to_bytes(8, "big") + rel)
        digest.update(len(body).to_bytes(8, "big") + body)
    return digest.hexdigest()
