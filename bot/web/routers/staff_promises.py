"""Staff view of the promise ledger: what is due today, late, escalated, on the call list; per-promise timelines."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bot.clinic_settings import ClinicContext, load_clinic
from bot.db import session_scope, utcnow
from bot.labs.models import LabOrder
from bot.patients.models import Patient
from bot.promises import service
from bot.staff import audit
from bot.staff.models import Role
from bot.web.staff_deps import Staff, page, staff_router

router = staff_router()

# Staff (not clinicians) never see medical hand-offs, here as in the inbox.
MEDICAL_REASONS = ("handoff_medical",)

REASON_WORDS = {
    "lab_not_back": "Lab result not back",
    "handoff_medical": "Medical question waiting for a reply",
    "handoff_complaint": "Complaint follow-up",
    "handoff_human": "Asked for a person",
    "handoff_unclear": "Bot could not understand",
    "handoff_emergency": "Emergency follow-up",
    "request_refill": "Refill request",
    "request_appointment": "Appointment request",
    "staff_followup": "Staff promised a call back",
    "results_ready": "Results in; patient not told",
    "late": "Late too many working days",
}
KIND_WORDS = {
    "late_update": "Late update sent",
    "results_ready": "Results-ready notice sent",
    "escalation": "Escalated to staff",
    "call_list": "Put on the call list",
}


def _hidden(role: str) -> tuple[str, ...]:
    return MEDICAL_REASONS if role == Role.STAFF else ()


def _formatter(clinic: ClinicContext) -> Any:
    def fmt(value: datetime | None) -> str:
        if value is None:
            return "—"
        return clinic.calendar.local(value).strftime("%a %b %d, %H:%M")

    return fmt


@router.get("/promises", response_class=HTMLResponse)
def promises_page(request: Request, staff: Staff) -> Response:
    """List promises due later today, late, escalated, and today's call list."""
    now = utcnow()
    with session_scope() as session:
        clinic = load_clinic(session=session)
        today = clinic.calendar.local_date(now)
        sections = service.staff_sections(
            session=session,
            now=now,
            day_start=clinic.calendar.at_local(today, time(0, 0)),
            day_end=clinic.calendar.at_local(today + timedelta(days=1), time(0, 0)),
            today=today,
            hide_reasons=_hidden(staff.role),
        )
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="promises.viewed",
                     subject_type="promise_list", subject_id=today.isoformat(),
                     details={name: section.total for name, section in sections.items()})  # fmt: skip
    context = {
        "nav": "promises",
        "today": today,
        "sections": sections,
        "reason_words": REASON_WORDS,
        "fmt": _formatter(clinic),
        "timezone": clinic.calendar.tz.key,
    }
    return page(request, "staff/promises.html", context)


@router.get("/promises/lab-orders/{order_id}", include_in_schema=False)
def lab_order_timeline(order_id: str, staff: Staff) -> Response:
    """Open the timeline of a lab order's promise, by the lab's order id."""
    with session_scope() as session:
        promise_id = service.lab_promise_id(session=session, order_id=order_id)
    if promise_id is None:
        raise HTTPException(status_code=404, detail="No promise for that lab order.")
    return RedirectResponse(f"/staff/promises/{promise_id}", status_code=303)


@router.get("/promises/{promise_id}", response_class=HTMLResponse)
def promise_timeline(request: Request, promise_id: int, staff: Staff) -> Response:
    """Show one promise and every update the sweeps made for it."""
    with session_scope() as session:
        promise = service.get_promise(session=session, promise_id=promise_id)
        if promise is None or promise.reason_key in _hidden(staff.role):
            raise HTTPException(status_code=404, detail="No such promise.")
        clinic = load_clinic(session=session)
        patient = session.get(Patient, promise.patient_id) if promise.patient_id is not None else None
        order = (
            session.get(LabOrder, promise.subject_id) if promise.subject_type == service.LAB_SUBJECT else None
        )
        entries = service.timeline(session=session, promise_id=promise_id)
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="promise.viewed",
                     subject_type="promise", subject_id=promise.id, patient_id=promise.patient_id,
                     details={"updates": len(entries)})  # fmt: skip
    context = {
        "nav": "promises",
        "promise": promise,
        "patient": patient,
        "order": order,
        "entries": entries,
        "reason_words": REASON_WORDS,
        "kind_words": KIND_WORDS,
        "fmt": _formatter(clinic),
        "timezone": clinic.calendar.tz.key,
    }
    return page(request, "staff/promise.html", context)
