"""Staff pages for complaints, corrections of wrong messages (with content review), and alerts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clinic_settings import load_clinic
from bot.conversations.models import Conversation, HandoffReason, Message
from bot.db import session_scope, utcnow
from bot.patients.models import Patient
from bot.staff import alerts, audit, complaints, corrections
from bot.staff.auth import Principal
from bot.staff.inbox import human_duration
from bot.staff.messages import PRIORITY_LABELS
from bot.staff.models import ComplaintCase, ComplaintStatus, Role, StaffUser
from bot.web.deps import RuntimeDep, WorkersDep
from bot.web.staff_deps import Admin, Staff, page, staff_router

router = staff_router()

MEDICAL_ROLES = (Role.ADMIN, Role.CLINICIAN)
STATUS_FILTERS = {
    "active": complaints.ACTIVE,
    "open": (ComplaintStatus.OPEN,),
    "investigating": (ComplaintStatus.INVESTIGATING,),
    "resolved": (ComplaintStatus.RESOLVED,),
}
CATEGORY_LABELS = {
    "care": "Care", "staff_conduct": "Staff conduct", "waiting_time": "Waiting time", "billing": "Billing",
    "communication": "Communication", "facilities": "Facilities", "privacy": "Privacy", "other": "Other",
}  # fmt: skip
KIND_LABELS = {"emergency": "Emergency", "sla_breach": "Past response time"}
Text = Annotated[str, Form(max_length=4000)]


def age_text(since: datetime, now: datetime) -> str:
    """Return a short age such as '45 min', '3 h 10 min' or '2 d 4 h'."""
    return human_duration(now - since)


def local_clock(session: Session):  # type: ignore[no-untyped-def]
    """Return a function that shows a UTC time in the clinic's zone ("Thu 26 Nov 16:00"; "—" for none)."""
    calendar = load_clinic(session=session).calendar

    def render(at: datetime | None) -> str:
        return calendar.local(at).strftime("%a %d %b %H:%M") if at is not None else "—"

    return render


def _can_see(staff: Principal, conversation: Conversation) -> bool:
    return conversation.reason != HandoffReason.MEDICAL or staff.role in MEDICAL_ROLES


def _require_visible(staff: Principal, conversation: Conversation) -> None:
    if not _can_see(staff, conversation):
        raise HTTPException(status_code=403, detail="Medical conversations are for clinicians and admins.")


def _patient_label(session: Session, patient_id: int | None) -> str:
    patient = session.get(Patient, patient_id) if patient_id is not None else None
    return patient.display_name if patient is not None else "Unverified sender"


def _fail(error: complaints.CaseError | corrections.CorrectionError) -> HTTPException:
    return HTTPException(status_code=error.status, detail=str(error))


# -- complaints --------------------------------------------------------------------------------


@router.get("/complaints", response_class=HTMLResponse)
def complaint_list(request: Request, staff: Staff, status: str = "active") -> Response:
    """List complaint cases by age, oldest first."""
    if status not in STATUS_FILTERS:
        raise HTTPException(status_code=400, detail=f"Unknown status filter {status!r}.")
    now = utcnow()
    with session_scope() as session:
        local = local_clock(session)
        rows = []
        for case, conversation in complaints.list_cases(session=session, statuses=STATUS_FILTERS[status]):
            if not _can_see(staff, conversation):
                continue
            owner = session.get(StaffUser, case.owner_id) if case.owner_id else None
            rows.append({
                "id": case.id, "patient": _patient_label(session, case.patient_id), "status": case.status,
                "category": CATEGORY_LABELS.get(case.category, case.category), "owner": owner.name if owner else "",
                "age": age_text(case.opened_at, now), "due": local(case.due_at), "channel": conversation.channel,
                "overdue": complaints.is_overdue(case, now=now), "summary": case.summary,
            })  # fmt: skip
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="complaints.listed",
                     details={"status": status, "cases": [row["id"] for row in rows]})  # fmt: skip
    filters = [("active", "Open and investigating"), ("open", "Open"), ("investigating", "Investigating"),
               ("resolved", "Resolved")]  # fmt: skip
    context = {"nav": "complaints", "rows": rows, "status": status, "filters": filters}
    return page(request, "staff/complaints.html", context)


