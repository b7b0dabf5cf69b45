"""Staff sign-in: argon2id passwords, server-side sessions, CSRF tokens and throttling."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bot.config import get_settings
from bot.db import utcnow
from bot.staff import audit
from bot.staff.models import LoginAttempt, Role, StaffSession, StaffUser
from bot.staff.passwords import hash_password, needs_rehash, verify_password

log = logging.getLogger(__name__)


@functools.cache
def _dummy_hash() -> str:
    """Return the hash checked against when the email is unknown: a wrong email costs what a wrong password does.

    Made once per process, not at import: an argon2id hash costs about 0.2 s, which every command paid
    whether or not anyone signed in. The web app makes it at start-up (warm_sign_in), so that not even
    the first unknown email costs more than a wrong password.
    """
    return hash_password("not-a-real-password")


def warm_sign_in() -> None:
    """Make the unknown-email hash now, before the first sign-in (see _dummy_hash)."""
    _dummy_hash()


# last_seen_at is written at most this often per session, not on every request.
_TOUCH_EVERY = timedelta(seconds=30)


class StaffError(ValueError):
    """A staff account operation was refused; the message says why."""


class LoginRefused(Exception):
    """Sign-in failed: "invalid" (wrong email or password, or disabled), "throttled", or "demo_password"
    (the password the README publishes, on a server patients reach)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SignedIn:
    """A new session: the cookie token (only its hash is stored) and its CSRF token."""

    token: str
    csrf_token: str
    staff_id: int


@dataclass(frozen=True)
class Principal:
    """The staff member behind a request."""

    staff_id: int
    name: str
    email: str
    role: Role
    session_id: str
    csrf_token: str

    def has_role(self, *roles: Role) -> bool:
        """Return whether this staff member holds one of the roles."""
        return self.role in roles


