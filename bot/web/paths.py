"""Where the web app's templates and static files live, and their cache-busting versions."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"


@lru_cache(maxsize=32)
def asset_version(name: str) -> str:
    """Return a short content hash for cache busting a static file."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]