@router.post("/conversations/{conversation_id}/complaint")
def open_complaint(conversation_id: int, staff: Staff, runtime: RuntimeDep, workers: WorkersDep) -> Response:
    """Open a complaint case on a conversation, acknowledge it to the patient, and show the case."""
    with session_scope() as session:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None:
            raise HTTPException(status_code=404, detail=f"Conversation {conversation_id} not found.")
        _require_visible(staff, conversation)
        try:
            opened = complaints.do_open_case_for_conversation(
                session=session,
                domain=runtime.domain,
                conversation_id=conversation_id,
                staff_id=staff.staff_id,
            )
        except complaints.CaseError as error:
            raise _fail(error) from None
    if opened.acknowledged:
        workers.notify_outbox()
    return RedirectResponse(f"/staff/complaints/{opened.case_id}", status_code=303)


def _case_context(session: Session, staff: Principal, case: ComplaintCase, runtime: Any) -> dict[str, Any]:
    now = utcnow()
    local = local_clock(session)
    conversation = session.get(Conversation, case.conversation_id)
    assert conversation is not None
    _require_visible(staff, conversation)
    owners = session.scalars(
        select(StaffUser).where(StaffUser.disabled_at.is_(None)).order_by(StaffUser.name)
    ).all()
    actions = [
        {"body": action.body, "by": name, "at": local(action.created_at)}
        for action, name in complaints.actions_for(session=session, case_id=case.id)
    ]
    resolved_by = session.get(StaffUser, case.resolved_by_id) if case.resolved_by_id else None
    resolution = None
    if case.resolution_message_id is not None:
        sent = session.get(Message, case.resolution_message_id)
        resolution = sent.body if sent is not None else None
    draft = ""
    if case.status != ComplaintStatus.RESOLVED:
        draft = complaints.resolution_draft(
            session=session, domain=runtime.domain, case_id=case.id, staff_id=staff.staff_id
        )
    return {
        "nav": "complaints", "case": case, "conversation": conversation,
        "patient": _patient_label(session, case.patient_id), "age": age_text(case.opened_at, now),
        "due": local(case.due_at), "opened": local(case.opened_at), "resolved_at": local(case.resolved_at),
        "resolved_by": resolved_by.name if resolved_by else "", "overdue": complaints.is_overdue(case, now=now),
        "owners": owners, "categories": [(c, CATEGORY_LABELS[c]) for c in complaints.CATEGORIES],
        "actions": actions, "draft": draft, "resolution": resolution, "error": None,
        "category_label": CATEGORY_LABELS.get(case.category, case.category),
    }  # fmt: skip


def _show_case(request: Request, staff: Principal, runtime: Any, case_id: int, *, error: str | None = None,
               status_code: int = 200, draft: str | None = None) -> Response:  # fmt: skip
    with session_scope() as session:
        try:
            case = complaints.get_case(session=session, case_id=case_id)
        except complaints.CaseError as failure:
            raise _fail(failure) from None
        context = _case_context(session, staff, case, runtime)
        if draft is not None:
            context["draft"] = draft
        context["error"] = error
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="complaint.viewed",
                     subject_type="complaint_case", subject_id=case.id,
                     patient_id=case.patient_id or audit.patient_of(session, context.get("conversation")))  # fmt: skip
    return page(request, "staff/complaint.html", context, status_code=status_code)


@router.get("/complaints/{case_id}", response_class=HTMLResponse)
def complaint_page(request: Request, case_id: int, staff: Staff, runtime: RuntimeDep) -> Response:
    """Show a complaint case and the forms to work it."""
    return _show_case(request, staff, runtime, case_id)


def _case_change(staff: Principal, case_id: int, change: Any) -> None:
    with session_scope() as session:
        try:
            case = complaints.get_case(session=session, case_id=case_id)
            conversation = session.get(Conversation, case.conversation_id)
            assert conversation is not None
            _require_visible(staff, conversation)
            change(session)
        except complaints.CaseError as error:
            raise _fail(error) from None