def session_id_for(token: str) -> str:
    """Return the stored id of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_email(email: str) -> str:
    """Return an email address in the form it is stored."""
    return email.strip().lower()


def add_staff(
    *, session: Session, email: str, name: str, role: Role, password: str, actor_id: int | None = None
) -> StaffUser:
    """Create a staff account; refuse a duplicate email or a short password."""
    email = normalize_email(email)
    if "@" not in email or len(email) > 254:
        raise StaffError(f"email {email!r} is not an email address")
    if not name.strip():
        raise StaffError("name must not be empty")
    _require_good_password(password)
    if session.scalars(select(StaffUser.id).where(StaffUser.email == email)).first() is not None:
        raise StaffError(f"a staff account with email {email} already exists")
    user = StaffUser(email=email, name=name.strip(), role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    audit.record(session=session, actor_kind="staff" if actor_id else "cli", actor_id=actor_id,
                 action="staff.added", subject_type="staff_user", subject_id=user.id, details={"role": str(role)})  # fmt: skip
    return user


def reset_password(*, session: Session, email: str, password: str) -> StaffUser:
    """Give an account a new password from the command line (a forgotten one, a demo account's); its sessions end."""
    user = session.scalars(select(StaffUser).where(StaffUser.email == normalize_email(email))).first()
    if user is None:
        raise StaffError(f"no staff account with email {normalize_email(email)}")
    _require_good_password(password)
    ended = set_password(session=session, user=user, password=password)
    audit.record(session=session, actor_kind="cli", action="staff.password_reset", subject_type="staff_user",
                 subject_id=user.id, details={"sessions_ended": ended})  # fmt: skip
    return user


def end_sessions(*, session: Session, staff_id: int, reason: str) -> int:
    """End every open session of a staff member; return how many."""
    result = session.execute(
        update(StaffSession)
        .where(StaffSession.staff_id == staff_id, StaffSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
    )
    return result.rowcount or 0


def disable_staff(*, session: Session, email: str, actor_id: int | None = None) -> StaffUser:
    """Disable an account and end its sessions at once."""
    user = session.scalars(select(StaffUser).where(StaffUser.email == normalize_email(email))).first()
    if user is None:
        raise StaffError(f"no staff account with email {normalize_email(email)}")
    if user.disabled_at is None:
        user.disabled_at = utcnow()
    ended = end_sessions(session=session, staff_id=user.id, reason="disabled")
    audit.record(session=session, actor_kind="staff" if actor_id else "cli", actor_id=actor_id,
                 action="staff.disabled", subject_type="staff_user", subject_id=user.id,
                 details={"sessions_ended": ended})  # fmt: skip
    return user


MIN_PASSWORD = 12


def password_problem(password: str) -> str | None:
    """Return why a new password is refused, or None: at least 12 characters, and not the published demo one."""
    if len(password) < MIN_PASSWORD:
        return f"The password must be at least {MIN_PASSWORD} characters."
    if is_published_demo_password(password):
        return "That is the demo password, which the README publishes: choose another."
    return None


def _require_good_password(password: str) -> None:
    """Raise StaffError (in the command line's lower-case words) when a new password will not do."""
    problem = password_problem(password)
    if problem is not None:
        raise StaffError(problem[0].lower() + problem[1:].removesuffix("."))


def is_published_demo_password(password: str) -> bool:
    """Return whether a password is the demo accounts' published one (compared in constant time)."""
    from bot.demo import DEMO_ADMIN_PASSWORD

    return hmac.compare_digest(password.encode(), DEMO_ADMIN_PASSWORD.encode())


def throttled(*, session: Session, email: str, ip: str) -> bool:
    """Return whether sign-ins (and password checks) for this account or from this address are paused."""
    settings = get_settings()
    since = utcnow() - timedelta(minutes=settings.staff_login_window_minutes)
    return (
        _recent_failures(session, column=LoginAttempt.email, value=email, since=since)
        >= settings.staff_login_failures_per_account
        or _recent_failures(session, column=LoginAttempt.ip, value=ip, since=since)
        >= settings.staff_login_failures_per_ip
    )


def set_password(*, session: Session, user: StaffUser, password: str, keep_session: str | None = None) -> int:
    """Store a new argon2id hash and end the account's other sessions; return how many ended.

    The caller has checked the password's rules and audits the change. `keep_session` (a session id)
    stays open: a person changing their own password stays signed in where they did it.
    """
    user.password_hash = hash_password(password)
    query = update(StaffSession).where(StaffSession.staff_id == user.id, StaffSession.ended_at.is_(None))
    if keep_session is not None:
        query = query.where(StaffSession.id != keep_session)
    result = session.execute(query.values(ended_at=utcnow(), end_reason="password_changed"))
    return result.rowcount or 0


def _recent_failures(session: Session, *, column: object, value: str, since: datetime) -> int:
    return (
        session.scalar(
            select(func.count()).where(
                column == value, LoginAttempt.at > since, LoginAttempt.succeeded.is_(False)
            )  # type: ignore[operator]
        )
        or 0
    )


def login(*, session: Session, email: str, password: str, ip: str) -> SignedIn:
    """Check a sign-in and open a session; raise LoginRefused. The caller commits either way."""
    settings = get_settings()
    email = normalize_email(email)[:254]
    now = utcnow()
    user = session.scalars(select(StaffUser).where(StaffUser.email == email)).first()
    if throttled(session=session, email=email, ip=ip):
        session.add(LoginAttempt(email=email, ip=ip, at=now, succeeded=False))
        audit.record(session=session, actor_kind="staff", actor_id=user.id if user else None, action="staff.login",
                     outcome="throttled")  # fmt: skip
        log.warning("staff sign-in throttled (staff %s)", user.id if user else None)
        raise LoginRefused("throttled")
    ok = verify_password(user.password_hash if user else _dummy_hash(), password)
    if user is None or not ok or user.disabled_at is not None:
        session.add(LoginAttempt(email=email, ip=ip, at=now, succeeded=False))
        outcome = "disabled" if user is not None and ok else "invalid"
        audit.record(session=session, actor_kind="staff", actor_id=user.id if user else None, action="staff.login",
                     outcome=outcome)  # fmt: skip
        raise LoginRefused("invalid")
    if settings.reachable_by_patients and is_published_demo_password(password):
        # `clinicbot init --demo` gives its accounts a password the README prints: fine for `make run` on one
        # machine, an open door on a server patients reach. The account stays; it needs a real password.
        session.add(LoginAttempt(email=email, ip=ip, at=now, succeeded=False))
        audit.record(session=session, actor_kind="staff", actor_id=user.id, action="staff.login", outcome="demo_password")
        log.warning("staff %s sign-in refused: the published demo password, on a server patients reach", user.id)
        raise LoginRefused("demo_password")
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    session.add(LoginAttempt(email=email, ip=ip, at=now, succeeded=True))
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        StaffSession(
            id=session_id_for(token), staff_id=user.id, csrf_token=csrf, created_at=now, last_seen_at=now
        )
    )
    audit.record(session=session, actor_kind="staff", actor_id=user.id, action="staff.login")
    log.info("staff %s signed in", user.id)
    return SignedIn(token=token, csrf_token=csrf, staff_id=user.id)


def authenticate(*, session: Session, token: str, touch: bool = True) -> Principal | None:
    """Return who a session token belongs to, or None if it is unknown, ended, idle too long or disabled."""
    if not token or len(token) > 128:
        return None
    row = session.get(StaffSession, session_id_for(token))
    if row is None or row.ended_at is not None:
        return None
    user = session.get(StaffUser, row.staff_id)
    now = utcnow()
    if user is None or user.disabled_at is not None:
        row.ended_at, row.end_reason = now, "disabled"
        return None
    if now - row.last_seen_at > timedelta(minutes=get_settings().staff_idle_minutes):
        row.ended_at, row.end_reason = now, "idle"
        audit.record(session=session, actor_kind="staff", actor_id=user.id, action="staff.session_expired")
        return None
    if touch and now - row.last_seen_at > _TOUCH_EVERY:
        row.last_seen_at = now
    return Principal(user.id, user.name, user.email, Role(user.role), row.id, row.csrf_token)


def end_session(*, session: Session, token: str, reason: str) -> None:
    """End the session a token names, if it is still open (a new sign-in in the same browser replaces it)."""
    if not token or len(token) > 128:
        return
    row = session.get(StaffSession, session_id_for(token))
    if row is not None and row.ended_at is None:
        row.ended_at, row.end_reason = utcnow(), reason
        audit.record(session=session, actor_kind="staff", actor_id=row.staff_id, action="staff.session_replaced")


def logout(*, session: Session, principal: Principal) -> None:
    """End the current session."""
    row = session.get(StaffSession, principal.session_id)
    if row is not None and row.ended_at is None:
        row.ended_at, row.end_reason = utcnow(), "logout"
    audit.record(session=session, actor_kind="staff", actor_id=principal.staff_id, action="staff.logout")
