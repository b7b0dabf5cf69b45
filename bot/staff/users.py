"""Admins manage staff accounts: add, change a role, disable (which ends their sessions at once)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.staff import audit, auth
from bot.staff.models import Role, StaffUser

MIN_PASSWORD = 12


class UserError(ValueError):
    """A user-management request was refused; problems maps each form field at fault ("" for none) to why."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(problems.values()))
        self.problems = problems


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
    if len(password) < MIN_PASSWORD:
        errors["password"] = f"The password must be at least {MIN_PASSWORD} characters."
    elif password != confirm:
        errors["confirm"] = "The two passwords do not match."
    return errors


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