@router.post("/complaints/{case_id}/details")
def complaint_details(
    case_id: int, staff: Staff, summary: Text = "", category: Annotated[str, Form()] = "other",
    owner_id: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    """Save a case's summary, category and owner."""
    try:
        owner = int(owner_id) if owner_id else None
    except ValueError:
        raise HTTPException(status_code=400, detail="Owner must be a staff member.") from None
    _case_change(staff, case_id, lambda session: complaints.do_update_case(
        session=session, case_id=case_id, staff_id=staff.staff_id, summary=summary, category=category, owner_id=owner,
    ))  # fmt: skip
    return RedirectResponse(f"/staff/complaints/{case_id}", status_code=303)


@router.post("/complaints/{case_id}/investigate")
def complaint_investigate(case_id: int, staff: Staff) -> Response:
    """Mark a case as being investigated."""
    _case_change(staff, case_id, lambda session: complaints.do_set_investigating(
        session=session, case_id=case_id, staff_id=staff.staff_id))  # fmt: skip
    return RedirectResponse(f"/staff/complaints/{case_id}", status_code=303)


@router.post("/complaints/{case_id}/actions")
def complaint_action(case_id: int, staff: Staff, body: Text = "") -> Response:
    """Record an action taken on a case."""
    _case_change(staff, case_id, lambda session: complaints.do_record_action(
        session=session, case_id=case_id, staff_id=staff.staff_id, body=body))  # fmt: skip
    return RedirectResponse(f"/staff/complaints/{case_id}#actions", status_code=303)


@router.post("/complaints/{case_id}/resolve")
def complaint_resolve(
    request: Request, case_id: int, staff: Staff, runtime: RuntimeDep, workers: WorkersDep, message: Text = ""
) -> Response:
    """Resolve a case by sending the patient what was done."""
    with session_scope() as session:
        try:
            case = complaints.get_case(session=session, case_id=case_id)
            conversation = session.get(Conversation, case.conversation_id)
            assert conversation is not None
            _require_visible(staff, conversation)
            complaints.do_resolve_case(
                session=session, case_id=case_id, staff_id=staff.staff_id, message=message
            )
        except complaints.CaseError as error:
            if error.status != 400:
                raise _fail(error) from None
            refusal = str(error)
            audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="complaint.resolved",
                         subject_type="complaint_case", subject_id=case_id, patient_id=case.patient_id, outcome="refused",
                         details={"reason": error.reason or ("no_action" if "action" in refusal else "no_message")})  # fmt: skip
        else:
            refusal = None
    if refusal is not None:
        # Show the form again with the staff member's text kept and the reason next to it.
        return _show_case(request, staff, runtime, case_id, error=refusal, status_code=400, draft=message)
    workers.notify_outbox()
    return RedirectResponse(f"/staff/complaints/{case_id}", status_code=303)


# -- corrections -------------------------------------------------------------------------------


def _correction_context(session: Session, staff: Principal, runtime: Any, message_id: int) -> dict[str, Any]:
    try:
        message, conversation = corrections.correctable_message(session=session, message_id=message_id)
    except corrections.CorrectionError as error:
        raise _fail(error) from None
    _require_visible(staff, conversation)
    before, after = corrections.correction_frame(
        session=session, domain=runtime.domain, conversation=conversation
    )
    existing = corrections.incident_for(session=session, message_id=message.id)
    return {
        "nav": "inbox", "message": message, "conversation": conversation, "before": before, "after": after,
        "sent_at": local_clock(session)(message.created_at), "existing": existing, "explanation": "", "correction": "",
        "preview": None, "error": None,
    }  # fmt: skip


@router.get("/messages/{message_id}/correction", response_class=HTMLResponse)
def correction_page(request: Request, message_id: int, staff: Staff, runtime: RuntimeDep) -> Response:
    """Show a wrong message and the form to correct it."""
    with session_scope() as session:
        context = _correction_context(session, staff, runtime, message_id)
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="message.viewed",
                     subject_type="message", subject_id=message_id, patient_id=audit.patient_of(session, context["conversation"]),
                     details={"purpose": "correction"})  # fmt: skip
    return page(request, "staff/correction.html", context)


