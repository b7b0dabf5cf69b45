"""Staff reports (any role), and the admin pages for the audit trail and staff accounts."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clinic_settings import load_clinic
from bot.db import session_scope, utcnow
from bot.staff import audit, auth, reports, users
from bot.staff.models import Role, StaffUser
from bot.web.staff_deps import Admin, Staff, page, staff_router

router = staff_router()

# -- reports --------------------------------------------------------------------------------------


def _report(first: str | None, last: str | None) -> tuple[reports.Report | None, dict[str, Any]]:
    with session_scope() as session:
        calendar = load_clinic(session=session).calendar
        now = utcnow()
        try:
            window = reports.parse_range(
                calendar=calendar, first=first, last=last, today=calendar.local_date(now)
            )
        except reports.RangeError as error:
            return None, {"field": error.field, "problem": error.problem}
        return reports.build_report(session=session, calendar=calendar, window=window, now=now), {}


@router.get("/reports", response_class=HTMLResponse)
def reports_page(
    request: Request,
    staff: Staff,
    first: Annotated[str | None, Query(alias="from")] = None,
    last: Annotated[str | None, Query(alias="to")] = None,
) -> Response:
    """Show the figures and the per-day chart for a date range."""
    report, error = _report(first, last)
    context: dict[str, Any] = {"nav": "reports", "error": error, "report": report}
    if report is None:
        context["form"] = {"from": first or "", "to": last or ""}
        return page(request, "staff/reports.html", context, status_code=400)
    context["form"] = {"from": report.range.first.isoformat(), "to": report.range.last.isoformat()}
    context["panels"] = reports.chart_panels(report)
    context["chart"] = {"width": reports.CHART_WIDTH, "left": reports.CHART_LEFT}
    context["format_minutes"] = reports.format_minutes
    context["format_hours"] = reports.format_hours
    return page(request, "staff/reports.html", context)


@router.get("/reports.csv")
def reports_csv(
    staff: Staff,
    first: Annotated[str | None, Query(alias="from")] = None,
    last: Annotated[str | None, Query(alias="to")] = None,
) -> Response:
    """Download the report as CSV; every export is audited."""
    report, error = _report(first, last)
    if report is None:
        return Response(f"{error['field']}: {error['problem']}\n", status_code=400, media_type="text/plain")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("metric", "key", "value"))
    writer.writerows(reports.csv_rows(report))
    window = f"{report.range.first.isoformat()}_{report.range.last.isoformat()}"
    with session_scope() as session:
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="report.exported",
                     subject_type="report", subject_id=window,
                     details={"from": report.range.first.isoformat(), "to": report.range.last.isoformat()})  # fmt: skip
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="clinicbot-report-{window}.csv"'},
    )


# -- the audit trail ------------------------------------------------------------------------------


def _utc_day(text: str, *, field: str, errors: dict[str, str]) -> date | None:
    if not text.strip():
        return None
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        errors[field] = "Use a date like 2026-11-18."
        return None
    if not reports.EARLIEST <= day <= reports.LATEST:
        errors[field] = f"Use a date from {reports.EARLIEST.isoformat()} to {reports.LATEST.isoformat()}."
        return None
    return day


def _number(text: str) -> int | None:
    # Ids only: ASCII digits and small enough for an integer column.
    value = text.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None


def _audit_query(session: Session, form: dict[str, str]) -> tuple[reports.AuditQuery, dict[str, str]]:
    errors: dict[str, str] = {}
    actor_id: str | None = None
    actor = form["actor"].strip()
    if _number(actor) is not None:
        actor_id = str(_number(actor))
    elif actor:
        found = session.scalars(
            select(StaffUser.id).where(StaffUser.email == auth.normalize_email(actor))
        ).first()
        if found is None:
            errors["actor"] = "No staff account has that email; enter an email or a staff id."
        else:
            actor_id = str(found)
    patient_id: int | None = None
    if form["patient"].strip():
        patient_id = _number(form["patient"])
        if patient_id is None:
            errors["patient"] = "A patient id is a number."
    since = _utc_day(form["from"], field="from", errors=errors)
    until = _utc_day(form["to"], field="to", errors=errors)
    if since and until and until < since:
        errors["to"] = "The end date is before the start date."
    before_id = _number(form["before"])
    query = reports.AuditQuery(
        actor_id=actor_id,
        action_prefix=form["action"].strip()[:64] or None,
        patient_id=patient_id,
        since=datetime.combine(since, time(0, 0), tzinfo=UTC) if since else None,
        until=datetime.combine(until + timedelta(days=1), time(0, 0), tzinfo=UTC) if until else None,
        before_id=before_id,
    )
    return query, errors


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    staff: Admin,
    actor: str = "",
    action: str = "",
    patient: str = "",
    first: Annotated[str, Query(alias="from")] = "",
    last: Annotated[str, Query(alias="to")] = "",
    before: str = "",
) -> Response:
    """Search the audit trail, newest first, 50 a page; the search itself is audited."""
    form = {"actor": actor, "action": action, "patient": patient, "from": first, "to": last, "before": before}
    with session_scope() as session:
        query, errors = _audit_query(session, form)
        events: list[Any] = []
        more = False
        if not errors:
            events, more = reports.search_audit(session=session, query=query)
        actors = {int(e.actor_id) for e in events if e.actor_kind == "staff" and (e.actor_id or "").isdigit()}
        names = dict(
            session.execute(select(StaffUser.id, StaffUser.name).where(StaffUser.id.in_(actors))).all()
        )
        searched = {
            "actor_id": query.actor_id,
            "action": query.action_prefix,
            "from": first.strip() or None,
            "to": last.strip() or None,
            "before": query.before_id,
        }
        details = {key: value for key, value in searched.items() if value is not None}
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="audit.searched",
                     patient_id=query.patient_id, outcome="invalid" if errors else "ok",
                     details={**details, "results": len(events)})  # fmt: skip
    filters = {key: value for key, value in form.items() if value and key != "before"}
    older = None
    if more and events:
        older = "/staff/admin/audit?" + urlencode({**filters, "before": str(events[-1].id)})
    context = {
        "nav": "audit",
        "form": form,
        "errors": errors,
        "events": events,
        "names": names,
        "older": older,
        "paged": query.before_id is not None,
        "newest": "/staff/admin/audit" + (f"?{urlencode(filters)}" if filters else ""),
    }
    return page(request, "staff/audit.html", context, status_code=400 if errors else 200)


# -- staff accounts -------------------------------------------------------------------------------

NOTICES = {
    "added": "The account was added. Give the person their password in person or by phone.",
    "disabled": "The account was disabled and its sessions ended.",
    "role": "The role was changed; it applies from their next page.",
    "password": "The password was set and the account's sessions ended. Give the person the password in person or by phone.",
}
EMPTY_FORM = {"email": "", "name": "", "role": Role.STAFF.value}


def _users_page(
    request: Request,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    action_error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    with session_scope() as session:
        accounts = users.list_staff(session=session)
    context = {
        "nav": "users",
        "users": accounts,
        "roles": [role.value for role in Role],
        "form": form or EMPTY_FORM,
        "errors": errors or {},
        "action_error": action_error,
        "notice": NOTICES.get(notice or ""),
    }
    return page(request, "staff/users.html", context, status_code=status_code)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, staff: Admin, done: str = "") -> Response:
    """List staff accounts with forms to add one, change a role or disable one."""
    return _users_page(request, notice=done)


@router.post("/admin/users", response_class=HTMLResponse)
def add_user(
    request: Request,
    staff: Admin,
    email: Annotated[str, Form(max_length=300)] = "",
    name: Annotated[str, Form(max_length=300)] = "",
    role: Annotated[str, Form(max_length=32)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    confirm: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Add a staff account; problems are shown beside their fields."""
    with session_scope() as session:
        try:
            users.do_add_staff(session=session, email=email, name=name, role=role, password=password,
                               confirm=confirm, actor_id=staff.staff_id)  # fmt: skip
        except users.UserError as error:
            errors = error.problems
        else:
            errors = {}
    if errors:
        form = {"email": email, "name": name, "role": role}
        return _users_page(request, form=form, errors=errors, status_code=400)
    return RedirectResponse("/staff/admin/users?done=added", status_code=303)


