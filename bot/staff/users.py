"""Staff accounts: admins add them, change a role, set a password, disable one (which ends its sessions at
once); each person changes their own password."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.db import utcnow
from bot.staff import audit, auth
from bot.staff.models import LoginAttempt, Role, StaffUser
from bot.staff.passwords import verify_password

MIN_PASSWORD = auth.MIN_PASSWORD


class UserError(ValueError):
    """A user-management request was refused; problems maps each form field at fault ("" for none) to why."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(problems.values()))
        self.problems = problems


class Throttled(UserError):
    """Too many wrong passwords for this account or from this address, lately."""


class UserNotFound(LookupError):
    """No staff account has that id."""


def list_staff(*, session: Session) -> list[StaffUser]:
    """Return every staff account, active ones first, then by name."""
    return list(
        session.scalars(
            select(StaffUser).order_by(StaffUser.disabled_at.is_not(None), StaffUser.name, StaffUser.id)
        )
    )


def check_new_staff(
    *, session: Session, email: str, name: str, role: str, password: str, confirm: str
) -> dict[str, str]:
    """Return a problem per form field for a new account; empty when it can be added."""
    errors: dict[str, str] = {}
    normalized = auth.normalize_email(email)
    if not normalized:
        errors["email"] = "Enter an email address."
    elif "@" not in normalized or len(normalized) > 254:
        errors["email"] = "That is not an email address."
    elif session.scalars(select(StaffUser.id).where(StaffUser.email == normalized)).first() is not None:
        errors["email"] = "A staff account with this email already exists."
    if not name.strip():
        errors["name"] = "Enter the person's name."
    elif len(name.strip()) > 200:
        errors["name"] = "The name is longer than 200 characters."
    if role not in {member.value for member in Role}:
        errors["role"] = "Pick a role."
    errors.update(check_new_password(password, confirm))
    return errors


def check_new_password(password: str, confirm: str) -> dict[str, str]:
    """Return a problem per form field for a new password ("password", "confirm"); empty when it will do."""
    problem = auth.password_problem(password)
    if problem is not None:
        return {"password": problem}
    if password != confirm:
        return {"confirm": "The two passwords do not match."}
    return {}


def do_change_own_password(
    *, session: Session, staff_id: int, session_id: str, current: str, password: str, confirm: str, ip: str
) -> StaffUser:
    """Change the signed-in person's password; their other sessions end, this one stays.

    The current password is asked for, so a session left open on a shared computer cannot lock its owner
    out; a wrong one counts as a failed sign-in (the same throttle), and every outcome is audited.
    """
    user = _get(session, staff_id)
    now = utcnow()

    def refuse(outcome: str, problems: dict[str, str]) -> UserError:
        audit.record(session=session, actor_kind="staff", actor_id=user.id, action="staff.password_changed",
                     subject_type="staff_user", subject_id=user.id, outcome=outcome)  # fmt: skip
        return (Throttled if outcome == "throttled" else UserError)(problems)

    if auth.throttled(session=session, email=user.email, ip=ip):
        raise refuse("throttled", {"current": "Too many wrong passwords. Wait 15 minutes, or ask an admin to help."})
    if not verify_password(user.password_hash, current):
        session.add(LoginAttempt(email=user.email, ip=ip, at=now, succeeded=False))
        raise refuse("wrong_password", {"current": "That is not your current password."})
    errors = check_new_password(password, confirm)
    if not errors and password == current:
        errors = {"password": "The new password is the same as the current one."}
    if errors:
        raise refuse("refused", errors)
    ended = auth.set_password(session=session, user=user, password=password, keep_session=session_id)
    audit.record(session=session, actor_kind="staff", actor_id=user.id, action="staff.password_changed",
                 subject_type="staff_user", subject_id=user.id, details={"sessions_ended": ended})  # fmt: skip
    return user


def do_reset_password(*, session: Session, staff_id: int, password: str, confirm: str, actor_id: int) -> StaffUser:
    """Give another account a new password (a person who forgot theirs); every session of theirs ends.

    An admin changes their own on their account page, where the current password is asked for.
    """
    user = _get(session, staff_id)
    if user.id == actor_id:
        audit.record(session=session, actor_kind="staff", actor_id=actor_id, action="staff.password_reset",
                     subject_type="staff_user", subject_id=user.id, outcome="self")  # fmt: skip
        raise UserError({"": "Change your own password on your account page."})
    errors = check_new_password(password, confirm)
    if errors:
        audit.record(session=session, actor_kind="staff", actor_id=actor_id, action="staff.password_reset",
                     subject_type="staff_user", subject_id=user.id, outcome="refused")  # fmt: skip
        raise UserError(errors)
    ended = auth.set_password(session=session, user=user, password=password)
    audit.record(session=session, actor_kind="staff", actor_id=actor_id, action="staff.password_reset",
                 subject_type="staff_user", subject_id=user.id, details={"sessions_ended": ended})  # fmt: skip
    return user


def do_add_staff(
    *, session: Session, email: str, name: str, role: str, password: str, confirm: str, actor_id: int
) -> StaffUser:
    """Create an account after checking every field; raise UserError naming each field at fault."""
    errors = check_new_staff(
        session=session, email=email, name=name, role=role, password=password, confirm=confirm
    )
    if errors:
        raise UserError(errors)
    return auth.add_staff(
        session=session, email=email, name=name, role=Role(role), password=password, actor_id=actor_id
    )


def _get(session: Session, staff_id: int) -> StaffUser:
    user = session.get(StaffUser, staff_id)
    if user is None:
        raise UserNotFound(f"No staff account has id {staff_id}.")
    return user


def do_disable_staff(*, session: Session, staff_id: int, actor_id: int) -> StaffUser:
    """Disable an account and end its sessions; an admin cannot disable their own account."""
    user = _get(session, staff_id)
    if user.id == actor_id:
        audit.record(session=session, actor_kind="staff", actor_id=actor_id, action="staff.disabled",
                     subject_type="staff_user", subject_id=user.id, outcome="self")  # fmt: skip
        raise UserError({"": "You cannot disable your own account; ask another admin."})
    return auth.disable_staff(session=session, email=user.email, actor_id=actor_id)


def do_change_role(*, session: Session, staff_id: int, role: str, actor_id: int) -> StaffUser:
    """Change an account's role; it applies from their next request. Admins cannot change their own."""
    if role not in {member.value for member in Role}:
        raise UserError({"role": "Pick a role."})
    user = _get(session, staff_id)
    if user.role == role:
        return user
    if user.id == actor_id:
        audit.record(session=session, actor_kind="staff", actor_id=actor_id, action="staff.role_changed",
                     subject_type="staff_user", subject_id=user.id, outcome="self",
                     details={"from": user.role, "to": role})  # fmt: skip
        raise UserError({"role": "You cannot change your own role; ask another admin."})
    previous, user.role = user.role, role
    audit.record(session=session, actor_kind="staff", actor_id=actor_id, action="staff.role_changed",
                 subject_type="staff_user", subject_id=user.id, details={"from": previous, "to": role})  # fmt: skip
    return user