@router.post("/messages/{message_id}/correction")
def correction_send(
    request: Request, message_id: int, staff: Staff, runtime: RuntimeDep, workers: WorkersDep,
    explanation: Text = "", correction: Text = "", intent: Annotated[str, Form()] = "send",
) -> Response:  # fmt: skip
    """Preview, or record the incident and send the patient the correction."""
    refusal: str | None = None
    with session_scope() as session:
        context = _correction_context(session, staff, runtime, message_id)
        conversation_id = context["conversation"].id
        if intent == "preview" or not correction.strip():
            if intent != "preview":
                refusal = "Write the correction the patient will receive."
            context.update(explanation=explanation, correction=correction, error=refusal)
            context["preview"] = corrections.correction_text(
                session=session, domain=runtime.domain, conversation=context["conversation"], correction=correction
            ) if correction.strip() else None  # fmt: skip
            # The page shows the message again: a view of the patient's data, as the GET is.
            audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="message.viewed",
                         subject_type="message", subject_id=message_id,
                         patient_id=audit.patient_of(session, context["conversation"]),
                         details={"purpose": "correction_preview" if intent == "preview" else "correction"})  # fmt: skip
        else:
            try:
                corrections.do_send_correction(
                    session=session, domain=runtime.domain, message_id=message_id, staff_id=staff.staff_id,
                    explanation=explanation, correction=correction,
                )  # fmt: skip
            except corrections.CorrectionError as error:
                raise _fail(error) from None
            context = {}
    if context:
        return page(request, "staff/correction.html", context, status_code=400 if refusal else 200)
    workers.notify_outbox()
    return RedirectResponse(f"/staff/conversations/{conversation_id}", status_code=303)


@router.get("/admin/review", response_class=HTMLResponse)
def review_page(request: Request, staff: Admin) -> Response:
    """List wrong answers waiting for content review."""
    with session_scope() as session:
        items = corrections.pending_reviews(session=session)
        local = local_clock(session)
        rows = [{"item": item, "at": local(item.created_at)} for item in items]
        audit.record(session=session, actor_kind="staff", actor_id=staff.staff_id, action="review.listed",
                     details={"incidents": [item.id for item in items]})  # fmt: skip
    return page(request, "staff/review.html", {"nav": "review", "rows": rows})


@router.post("/admin/review/{incident_id}")
def review_done(incident_id: int, staff: Admin, note: Text = "") -> Response:
    """Mark an incident's wording reviewed."""
    with session_scope() as session:
        try:
            corrections.do_mark_reviewed(
                session=session, incident_id=incident_id, staff_id=staff.staff_id, note=note
            )
        except corrections.CorrectionError as error:
            raise _fail(error) from None
    return RedirectResponse("/staff/admin/review", status_code=303)


# -- alerts ------------------------------------------------------------------------------------


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, staff: Staff) -> Response:
    """List the alerts no one has acknowledged."""
    now = utcnow()
    with session_scope() as session:
        rows = [
            {"alert": row, "kind": KIND_LABELS.get(row.kind, row.kind), "age": age_text(row.created_at, now),
             "priority": PRIORITY_LABELS.get(row.priority, str(row.priority))}
            for row in alerts.open_alerts(session=session, role=staff.role)
        ]  # fmt: skip
    return page(request, "staff/alerts.html", {"nav": "alerts", "rows": rows})


@router.post("/alerts/{alert_id}/ack")
def alert_ack(alert_id: int, staff: Staff) -> Response:
    """Acknowledge an alert."""
    with session_scope() as session:
        try:
            alerts.do_acknowledge_alert(
                session=session, alert_id=alert_id, staff_id=staff.staff_id, role=staff.role
            )
        except alerts.AlertNotFound as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except PermissionError as error:
            raise HTTPException(status_code=403, detail=str(error)) from None
    return RedirectResponse("/staff/alerts", status_code=303)