def _account_change(request: Request, change: Callable[[Session], object], *, done: str) -> Response:
    with session_scope() as session:
        try:
            change(session)
        except users.UserNotFound as missing:
            raise HTTPException(status_code=404, detail=str(missing)) from None
        except users.UserError as error:
            # A refusal is audited too: keep its row by letting the scope commit.
            problem = error.problems
        else:
            problem = None
    if problem is not None:
        return _users_page(request, action_error=" ".join(problem.values()), status_code=400)
    return RedirectResponse(f"/staff/admin/users?done={done}", status_code=303)


@router.post("/admin/users/{staff_id}/disable", response_class=HTMLResponse)
def disable_user(request: Request, staff: Admin, staff_id: int) -> Response:
    """Disable an account and end its sessions at once."""
    return _account_change(
        request,
        lambda session: users.do_disable_staff(session=session, staff_id=staff_id, actor_id=staff.staff_id),
        done="disabled",
    )


@router.post("/admin/users/{staff_id}/password", response_class=HTMLResponse)
def reset_password(
    request: Request,
    staff: Admin,
    staff_id: int,
    password: Annotated[str, Form(max_length=1024)] = "",
    confirm: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Give another account a new password (one its owner forgot); every session of that account ends."""
    return _account_change(
        request,
        lambda session: users.do_reset_password(
            session=session, staff_id=staff_id, password=password, confirm=confirm, actor_id=staff.staff_id
        ),
        done="password",
    )


@router.post("/admin/users/{staff_id}/role", response_class=HTMLResponse)
def change_role(
    request: Request, staff: Admin, staff_id: int, role: Annotated[str, Form(max_length=32)] = ""
) -> Response:
    """Change an account's role."""
    return _account_change(
        request,
        lambda session: users.do_change_role(
            session=session, staff_id=staff_id, role=role, actor_id=staff.staff_id
        ),
        done="role",
    )
