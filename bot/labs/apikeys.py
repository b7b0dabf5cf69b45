"""API keys for lab systems: shown once at creation, stored as a SHA-256 only."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.labs.models import ApiKey
from bot.staff import audit

KEY_PREFIX = "cbk_"
PREFIX_CHARS = 12
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Writing last_used_at on every request would make each API call a write; once a minute is enough.
TOUCH_INTERVAL = timedelta(minutes=1)


class ApiKeyError(ValueError):
    """A key cannot be created or revoked; the message says why."""


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def do_create_key(*, session: Session, name: str) -> tuple[ApiKey, str]:
    """Create a key and return its row and the key itself, which is never stored."""
    if not NAME.fullmatch(name):
        raise ApiKeyError("--name must be 1-64 letters, digits, dots, dashes or underscores")
    if session.scalars(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise ApiKeyError(f"an API key named {name!r} already exists (names are never reused)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(key), prefix=key[:PREFIX_CHARS])
    session.add(row)
    session.flush()
    audit.record(session=session, actor_kind="cli", action="api_key.created", subject_type="api_key",
                 subject_id=row.id, details={"prefix": row.prefix})  # fmt: skip
    return row, key


def list_keys(*, session: Session) -> list[ApiKey]:
    """Return every key, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def do_revoke_key(*, session: Session, name: str) -> ApiKey:
    """Revoke a key by name; requests with it are refused from now on."""
    row = session.scalars(select(ApiKey).where(ApiKey.name == name)).first()
    if row is None:
        raise ApiKeyError(f"no API key named {name!r}")
    if row.revoked_at is not None:
        raise ApiKeyError(f"the API key {name!r} was already revoked")
    row.revoked_at = utcnow()
    audit.record(session=session, actor_kind="cli", action="api_key.revoked", subject_type="api_key",
                 subject_id=row.id, details={"prefix": row.prefix})  # fmt: skip
    return row


def authenticate(*, session: Session, key: str, now: datetime) -> ApiKey | None:
    """Return the live key matching a presented key, touching last_used_at at most once a minute."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    presented = hash_key(key)
    candidates = session.scalars(select(ApiKey).where(ApiKey.prefix == key[:PREFIX_CHARS])).all()
    match = None
    for candidate in candidates:
        # Compare every candidate in constant time, so timing says nothing about the stored hashes.
        if hmac.compare_digest(candidate.key_hash, presented):
            match = candidate
    if match is None or match.revoked_at is not None:
        return None
    if match.last_used_at is None or now - match.last_used_at >= TOUCH_INTERVAL:
        match.last_used_at = now
    return match
